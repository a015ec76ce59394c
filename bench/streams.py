"""Raw streams (issue 14): a foreground `tug run --rm ... > file` against `runc run > file`, and
`tug logs` of a finished log against `cat` of its CRI file, alternating in one run, with the CPU
time of each Tugboat process (the CLI, tugd, the container's shim) beside the wall time: on a
shared machine the CPU time is the figure that holds still.

    sudo .venv/bin/python bench/streams.py [REPO] [ROUNDS] [MODES]

REPO is the tree whose tugd and tug are measured (default: this one; another worktree gives an
A/B); MODES a comma-separated subset of runc,run,det,cat,logs (det: `tug run -d` + `tug wait`,
the shim writing the log with no follower).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = sys.argv[1] if len(sys.argv) > 1 else HERE
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 5
MODES = sys.argv[3].split(",") if len(sys.argv) > 3 else ["runc", "run", "det", "cat", "logs"]
sys.path.insert(0, REPO)
from bench import run as B  # noqa: E402  (the tree under test's bench helpers)

N = 100 * 1024 * 1024
WRITER = f"yes '{B.LINE}' | head -c {N}"
KEEP = ["--log-max-size", "512m", "--log-max-files", "2"]
TCK = os.sysconf("SC_CLK_TCK")


def cpu(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TCK


def shims() -> list[int]:
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/cmdline", "rb") as f:
                    cmd = f.read()
            except OSError:
                continue
            if cmd.startswith(b"tug-shim\0") and b"template" not in cmd:
                out.append(int(p))
    return out


class ShimCpu(threading.Thread):
    """The CPU time of the shims of our tugd that appear while a command runs (sampled every
    20 ms until they exit: the last sample is a slight undercount)."""

    def __init__(self, base: str) -> None:
        super().__init__(daemon=True)
        self.base = base
        self.ignore = set(shims())
        self.seen: dict[int, float] = {}
        self.stop = False

    def run(self) -> None:
        while not self.stop:
            for p in shims():
                if p in self.ignore:
                    continue
                if p not in self.seen:
                    try:
                        fds = os.listdir(f"/proc/{p}/fd")
                        mine = any(self.base in os.readlink(f"/proc/{p}/fd/{fd}") for fd in fds)
                    except OSError:
                        mine = False
                    if not mine:
                        self.ignore.add(p)
                        continue
                c = cpu(p)
                if c is not None:
                    self.seen[p] = c
            time.sleep(0.02)


def main() -> None:
    base = B.short_tempdir()
    d = B.Tugd(os.path.join(base, "t"), "template")
    runc = None
    res: dict[str, list[tuple[float, float, float, float]]] = {}
    out_path = os.path.join(base, "out.bin")
    try:
        tar = os.path.join(base, "busybox.tar")
        B.build_tar(tar)
        d.start()
        d.tug("import", tar, "busybox")
        runc = B.Runc(base, tar)
        bundle = runc.bundle("b-writer", ["sh", "-c", WRITER])
        cid = d.run_detached(*KEEP, "busybox", "sh", "-c", WRITER)
        d.tug("wait", cid)
        log_path = d.inspect(cid)["log_path"]
        detached = " ".join(d.argv("run", "-d", *KEEP, "busybox", "sh", "-c", f'"{WRITER}"'))
        argvs = {
            "runc": runc.argv(bundle),
            "run": d.argv("run", "--rm", *KEEP, "busybox", "sh", "-c", WRITER),
            "det": ["sh", "-c", " ".join(d.argv("wait", f"$({detached})"))],
            "cat": ["cat", log_path],
            "logs": d.argv("logs", cid),
        }
        for _ in range(ROUNDS):
            for mode in MODES:
                argv = runc.argv(bundle) if mode == "runc" else argvs[mode]
                watch = ShimCpu(base)
                watch.start()
                t0 = cpu(d.pid) or 0.0
                w0 = time.perf_counter()
                with open(out_path, "wb") as out:
                    proc = subprocess.Popen(argv, stdout=out)
                    _, status, ru = os.wait4(proc.pid, 0)
                wall = time.perf_counter() - w0
                watch.stop = True
                watch.join()
                size = os.path.getsize(out_path)
                row = (wall, ru.ru_utime + ru.ru_stime, (cpu(d.pid) or 0.0) - t0, sum(watch.seen.values()))
                res.setdefault(mode, []).append(row)
                ok = status == 0 and (size == N or mode in ("cat", "det"))
                print(
                    f"{mode}: wall {row[0]:.3f} client/child cpu {row[1]:.3f} tugd {row[2]:.3f} "
                    f"shim {row[3]:.3f} size {size}{'' if ok else ' CHECK FAILED'} "
                    f"load {os.getloadavg()[0]:.1f}",
                    file=sys.stderr,
                    flush=True,
                )
        d.rm(cid)
    finally:
        for problem in B.cleanup(base, [d], runc):
            print("cleanup:", problem, file=sys.stderr)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"{when}, {REPO}, {ROUNDS} rounds, load {os.getloadavg()}")
    print("| case | median wall s | best wall s | client (or child) CPU s | tugd CPU s | shim CPU s |")
    print("|---|---:|---:|---:|---:|---:|")
    for mode, rows in res.items():
        med = [statistics.median(x) for x in zip(*rows, strict=True)]
        best = min(r[0] for r in rows)
        print(f"| {mode} | {med[0]:.3f} | {best:.3f} | {med[1]:.3f} | {med[2]:.3f} | {med[3]:.3f} |")


if __name__ == "__main__":
    main()
