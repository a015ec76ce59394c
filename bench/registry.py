"""Registry pull and push: ``tug pull`` / ``tug push`` against ``skopeo copy``, same image, same
real ``docker-registry`` on 127.0.0.1, in one run.

Usage (as root, from the repository):

    .venv/bin/python bench/registry.py [--rounds N] [--layers N] [--layer-mib N]

The image: busybox (from the host's busybox-static) plus ``--layers`` layers of ``--layer-mib``
MiB of random bytes each (incompressible, so gzip costs what it would on real binaries), built
with umoci and pushed once by skopeo to ``bench/src:1``.

- Pull: ``skopeo copy docker://REG/bench/src:1 oci:FRESH_DIR:t`` (fetch and verify into an OCI
  layout) against ``tug pull -q REG/bench/src:1`` on a tugd whose store was emptied by ``tug rmi``
  (fetch, verify, *and unpack every layer into its snapshot*: tug does strictly more work), so
  the same copy followed by ``umoci unpack`` of it into a fresh bundle is timed too: that pair
  is the like-for-like one.
- Push: each tool pushes the same image to a fresh registry of its own each round (an empty
  storage, so every blob is uploaded and no tool can mount or skip): ``skopeo copy
  oci:DIR:t docker://FRESH/bench/dst:1`` against ``tug push -q IMAGE FRESH/bench/dst:1``.

Rounds alternate the order of the two tools. Prints Markdown to stdout, progress to stderr.
Everything lives under one temporary directory, removed at the end, with every process it
started stopped by its pid.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_BIN = os.path.join(REPO, ".venv", "bin")
TUG = os.path.join(VENV_BIN, "tug")
TUGD = os.path.join(VENV_BIN, "tugd")
sys.path.insert(0, os.path.join(REPO, "scripts"))
sys.path.insert(0, REPO)


def note(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def registry(base: str) -> Iterator[str]:
    """A docker-registry with its own storage under ``base``; yields its HOST:PORT."""
    os.makedirs(base)
    host = f"127.0.0.1:{free_port()}"
    config = {
        "version": 0.1,
        "log": {"level": "error", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": os.path.join(base, "data")}},
        "http": {"addr": host},
    }
    path = os.path.join(base, "config.yml")
    with open(path, "w") as f:
        json.dump(config, f)
    with open(os.path.join(base, "log"), "ab") as log:
        proc = subprocess.Popen(["docker-registry", "serve", path], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while True:  # no readiness notification: poll GET /v2/
            with contextlib.suppress(OSError), urllib.request.urlopen(f"http://{host}/v2/", timeout=1):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("docker-registry did not start")
            time.sleep(0.05)
        yield host
    finally:
        proc.terminate()
        proc.wait()


@contextlib.contextmanager
def tugd(base: str) -> Iterator[str]:
    """A tugd in its own roots; yields its socket."""
    os.makedirs(base)
    state = os.path.join(base, "st")
    sock = os.path.join(state, "tugd.sock")
    with open(os.path.join(base, "tugd.log"), "ab") as log:
        proc = subprocess.Popen(
            [TUGD, "--root", os.path.join(base, "root"), "--state", state, "--metrics-address", "off"],
            stdout=log,
            stderr=log,
        )
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(sock):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("tugd did not start")
            time.sleep(0.05)
        yield sock
    finally:
        proc.terminate()
        proc.wait()


def build_image(base: str, layers: int, layer_mib: int) -> str:
    """An OCI layout ``base/oci:t``: busybox plus ``layers`` layers of random data."""
    import make_busybox_rootfs

    tar = os.path.join(base, "busybox.tar")
    make_busybox_rootfs.build(tar, shutil.which("busybox") or "/bin/busybox")
    rootfs = os.path.join(base, "rootfs")
    os.makedirs(rootfs)
    subprocess.run(["tar", "-xf", tar, "-C", rootfs], check=True)
    layout = os.path.join(base, "oci")
    run = ["umoci", "init", "--layout", layout], ["umoci", "new", "--image", f"{layout}:t"]
    for argv in run:
        subprocess.run(argv, check=True)
    subprocess.run(["umoci", "insert", "--image", f"{layout}:t", rootfs, "/"], check=True)
    for i in range(layers):
        path = os.path.join(base, f"random{i}")
        with open(path, "wb") as f:
            f.write(os.urandom(layer_mib << 20))
        subprocess.run(["umoci", "insert", "--image", f"{layout}:t", path, f"/data/random{i}"], check=True)
        os.unlink(path)
    return layout


def timed(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def timed_pull(sock: str, ref: str) -> tuple[float, float]:
    """``image.pull`` as ``tug pull`` sends it: (whole time, time until unpacking starts, that
    is, every blob fetched and verified into the store)."""
    from tugwire.syncclient import Client

    with Client(sock) as client:
        t0 = time.perf_counter()
        req = client.send("image.pull", {"ref": ref})
        fetched = 0.0
        while True:
            msg = client.next_message()
            assert msg is not None
            if "method" not in msg and msg.get("id") == req:
                if "error" in msg:
                    raise RuntimeError(msg["error"])
                return time.perf_counter() - t0, fetched
            if msg.get("params", {}).get("action") == "unpacking" and not fetched:
                fetched = time.perf_counter() - t0


def stats(xs: list[float]) -> str:
    return f"{statistics.median(xs) * 1000:.0f} ms (min {min(xs) * 1000:.0f}, max {max(xs) * 1000:.0f})"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--layer-mib", type=int, default=32)
    args = parser.parse_args()
    base = tempfile.mkdtemp(prefix="tbreg", dir="/tmp")
    keys = ("skopeo pull", "skopeo pull + umoci unpack", "tug pull", "skopeo push", "tug push")
    results: dict[str, list[float]] = {k: [] for k in keys}
    try:
        note(f"building the image: busybox + {args.layers} x {args.layer_mib} MiB random layers")
        layout = build_image(base, args.layers, args.layer_mib)
        with registry(os.path.join(base, "reg")) as reg, tugd(os.path.join(base, "tugd")) as sock:
            src = f"{reg}/bench/src:1"
            subprocess.run(
                ["skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{layout}:t", f"docker://{src}"],
                check=True,
            )
            tug = [TUG, "--socket", sock]
            subprocess.run([*tug, "pull", "-q", src], check=True, stdout=subprocess.DEVNULL)  # warm-up
            for r in range(args.rounds):
                note(f"round {r + 1}/{args.rounds}")
                order = ["skopeo", "tug"] if r % 2 == 0 else ["tug", "skopeo"]
                for tool in order:
                    if tool == "skopeo":
                        dest = os.path.join(base, f"pulled{r}")
                        results["skopeo pull"].append(
                            timed(
                                [
                                    "skopeo",
                                    "copy",
                                    "-q",
                                    "--src-tls-verify=false",
                                    f"docker://{src}",
                                    f"oci:{dest}:t",
                                ]
                            )
                        )
                        # The like-for-like pair of a tug pull (which unpacks every layer into
                        # its snapshot): the same copy, then umoci unpacking it into a rootfs.
                        bundle = os.path.join(base, f"bundle{r}")
                        unpack = timed(["umoci", "unpack", "--image", f"{dest}:t", bundle])
                        results["skopeo pull + umoci unpack"].append(results["skopeo pull"][-1] + unpack)
                        shutil.rmtree(dest)
                        shutil.rmtree(bundle)
                    else:
                        subprocess.run([*tug, "rmi", src], check=True, stdout=subprocess.DEVNULL)
                        total, _ = timed_pull(sock, src)
                        results["tug pull"].append(total)
                for tool in order:
                    with registry(os.path.join(base, f"push-{tool}-{r}")) as fresh:
                        dst = f"docker://{fresh}/bench/dst:1"
                        if tool == "skopeo":
                            argv = ["skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{layout}:t", dst]
                        else:
                            argv = [*tug, "push", "-q", src, f"{fresh}/bench/dst:1"]
                        results[f"{tool} push"].append(timed(argv))
        size = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(layout) for f in fs)
        print(f"### Registry pull and push ({args.rounds} rounds, image {size / (1 << 20):.1f} MiB in "
              f"{args.layers + 1} layers, docker-registry on 127.0.0.1)\n")  # fmt: skip
        print("| what | median (min, max) |")
        print("|---|---|")
        for key, xs in results.items():
            print(f"| {key} | {stats(xs)} |")

        def ratio(a: str, b: str) -> float:
            return statistics.median(results[a]) / statistics.median(results[b])

        like = ratio("tug pull", "skopeo pull + umoci unpack")
        print(f"\npull: tug / (skopeo + umoci unpack) = {like:.2f}")
        print(f"pull: tug / skopeo copy alone (no unpack) = {ratio('tug pull', 'skopeo pull'):.2f}")
        print(f"push: tug / skopeo = {ratio('tug push', 'skopeo push'):.2f}")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
