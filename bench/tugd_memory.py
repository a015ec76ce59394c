"""tugd's own memory, tree against tree, alternating (issue 13).

Usage (as root, from the repository):

    .venv/bin/python bench/tugd_memory.py [--rounds N] [--containers N] TREE [TREE ...]

Each TREE is a checkout with its own ``.venv`` (``.`` for this one). Round by round, in a
rotating order, for each tree: start a tugd of that tree with private roots under a short
temporary directory (metrics on, on a port of the kernel's choosing, as ``bench/run.py``; no
default network), import busybox, read tugd's ``/proc/PID/smaps_rollup`` at idle, run N
``busybox sleep`` containers, read it again, remove them and stop tugd. Also, per round and
tree, a fresh interpreter of that tree imports ``supervisor.app`` (what tugd imports before it
starts): its RSS/PSS/Private_Dirty growth, its module count, tracemalloc's figure and
``-X importtime``'s total.

PSS splits every shared page among the processes that map it: tugd shares libpython and the
extension modules with every shim and the template, so its PSS falls as containers start even
when nothing of tugd changed. Private_Dirty (tugd's own heap, its writes) is the figure that
belongs to tugd alone; RSS counts every page it maps once.

Prints a Markdown table (medians over the rounds) to stdout, progress to stderr. Everything it
starts is removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIELDS = ("Rss", "Pss", "Private_Dirty")

IMPORT_PROBE = r"""
import sys, tracemalloc, time
def roll():
    out = {}
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            p = line.split()
            if len(p) == 3 and p[2] == "kB":
                out[p[0].rstrip(":")] = int(p[1])
    return out
before = roll()
n0 = len(sys.modules)
if sys.argv[1] == "trace":
    tracemalloc.start()
import supervisor.app, supervisor.__main__
traced = tracemalloc.get_traced_memory()[0] if sys.argv[1] == "trace" else 0
after = roll()
import json
print(json.dumps({"modules": len(sys.modules), "modules_added": len(sys.modules) - n0,
    "traced_kb": traced // 1024,
    **{k + "_kb": after[k] - before[k] for k in ("Rss", "Pss", "Private_Dirty")}}))
"""


def note(msg: str) -> None:
    print(f"[tugd_memory {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def smaps_rollup(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                out[parts[0].rstrip(":")] = int(parts[1])
    return out


def short_tempdir() -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    while True:
        name = "/tmp/tm" + "".join(secrets.choice(alphabet) for _ in range(4))
        try:
            os.mkdir(name, 0o700)
        except FileExistsError:
            continue
        return name


def git_head(tree: str) -> str:
    cp = subprocess.run(["git", "-C", tree, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return cp.stdout.strip() or "?"


class Tugd:
    def __init__(self, tree: str, base: str) -> None:
        self.tree = tree
        self.bin = os.path.join(tree, ".venv", "bin")
        self.base = base
        self.state = os.path.join(base, "s")
        self.socket = os.path.join(self.state, "tugd.sock")
        self.log_path = os.path.join(base, "tugd.log")
        self.proc: subprocess.Popen[bytes] | None = None

    def tug(self, *args: str) -> str:
        cp = subprocess.run(
            [os.path.join(self.bin, "tug"), "--socket", self.socket, *args], capture_output=True, timeout=300
        )
        if cp.returncode != 0:
            raise RuntimeError(f"tug {' '.join(args[:2])}: {cp.stderr.decode(errors='replace')[-400:]}")
        return cp.stdout.decode()

    def start(self) -> None:
        os.makedirs(self.base, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        argv = [os.path.join(self.bin, "tugd"), "--root", os.path.join(self.base, "r"), "--state", self.state]
        argv += ["--metrics-address", "127.0.0.1:0", "--default-network", "none"]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tugd exited with {self.proc.returncode}; see {self.log_path}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"tugd did not answer in 60 s; see {self.log_path}")
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                try:
                    probe.connect(self.socket)
                except OSError:
                    time.sleep(0.02)
                    continue
            try:
                self.tug("info")
                return
            except RuntimeError:
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def one_round(tree: str, base: str, tar: str, n: int, settle: float) -> dict[str, float]:
    d = Tugd(tree, base)
    res: dict[str, float] = {}
    try:
        d.start()
        assert d.proc is not None
        d.tug("import", tar, "busybox")
        time.sleep(settle)
        for k, v in smaps_rollup(d.proc.pid).items():
            if k in FIELDS:
                res["idle_" + k] = v
        cids = [d.tug("run", "-d", "busybox", "sleep", "1000").strip() for _ in range(n)]
        time.sleep(settle)
        for k, v in smaps_rollup(d.proc.pid).items():
            if k in FIELDS:
                res["run_" + k] = v
        d.tug("rm", "-f", *cids)
        left = d.tug("ps", "-a", "-q", "--no-trunc").split()
        if left:
            d.tug("rm", "-f", *left)
    finally:
        d.stop()
    py = os.path.join(tree, ".venv", "bin", "python")
    for mode in ("plain", "trace"):
        cp = subprocess.run([py, "-c", IMPORT_PROBE, mode], capture_output=True, text=True, cwd="/")
        if cp.returncode != 0:
            raise RuntimeError(cp.stderr[-400:])
        got = json.loads(cp.stdout)
        if mode == "plain":
            res.update({"imp_" + k: float(v) for k, v in got.items() if k != "traced_kb"})
        else:
            res["imp_traced_kb"] = float(got["traced_kb"])
    argv = [py, "-X", "importtime", "-c", "import supervisor.app"]
    cp = subprocess.run(argv, capture_output=True, text=True, cwd="/")
    total = 0
    for line in cp.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[2].strip() == "supervisor.app":
            total = int(parts[1].split(":")[-1])
    res["imp_cumulative_us"] = float(total)
    return res


def cleanup(base: str) -> None:
    time.sleep(0.3)
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if base in cmd:
            note(f"left behind, killed: {name} {cmd[:100]}")
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(name), signal.SIGKILL)
    with open("/proc/self/mounts") as f:
        mounts = [line.split()[1] for line in f if line.split()[1].startswith(base)]
    for m in reversed(mounts):
        note(f"mount left behind, unmounted: {m}")
        subprocess.run(["umount", "-l", m], check=False)
    shutil.rmtree(base, ignore_errors=True)


ROWS = [
    ("idle_Rss", "tugd RSS, idle (kB)"),
    ("idle_Pss", "tugd PSS, idle (kB)"),
    ("idle_Private_Dirty", "tugd Private_Dirty, idle (kB)"),
    ("run_Rss", "tugd RSS, N running (kB)"),
    ("run_Pss", "tugd PSS, N running (kB)"),
    ("run_Private_Dirty", "tugd Private_Dirty, N running (kB)"),
    ("imp_modules", "modules after `import supervisor.app`"),
    ("imp_Rss_kb", "import: RSS growth (kB)"),
    ("imp_Private_Dirty_kb", "import: Private_Dirty growth (kB)"),
    ("imp_traced_kb", "import: tracemalloc (kB)"),
    ("imp_cumulative_us", "import: `-X importtime` cumulative (us)"),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("trees", nargs="+")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--containers", type=int, default=20)
    ap.add_argument("--settle", type=float, default=1.0)
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/tugd_memory.py: runs containers: needs root", file=sys.stderr)
        return 2
    trees = [os.path.abspath(t) for t in args.trees]
    base = short_tempdir()
    results: dict[str, list[dict[str, float]]] = {t: [] for t in trees}
    try:
        tar = os.path.join(base, "busybox.tar")
        script = os.path.join(REPO, "scripts", "make_busybox_rootfs.py")
        subprocess.run([sys.executable, script, tar], check=True, capture_output=True)
        for r in range(args.rounds):
            order = trees[r % len(trees) :] + trees[: r % len(trees)]
            for i, tree in enumerate(order):
                note(f"round {r + 1}/{args.rounds}: {tree}")
                got = one_round(tree, os.path.join(base, f"{r}{i}"), tar, args.containers, args.settle)
                results[tree].append(got)
                note("  " + ", ".join(f"{k}={v:.0f}" for k, v in got.items()))
    finally:
        cleanup(base)
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"{args.rounds} rounds, {args.containers} containers, {when}, load at the end {load}")
    print()
    print("| figure (median) | " + " | ".join(f"{os.path.basename(t)} ({git_head(t)})" for t in trees) + " |")
    print("|---|" + "---:|" * len(trees))
    for key, label in ROWS:
        cells = []
        for t in trees:
            vals = [x[key] for x in results[t] if key in x]
            cells.append(f"{statistics.median(vals):.0f}" if vals else "-")
        print(f"| {label.replace('N running', f'{args.containers} running')} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
