"""What the security profile and the socket's defences cost (issue 8, part 2).

Usage (as root, from the repository):

    .venv/bin/python bench/security.py [--rounds N] [--idle N]

1. Container run latency (create, start, wait for exit of ``true``, over the API) with docker's
   default profile (seccomp filter, no-new-privileges), with ``seccomp=unconfined`` and with
   ``--privileged``, interleaved round by round after warm-ups: the price of the filter.
2. Idle connections: N connections opened to tugd (asyncio and trio), tugd's RSS and fd count
   before and with them, the latency of a call with them all open, and after they close.
3. Garbage: 20,000 malformed lines on one connection (parse errors, wrong types, unknown
   methods), answered per second, and tugd's RSS after.

Everything runs in temporary roots (tests/conftest.py's Daemon) removed at the end. Prints
Markdown to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "scripts"))

from tests.conftest import Daemon  # noqa: E402
from tugwire.syncclient import Client  # noqa: E402


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def run_once(d: Daemon, opts: dict[str, Any]) -> float:
    t0 = time.perf_counter()
    with Client(d.socket) as c:
        cid = c.call("container.create", {"image": "busybox", "cmd": ["true"], **opts})["id"]
        wid = c.send("container.wait", {"id": cid, "condition": "next-exit"})
        c.call("container.start", {"id": cid})
        result = c.wait_for(wid)
    elapsed = time.perf_counter() - t0
    assert result["exit_code"] == 0, result
    d.call("container.delete", {"id": cid})
    return elapsed


def line_call(sock: socket.socket, buf: bytearray, payload: bytes) -> dict[str, Any]:
    sock.sendall(payload)
    while b"\n" not in buf:
        buf += sock.recv(1 << 16)
    nl = buf.index(b"\n")
    line = bytes(buf[:nl])
    del buf[: nl + 1]
    reply: dict[str, Any] = json.loads(line)
    return reply


def bench_profiles(d: Daemon, rounds: int) -> None:
    variants = {
        "default profile": {},
        "seccomp=unconfined": {"security_opt": ["seccomp=unconfined"]},
        "--privileged": {"privileged": True},
    }
    for opts in variants.values():
        for _ in range(3):
            run_once(d, opts)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for i in range(rounds):
        names = list(variants)
        names = names[i % 3 :] + names[: i % 3]
        for name in names:
            times[name].append(run_once(d, variants[name]))
    print(f"\n### Run latency by profile ({rounds} rounds, interleaved; create + start + exit of `true`)\n")
    print("| profile | median ms | p90 ms |")
    print("|---|---|---|")
    for name, ts in times.items():
        ts.sort()
        print(f"| {name} | {statistics.median(ts) * 1000:.1f} | {ts[int(len(ts) * 0.9) - 1] * 1000:.1f} |")


def bench_idle(d: Daemon, n: int) -> str:
    assert d.proc is not None
    pid = d.proc.pid
    probe = Client(d.socket)
    probe.call("system.info")
    rss0, fds0 = rss_kib(pid), fds(pid)
    t0 = time.perf_counter()
    conns = []
    for _ in range(n):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(d.socket)
        conns.append(s)
    probe.call("system.info")  # all accepted before this answers (one listener, in order)
    while fds(pid) < fds0 + n:
        time.sleep(0.01)
    opened = time.perf_counter() - t0
    rss1, fds1 = rss_kib(pid), fds(pid)
    t1 = time.perf_counter()
    for _ in range(20):
        probe.call("container.list", {"all": True})
    call_ms = (time.perf_counter() - t1) / 20 * 1000
    for s in conns:
        s.close()
    probe.call("system.info")
    while fds(pid) > fds0 + 2:
        time.sleep(0.01)
    rss2 = rss_kib(pid)
    probe.close()
    return (
        f"| {d.backend} | {n} | {opened:.2f} | {fds1 - fds0} | {(rss1 - rss0) / n:.1f} | "
        f"{call_ms:.2f} | {rss0 / 1024:.1f} / {rss1 / 1024:.1f} / {rss2 / 1024:.1f} |"
    )


def bench_garbage(d: Daemon, count: int = 20_000) -> str:
    assert d.proc is not None
    pid = d.proc.pid
    lines = [
        b"{\n",
        b'{"jsonrpc":"2.0","id":1,"method":"nope"}\n',
        b'{"jsonrpc":"2.0","id":1,"method":"container.inspect","params":{"id":[1]}}\n',
        b"[" * 5000 + b"\n",
    ]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(d.socket)
    buf = bytearray()
    rss0 = rss_kib(pid)
    t0 = time.perf_counter()
    for i in range(count):
        reply = line_call(s, buf, lines[i % len(lines)])
        assert "error" in reply
    rate = count / (time.perf_counter() - t0)
    s.close()
    return f"| {d.backend} | {count} | {rate:,.0f} | {rss0 / 1024:.1f} -> {rss_kib(pid) / 1024:.1f} |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--idle", type=int, default=2000)
    args = parser.parse_args()
    import make_busybox_rootfs

    work = tempfile.mkdtemp(prefix="tbsec", dir="/tmp")
    daemons: list[Daemon] = []
    bases: list[str] = []
    try:
        tar = os.path.join(work, "busybox.tar")
        make_busybox_rootfs.build(tar, shutil.which("busybox") or "/bin/busybox")
        idle_rows, garbage_rows = [], []
        for backend in ("asyncio", "trio"):
            base = tempfile.mkdtemp(prefix="tbs", dir="/tmp")  # short: socket paths < 108 bytes
            bases.append(base)
            d = Daemon(base, backend)
            daemons.append(d)
            d.start()
            d.call("image.import", {"path": tar, "ref": "busybox"})
            if backend == "asyncio":
                bench_profiles(d, args.rounds)
            idle_rows.append(bench_idle(d, args.idle))
            garbage_rows.append(bench_garbage(d))
        print("\n### Idle connections\n")
        print(
            "| backend | connections | s to open | tugd fds added | KiB RSS each | call ms with them "
            "| RSS MiB before / with / after |"
        )
        print("|---|---|---|---|---|---|---|")
        print("\n".join(idle_rows))
        print("\n### Malformed lines on one connection\n")
        print("| backend | lines | answered per s | tugd RSS MiB before -> after |")
        print("|---|---|---|---|")
        print("\n".join(garbage_rows))
    finally:
        for d in daemons:
            try:
                for c in d.call("container.list", {"all": True}):
                    d.call("container.delete", {"id": c["id"], "force": True})
            except Exception as exc:
                print(f"cleanup of {d.base}: {exc}", file=sys.stderr)
            d.stop()
        for path in [work, *bases]:
            shutil.rmtree(path, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
