"""``tug build``: an uncached build beside a cached rebuild of the same context.

Usage (as root, from the repository):

    .venv/bin/python bench/build.py [--rounds N] [--files N] [--keep]

It starts its own tugd in a short temporary directory, imports the busybox image the tests use,
and builds a Dockerfile with two RUN steps, a COPY of ``--files`` small files (plus one of 8 MiB)
and five metadata steps, as whole ``tug build`` commands:

- uncached: ``tug build --no-cache`` (every RUN in a container, every COPY done again);
- cached: ``tug build`` with nothing changed (every step from the cache: no container, no copy);
- one file changed: the COPY and the RUN after it again, the first RUN from the cache;
- floor: ``tug info`` (the CLI and one RPC), what any ``tug`` command costs.

Rounds are interleaved (uncached, cached, changed, floor, ...). Everything it starts is removed
at the end. Prints Markdown to stdout and progress to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_BIN = os.path.join(REPO, ".venv", "bin")
TUG = os.path.join(VENV_BIN, "tug")
TUGD = os.path.join(VENV_BIN, "tugd")

DOCKERFILE = """\
FROM busybox
ENV APP=/srv/app MODE=bench
RUN mkdir -p /data && for i in $(seq 1 200); do echo "line $i" > /data/f$i; done
WORKDIR /srv/app
COPY files/ ./
RUN cat /srv/app/f1 > /first && rm /bin/ls
USER tug
EXPOSE 8080
CMD ["cat", "/first"]
"""


def note(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def p90(xs: Sequence[float]) -> float:
    s = sorted(xs)
    return s[max(0, -(-len(s) * 9 // 10) - 1)]


@contextlib.contextmanager
def tugd(base: str) -> Iterator[str]:
    """A tugd in ``base``, ready (sd_notify READY=1 on a socket of ours); stopped at the end."""
    sock = os.path.join(base, "st", "tugd.sock")
    notify_path = os.path.join(base, "notify.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(30)
    with open(os.path.join(base, "tugd.log"), "ab") as log:
        proc = subprocess.Popen(
            [
                TUGD,
                "--root",
                os.path.join(base, "root"),
                "--state",
                os.path.join(base, "st"),
                "--metrics-address",
                "off",
            ],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "NOTIFY_SOCKET": notify_path},
        )
    try:
        while b"READY=1" not in notify.recv(4096):
            pass
        notify.close()
        yield sock
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def tug(sock: str, *args: str) -> float:
    """Seconds of one whole ``tug`` command, which must succeed."""
    t0 = time.perf_counter()
    r = subprocess.run([TUG, "--socket", sock, *args], capture_output=True, stdin=subprocess.DEVNULL)
    elapsed = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"tug {' '.join(args)} failed: {r.stderr.decode(errors='replace')}")
    return elapsed


def make_context(path: str, files: int) -> int:
    """The build context: the Dockerfile, ``files`` small files and one of 8 MiB; returns the
    bytes COPY copies."""
    os.makedirs(os.path.join(path, "files"))
    with open(os.path.join(path, "Dockerfile"), "w") as f:
        f.write(DOCKERFILE)
    total = 0
    for i in range(1, files + 1):
        data = f"file {i}\n".encode() * 50
        with open(os.path.join(path, "files", f"f{i}"), "wb") as f:
            f.write(data)
        total += len(data)
    with open(os.path.join(path, "files", "big.bin"), "wb") as f:
        f.write(os.urandom(8 << 20))
    return total + (8 << 20)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--files", type=int, default=500)
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root")
    sys.path.insert(0, os.path.join(REPO, "scripts"))
    import make_busybox_rootfs

    base = tempfile.mkdtemp(prefix="tbb", dir="/tmp")
    try:
        tar = os.path.join(base, "busybox.tar")
        make_busybox_rootfs.build(tar, shutil.which("busybox") or "/bin/busybox")
        ctx = os.path.join(base, "ctx")
        copied = make_context(ctx, args.files)
        with tugd(base) as sock:
            tug(sock, "import", tar, "busybox")
            note("warm-up")
            tug(sock, "build", "-q", "-t", "bench", ctx)
            times: dict[str, list[float]] = {"uncached": [], "cached": [], "changed": [], "floor": []}
            for i in range(args.rounds):
                note(f"round {i + 1}/{args.rounds}")
                times["uncached"].append(tug(sock, "build", "-q", "--no-cache", "-t", "bench", ctx))
                times["cached"].append(tug(sock, "build", "-q", "-t", "bench", ctx))
                with open(os.path.join(ctx, "files", "f1"), "w") as f:
                    f.write(f"changed in round {i}\n")
                times["changed"].append(tug(sock, "build", "-q", "-t", "bench", ctx))
                times["floor"].append(tug(sock, "info"))
            tug(sock, "rmi", "bench")
    finally:
        if args.keep:
            note(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    print(
        f"`tug build` of a 9-step Dockerfile (2 RUN, COPY of {args.files + 1} files, "
        f"{copied / 1048576:.1f} MiB), {args.rounds} rounds, {platform.node()}:\n"
    )
    print("| build | median ms | p90 ms |")
    print("|---|---|---|")
    labels = {
        "uncached": "uncached (`--no-cache`: 2 RUN containers, the COPY)",
        "cached": "cached rebuild, nothing changed",
        "changed": "one copied file changed (COPY and the RUN after it)",
        "floor": "`tug info` (the floor of any tug command)",
    }
    for key, label in labels.items():
        xs = times[key]
        print(f"| {label} | {statistics.median(xs) * 1000:.0f} | {p90(xs) * 1000:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
