"""Where a running shim's memory goes: ``/proc/PID/smaps`` of real shims, mapping by mapping.

Usage (as root, from the repository):

    .venv/bin/python bench/shim_smaps.py [--containers 20] [--settle 1] [--tree PATH] [--pages]

Starts a tugd of its own (template births, no network), runs ``--containers`` detached
``busybox sleep 1000`` containers, waits ``--settle`` seconds, and prints, per kind of mapping,
the average over the shims of PSS, private dirty and shared memory, then the template's
figures, as Markdown. ``--tree`` runs another worktree's tugd (its own ``.venv``), for A/B runs.

``--pages`` also compares the shims' pages with the template's, page by page (page frames from
``/proc/PID/pagemap``, bytes from ``/proc/PID/mem``): how many of a shim's private pages are
copies of a template page (and of those, how many hold the template's bytes again), how many are
new, and how many distinct contents all the shims' private pages have between them (what the
kernel's same-page merging could bring them down to).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import statistics
import struct
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


def _maps(pid: int) -> list[tuple[int, int, str]]:
    """(start, end, perms) of the private writable mappings of ``pid``."""
    out = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            fields = line.split()
            a, b = (int(x, 16) for x in fields[0].split("-"))
            if fields[1][1] == "w" and fields[1][3] == "p":
                out.append((a, b, fields[1]))
    return out


def _frames(pid: int, a: int, b: int) -> list[int | None]:
    """The page frame of each page of [a, b) of ``pid``, None where not present."""
    with open(f"/proc/{pid}/pagemap", "rb") as f:
        f.seek(a // 4096 * 8)
        data = f.read((b - a) // 4096 * 8)
    return [e & ((1 << 55) - 1) if e >> 63 else None for (e,) in struct.iter_unpack("Q", data)]


def pages(tmpl: int, shims: list[int]) -> None:
    tmaps = {(a, b) for a, b, _ in _maps(tmpl)}
    counts = {"copied, template's bytes": 0, "copied, changed": 0, "new": 0}
    contents: dict[bytes, int] = {}
    with open(f"/proc/{tmpl}/mem", "rb", buffering=0) as tm:
        for pid in shims:
            with open(f"/proc/{pid}/mem", "rb", buffering=0) as cm:
                for a, b, _ in _maps(pid):
                    mine = _frames(pid, a, b)
                    theirs = _frames(tmpl, a, b) if (a, b) in tmaps else [None] * len(mine)
                    for i, (x, y) in enumerate(zip(mine, theirs, strict=True)):
                        if x is None or x == y:
                            continue
                        addr = a + i * 4096
                        try:
                            cm.seek(addr)
                            page = cm.read(4096)
                            if y is None:
                                counts["new"] += 1
                            else:
                                tm.seek(addr)
                                same = tm.read(4096) == page
                                counts["copied, template's bytes" if same else "copied, changed"] += 1
                        except OSError:
                            continue
                        digest = hashlib.sha1(page).digest()
                        contents[digest] = contents.get(digest, 0) + 1
    n = len(shims)
    total = sum(counts.values())
    print(f"\nPrivate pages of {n} shims, against the template's (pages per shim):\n")
    print("| kind | pages per shim |")
    print("|---|---:|")
    for k, v in counts.items():
        print(f"| {k} | {v / n:.0f} |")
    print(f"| **all private** | {total / n:.0f} ({total * 4 / n / 1024:.2f} MiB) |")
    print(
        f"\nDistinct contents among all {total} private pages: {len(contents)} "
        f"({len(contents) * 4 / 1024:.1f} MiB in all, {len(contents) * 4 / n / 1024:.2f} MiB per shim)"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--containers", type=int, default=20)
    ap.add_argument("--settle", type=float, default=1.0)
    ap.add_argument("--tree", default="", help="another worktree whose .venv to run")
    ap.add_argument("--pages", action="store_true", help="compare pages with the template's")
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
        if args.pages and tpid:
            pages(tpid, pids)
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
