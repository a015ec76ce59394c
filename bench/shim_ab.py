"""A/B of the shim between worktrees: memory of idle shims and CPU time of a logging one.

Usage (as root, from the repository):

    .venv/bin/python bench/shim_ab.py --rounds 6 TREE [TREE ...]

Starts one tugd per worktree (each from its own ``.venv``, template births, no network) and, in
rounds that alternate between the trees, measures (1) the average PSS of ``--containers`` idle
shims (``busybox sleep``) and (2) one container writing 200 MiB to its CRI log through the shim:
the shim's CPU time (utime + stime from ``/proc/PID/stat``, read after ``tug wait`` returns and
before ``tug rm``) and the wall time of ``tug run -d`` to ``tug wait``. CPU time rather than wall
time: the machine is shared. Prints a Markdown table of medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import run

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


class Tree:
    def __init__(self, path: str, base: str, i: int) -> None:
        self.path = os.path.abspath(path)
        bin_ = os.path.join(self.path, ".venv", "bin")
        run.TUGD = os.path.join(bin_, "tugd")
        run.TUG = os.path.join(bin_, "tug")
        run._TUGD_HELP.clear()
        self.d = run.Tugd(os.path.join(base, f"t{i}"), "template")
        self.bin = bin_
        self.pss: list[float] = []
        self.cpu: list[float] = []
        self.wall: list[float] = []

    def use(self) -> None:
        run.TUGD = os.path.join(self.bin, "tugd")
        run.TUG = os.path.join(self.bin, "tug")

    def memory(self, n: int, settle: float) -> None:
        self.use()
        cids = [self.d.run_detached("busybox", "sleep", "1000") for _ in range(n)]
        pids = [int(self.d.inspect(c)["shim_pid"]) for c in cids]
        time.sleep(settle)
        self.pss.append(statistics.mean(run.smaps_rollup(p)["Pss"] for p in pids) * 1024 / 1e6)
        self.d.rm(*cids)

    def log(self) -> None:
        self.use()
        t0 = time.perf_counter()
        cid = self.d.run_detached("busybox", "sh", "-c", run.WRITER)
        pid = int(self.d.inspect(cid)["shim_pid"])
        self.d.tug("wait", cid)
        self.wall.append(time.perf_counter() - t0)
        self.cpu.append(cpu_seconds(pid))
        self.d.rm(cid)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("trees", nargs="+")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--containers", type=int, default=20)
    ap.add_argument("--settle", type=float, default=1.0)
    ap.add_argument("--no-log", action="store_true")
    ap.add_argument("--no-memory", action="store_true")
    args = ap.parse_args()
    base = run.short_tempdir()
    trees = [Tree(p, base, i) for i, p in enumerate(args.trees)]
    try:
        tar = os.path.join(base, "busybox.tar")
        run.build_tar(tar)
        for t in trees:
            t.use()
            t.d.start()
            t.d.tug("import", tar, "busybox")
        for r in range(args.rounds):
            order = trees if r % 2 == 0 else trees[::-1]
            for t in order:
                if not args.no_memory:
                    t.memory(args.containers, args.settle)
                if not args.no_log:
                    t.log()
            run.note(f"round {r + 1}: load {os.getloadavg()[0]:.1f}")
    finally:
        for p in run.cleanup(base, [t.d for t in trees], None):
            run.note(f"cleanup: {p}")
    print(
        f"| tree | shim PSS, avg of {args.containers} (MB) | shim CPU per 200 MiB logged (s) "
        "| MB/s run -d to wait |"
    )
    print("|---|---:|---:|---:|")
    for t in trees:
        pss = f"{statistics.median(t.pss):.2f} ({min(t.pss):.2f}-{max(t.pss):.2f})" if t.pss else "-"
        cpu = f"{statistics.median(t.cpu):.2f} ({min(t.cpu):.2f}-{max(t.cpu):.2f})" if t.cpu else "-"
        mbs = f"{run.LOG_BYTES / 1e6 / statistics.median(t.wall):.0f}" if t.wall else "-"
        print(f"| {t.path} | {pss} | {cpu} | {mbs} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
