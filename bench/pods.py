"""The cost of a pod in tugd: ``pod.create`` + ``pod.stop`` + ``pod.remove`` over tugd's JSON-RPC
API, with its own PID namespace (``pid: container``, no process at all: bind-mounted namespace
files) and with a pod-shared one (``pid: pod``: the infra process), interleaved; and the memory of
20 pods.

Usage (as root, from the repository):

    .venv/bin/python bench/pods.py [--rounds N] [--pods N]

tugd runs in a network namespace this script makes (nothing touches the host's network); every
pod gets its veth and address on the pod network. Reported: the median and p90 wall time of each
step, tugd's CPU time (utime + stime) per pod life, and for ``--pods`` ready pods of each kind the
growth of tugd's RSS and the PSS of their infra processes (``/proc/PID/smaps_rollup``). Markdown
on stdout, progress on stderr; see docs/cri.md, "Pods".
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

MODES = ("container", "pod")


def note(msg: str) -> None:
    print(f"[pods] {msg}", file=sys.stderr, flush=True)


def cpu_ms(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def kib(pid: int, key: str) -> int:
    path = f"/proc/{pid}/smaps_rollup" if key == "Pss:" else f"/proc/{pid}/status"
    with open(path) as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1])
    return 0


def infra_pss(state: str, pods: list[dict[str, Any]]) -> int:
    """KiB: PSS of every process of the pods' infra (the unshare, its shell and sleep)."""
    total = 0
    for p in pods:
        with open(os.path.join(state, "pods", p["id"], "infra.pid")) as f:
            top = int(f.read())
        todo = [top]
        while todo:
            pid = todo.pop()
            total += kib(pid, "Pss:")
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                todo += [int(c) for c in f.read().split()]
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=30, help="pod lives per kind (default 30)")
    parser.add_argument("--pods", type=int, default=20, help="ready pods for the memory figure (default 20)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/pods.py needs root (namespaces)", file=sys.stderr)
        return 2
    from tests.conftest import Daemon

    base = tempfile.mkdtemp(prefix="tbpod", dir="/tmp")
    ns = f"tbpods{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
    d = Daemon(base, extra=["--metrics-address", "off"], netns=ns)
    steps: dict[str, dict[str, list[float]]] = {m: {"create": [], "stop": [], "remove": []} for m in MODES}
    cpu: dict[str, float] = dict.fromkeys(MODES, 0.0)
    memory: dict[str, tuple[int, int]] = {}
    try:
        d.start()
        assert d.proc is not None
        for i in range(3):  # the pod network, pyroute2, the first nft table
            p = d.call("pod.create", {"name": f"warm{i}"})
            d.call("pod.remove", {"id": p["id"]})
        for r in range(args.rounds):
            for mode in MODES if r % 2 == 0 else MODES[::-1]:
                c0 = cpu_ms(d.proc.pid)
                t0 = time.perf_counter()
                p = d.call("pod.create", {"name": f"{mode}{r}", "pid": mode})
                t1 = time.perf_counter()
                d.call("pod.stop", {"id": p["id"]})
                t2 = time.perf_counter()
                d.call("pod.remove", {"id": p["id"]})
                t3 = time.perf_counter()
                cpu[mode] += cpu_ms(d.proc.pid) - c0
                for step, ms in (("create", t1 - t0), ("stop", t2 - t1), ("remove", t3 - t2)):
                    steps[mode][step].append(ms * 1000)
            if (r + 1) % 10 == 0:
                note(f"{r + 1}/{args.rounds} rounds")
        for mode in MODES:
            rss0 = kib(d.proc.pid, "VmRSS:")
            pods = [d.call("pod.create", {"name": f"mem{mode}{i}", "pid": mode}) for i in range(args.pods)]
            rss1 = kib(d.proc.pid, "VmRSS:")
            memory[mode] = (rss1 - rss0, infra_pss(d.state, pods) if mode == "pod" else 0)
            for p in pods:
                d.call("pod.remove", {"id": p["id"]})
        with open("/proc/loadavg") as f:
            load = f.read().split()[:3]
    finally:
        problems = d.cleanup()
        if problems:
            note(f"left behind: {problems}")
        subprocess.run(["ip", "netns", "del", ns], check=False)
        shutil.rmtree(base, ignore_errors=True)
    print(
        f"pod.create / pod.stop / pod.remove over JSON-RPC, {args.rounds} interleaved rounds (ms), "
        f"load average {' '.join(load)}:\n"
    )
    print(
        "| pid namespace | create median (p90) | stop median (p90) | remove median (p90) "
        "| tugd CPU per pod life |"
    )
    print("|---|---:|---:|---:|---:|")
    for mode in MODES:
        cells = []
        for step in ("create", "stop", "remove"):
            v = sorted(steps[mode][step])
            cells.append(f"{statistics.median(v):.1f} ({v[int(len(v) * 0.9) - 1]:.1f})")
        print(f"| {mode} | {' | '.join(cells)} | {cpu[mode] / args.rounds:.1f} ms |")
    print(f"\n{args.pods} ready pods:\n")
    print("| pid namespace | tugd RSS growth | infra processes' PSS | per pod |")
    print("|---|---:|---:|---:|")
    for mode, (rss, pss) in memory.items():
        print(f"| {mode} | {rss} KiB | {pss} KiB | {(rss + pss) / args.pods:.0f} KiB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
