"""Where a running shim's memory goes: ``/proc/PID/smaps`` of real shims, mapping by mapping.

Usage (as root, from the repository):

    .venv/bin/python bench/shim_smaps.py [--containers 20] [--settle 1] [--tree PATH]

Starts a tugd of its own (template births, no network), runs ``--containers`` detached
``busybox sleep 1000`` containers, waits ``--settle`` seconds, and prints, per kind of mapping,
the average over the shims of PSS, private dirty and shared memory, then the template's
figures, as Markdown. ``--tree`` runs another worktree's tugd (its own ``.venv``), for A/B runs.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import run


def smaps(pid: int) -> dict[str, dict[str, int]]:
    """kB figures of ``/proc/PID/smaps`` summed per kind of mapping."""
    out: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    name = ""
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split(None, 6)
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                perms = head[1]
                path = head[5].strip() if len(head) > 5 else ""
                name = kind(path, perms)
                continue
            if len(head) == 3 and head[2] == "kB":
                out[name][head[0].rstrip(":")] += int(head[1])
    return out


def kind(path: str, perms: str) -> str:
    if not path:
        return "[anon] (obmalloc arenas, mmap'd buffers)"
    if path.startswith("["):
        return path
    base = os.path.basename(path)
    if re.match(r"python3(\.\d+)?$", base) or base.startswith("libpython"):
        return f"python binary ({'text' if 'x' in perms else 'data'})"
    if base.endswith(".so") or ".so." in base or ".cpython-" in base:
        return "other shared libraries"
    return "files: " + base


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--containers", type=int, default=20)
    ap.add_argument("--settle", type=float, default=1.0)
    ap.add_argument("--tree", default="", help="another worktree whose .venv to run")
    args = ap.parse_args()
    if args.tree:
        run.VENV_BIN = os.path.join(os.path.abspath(args.tree), ".venv", "bin")
        run.TUG = os.path.join(run.VENV_BIN, "tug")
        run.TUGD = os.path.join(run.VENV_BIN, "tugd")
    base = run.short_tempdir()
    d = run.Tugd(os.path.join(base, "t"), "template")
    try:
        tar = os.path.join(base, "busybox.tar")
        run.build_tar(tar)
        d.start()
        d.tug("import", tar, "busybox")
        cids = [d.run_detached("busybox", "sleep", "1000") for _ in range(args.containers)]
        pids = [int(d.inspect(c)["shim_pid"]) for c in cids]
        time.sleep(args.settle)
        per = [smaps(p) for p in pids]
        tpid = d.template_pid()
        tmpl = smaps(tpid) if tpid else {}
        report(per, tmpl, args.tree or run.REPO)
        d.rm(*cids)
    finally:
        for p in run.cleanup(base, [d], None):
            run.note(f"cleanup: {p}")
    return 0


def report(per: list[dict[str, dict[str, int]]], tmpl: dict[str, dict[str, int]], tree: str) -> None:
    kinds = sorted({k for s in per for k in s}, key=lambda k: -statistics.mean(s[k]["Pss"] for s in per))

    def avg(k: str, field: str) -> float:
        return statistics.mean(s[k][field] if k in s else 0 for s in per)

    print(f"Shims of {tree}, average of {len(per)} (kB):\n")
    print("| mapping | PSS | private dirty | private clean | shared | template PSS |")
    print("|---|---:|---:|---:|---:|---:|")
    for k in kinds:
        shared = avg(k, "Shared_Clean") + avg(k, "Shared_Dirty")
        t = tmpl.get(k, {}).get("Pss", 0)
        print(
            f"| {k} | {avg(k, 'Pss'):.0f} | {avg(k, 'Private_Dirty'):.0f} | "
            f"{avg(k, 'Private_Clean'):.0f} | {shared:.0f} | {t} |"
        )
    total = statistics.mean(sum(s[k]["Pss"] for k in s) for s in per)
    dirty = statistics.mean(sum(s[k]["Private_Dirty"] for k in s) for s in per)
    tt = sum(v.get("Pss", 0) for v in tmpl.values())
    print(f"| **total** | {total:.0f} ({total * 1024 / 1e6:.2f} MB) | {dirty:.0f} | | | {tt} |")


if __name__ == "__main__":
    sys.exit(main())
