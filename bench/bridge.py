"""The cost of the default bridge: ``tug run --rm busybox true`` on ``--network bridge`` against
``--network none``, interleaved against one tugd.

Usage (as root, from the repository):

    .venv/bin/python bench/bridge.py [--runs N] [--warmup N] [--ports] [--baseline DIR]

A tugd runs inside a network namespace this script makes (as the tests' do: nothing touches the
host's network). Each round runs ``tug run --rm busybox true`` once per network, the order
alternating every round, so that both see the same drift of the machine's load; the figure is the
wall time of the CLI process (create, start, wait, auto-remove). Reported: the median of each
network, and the median of the per-round differences (bridge minus none) with its quartiles.
``--ports`` adds a third kind, ``bridge -p 8080``: a published port (the nft map of forwards and
the other tugd's tables checked). ``--baseline DIR`` runs a second tugd, in a namespace of its
own, from the code in DIR (``PYTHONPATH``: a ``git archive`` of an older commit's ``supervisor``,
``shimd`` and ``tugwire``), measured in the same rounds: a before/after under the same load.
Markdown on stdout, progress on stderr; see docs/benchmarks.md, "Default bridge start cost".
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "scripts"))
TUG = os.path.join(REPO, ".venv", "bin", "tug")
BUSYBOX = shutil.which("busybox") or "/bin/busybox"


def note(msg: str) -> None:
    print(f"[bridge] {msg}", file=sys.stderr, flush=True)


def kinds(ports: bool) -> dict[str, list[str]]:
    out = {"none": ["--network", "none"], "bridge": ["--network", "bridge"]}
    if ports:
        out["bridge -p"] = ["--network", "bridge", "-p", "18080:80"]
    return out


def run_once(socket_path: str, args: list[str]) -> float:
    """One ``tug run --rm busybox true``: its wall time in ms."""
    t0 = time.perf_counter()
    res = subprocess.run(
        [TUG, "--socket", socket_path, "run", "--rm", *args, "busybox", "true"],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    ms = (time.perf_counter() - t0) * 1000
    if res.returncode != 0:
        raise RuntimeError(f"tug run {' '.join(args)}: exit {res.returncode}: {res.stderr.decode()}")
    return ms


def measure(daemons: dict[str, Any], runs: int, warmup: int, ports: bool) -> dict[str, list[float]]:
    ks = kinds(ports)
    cases = [(label, name) for label in daemons for name in ks]
    for _ in range(warmup):  # pyroute2's import, the bridge, the first nft table
        for label, name in cases:
            run_once(daemons[label].socket, ks[name])
    out: dict[str, list[float]] = {f"{name}{label}": [] for label, name in cases}
    for r in range(runs):
        order = cases if r % 2 == 0 else cases[::-1]
        for label, name in order:
            out[f"{name}{label}"].append(run_once(daemons[label].socket, ks[name]))
        if (r + 1) % 10 == 0:
            note(f"{r + 1}/{runs} rounds")
    return out


def quartiles(values: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(values, n=4)
    return q[0], q[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=40, help="rounds (one run per network each; default 40)")
    parser.add_argument("--warmup", type=int, default=3, help="rounds not counted (default 3)")
    parser.add_argument("--ports", action="store_true", help="also -p 18080:80 on the bridge")
    parser.add_argument("--baseline", help="also a tugd running the code in this directory")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/bridge.py needs root (namespaces, runc)", file=sys.stderr)
        return 2
    import make_busybox_rootfs

    from tests.conftest import Daemon

    labels = {"": None, **({" (baseline)": os.path.abspath(args.baseline)} if args.baseline else {})}
    bases: list[str] = []
    nses: list[str] = []
    daemons: dict[str, Any] = {}
    try:
        for label, code in labels.items():
            base = tempfile.mkdtemp(prefix="tbbr", dir="/tmp")
            bases.append(base)
            ns = f"tbbridge{secrets.token_hex(3)}"
            subprocess.run(["ip", "netns", "add", ns], check=True)
            nses.append(ns)
            subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
            tar = os.path.join(base, "busybox.tar")
            make_busybox_rootfs.build(tar, BUSYBOX)
            daemon = Daemon(base, extra=["--metrics-address", "off"], netns=ns)
            if code is not None:
                daemon.start_env = {"PYTHONPATH": code}  # tugd and its shims run that code
            daemons[label] = daemon
            daemon.start()
            daemon.call("image.import", {"path": tar, "ref": "busybox"})
            note(f"tugd{label} in netns {ns}, roots under {base}")
        results = measure(daemons, args.runs, args.warmup, args.ports)
    finally:
        for daemon in daemons.values():
            problems = daemon.cleanup()
            if problems:
                note(f"left behind: {problems}")
        for ns in nses:
            subprocess.run(["ip", "netns", "del", ns], check=False)
        for base in bases:
            shutil.rmtree(base, ignore_errors=True)
    print(f"`tug run --rm busybox true`, {args.runs} interleaved rounds (ms):\n")
    print("| network | median | (p25, p75) | difference to none, median of rounds | (p25, p75) |")
    print("|---|---:|---|---:|---|")
    for name, values in results.items():
        lo, hi = quartiles(values)
        none_name = "none" + name[len(name.split(" (")[0]) :] if " (" in name else "none"
        diffs = [v - n for v, n in zip(values, results[none_name], strict=True)]
        dlo, dhi = quartiles(diffs)
        first = name.startswith("none")
        diff = "-" if first else f"{statistics.median(diffs):+.1f}"
        dq = "-" if first else f"({dlo:+.1f}, {dhi:+.1f})"
        print(f"| {name} | {statistics.median(values):.1f} | ({lo:.1f}, {hi:.1f}) | {diff} | {dq} |")
    print(f"\nkernel {os.uname().release}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
