"""``tug cp`` of one big file into a running container and back out (issue 14: cp as bytes on
raw streams), alternating in one run, with the CPU time of the CLI and of tugd beside the wall
time (on a shared machine the CPU time is the figure that holds still); each copy is checked
byte for byte, and a plain ``cp`` of the same file gives the floor.

    sudo .venv/bin/python bench/cp.py [REPO] [ROUNDS] [MIB]

REPO is the tree whose tugd and tug are measured (default: this one; another worktree gives an
A/B: before this work ``tug cp`` had tugd copy between host paths with ``copy_file_range``).
"""

from __future__ import annotations

import hashlib
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = sys.argv[1] if len(sys.argv) > 1 else HERE
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 5
MIB = int(sys.argv[3]) if len(sys.argv) > 3 else 256
sys.path.insert(0, REPO)
from bench import run as B  # noqa: E402  (the tree under test's bench helpers)

TCK = os.sysconf("SC_CLK_TCK")


def cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TCK


def digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def main() -> None:
    base = B.short_tempdir()
    d = B.Tugd(os.path.join(base, "t"), "template")
    res: dict[str, list[tuple[float, float, float]]] = {}
    big = os.path.join(base, "big")
    back = os.path.join(base, "back")
    with open(big, "wb") as f:
        for _ in range(MIB):
            f.write(os.urandom(1 << 20))
    want = digest(big)
    try:
        tar = os.path.join(base, "busybox.tar")
        B.build_tar(tar)
        d.start()
        d.tug("import", tar, "busybox")
        cid = d.run_detached("busybox", "sh", "-c", "mkdir /dest && sleep 100000")
        argvs = {
            "plain cp": ["cp", big, back],
            "tug cp in": d.argv("cp", big, f"{cid}:/dest/big"),
            "tug cp out": d.argv("cp", f"{cid}:/dest/big", back),
        }
        for _ in range(ROUNDS):
            for mode, argv in argvs.items():
                if os.path.exists(back):
                    os.unlink(back)
                t0 = cpu(d.pid)
                w0 = time.perf_counter()
                proc = subprocess.Popen(argv)
                _, status, ru = os.wait4(proc.pid, 0)
                wall = time.perf_counter() - w0
                row = (wall, ru.ru_utime + ru.ru_stime, cpu(d.pid) - t0)
                res.setdefault(mode, []).append(row)
                ok = status == 0 and (mode == "tug cp in" or digest(back) == want)
                print(
                    f"{mode}: wall {wall:.3f} client cpu {row[1]:.3f} tugd {row[2]:.3f}"
                    f"{'' if ok else ' CHECK FAILED'} load {os.getloadavg()[0]:.1f}",
                    file=sys.stderr,
                    flush=True,
                )
        d.rm(cid)
    finally:
        for problem in B.cleanup(base, [d], None):
            print("cleanup:", problem, file=sys.stderr)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"{when}, {REPO}, {ROUNDS} rounds of {MIB} MiB, load {os.getloadavg()}")
    print("| case | median wall s | best wall s | MiB/s (median) | client CPU s | tugd CPU s |")
    print("|---|---:|---:|---:|---:|---:|")
    for mode, rows in res.items():
        med = [statistics.median(x) for x in zip(*rows, strict=True)]
        best = min(r[0] for r in rows)
        print(f"| {mode} | {med[0]:.3f} | {best:.3f} | {MIB / med[0]:.0f} | {med[1]:.3f} | {med[2]:.3f} |")


if __name__ == "__main__":
    main()
