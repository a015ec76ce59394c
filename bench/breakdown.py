"""Where the time of ``tug run --rm busybox true`` goes, phase by phase.

Usage (as root, from the repository; needs ``strace``):

    .venv/bin/python bench/breakdown.py [--rounds 15]

tugd runs under ``strace --seccomp-bpf -f -ttt`` tracing only a handful of syscalls (execve,
mount, umount2, connect, rename, exit_group): with the seccomp filter, every other syscall runs
untraced, so the overhead is a few stops per container, not one per syscall. Each CLI command runs
under the same kind of strace. The timestamps of those syscalls mark the phases:

    CLI start       CLI execve -> its connect() to tugd.sock (interpreter, imports, argument parsing)
    create + start  -> tugd mounts the container's overlay (create RPC: spec, record; start RPC)
    to the shim     -> tugd connects to the shim template
    shim birth      -> the shim execs runc (fork, shim set-up: pipes, log, socket, reaper)
    runc setup      -> runc execs `runc init` (runc run: parse, cgroups, namespaces)
    runc init       -> the container's command is exec'd (mounts, pivot_root, ...: runc create+start)
    container       -> the command exits
    exit report     -> the shim renames exit.json into place (pipes drained, status recorded)
    runc delete     -> `runc delete` starts ... ends (the shim removes runc's state)
    clean-up        -> tugd has unmounted and renamed the container dir away (rm)
    CLI end         -> the CLI exits

It also times, without strace, the same command and raw ``runc run`` of the same rootfs, to show
the totals and the tracing overhead. Prints Markdown to stdout.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import signal
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from run import (
    TUG,
    TUGD,
    Runc,
    build_tar,
    children_of,
    cleanup,
    machine_info,
    note,
    short_tempdir,
)

TRACED = "execve,mount,umount2,connect,rename,exit_group"
STRACE = ["strace", "--seccomp-bpf", "-f", "-ttt", "-e", f"trace={TRACED}", "-e", "signal=none"]
LINE = re.compile(r"^(\d+)\s+(\d+\.\d+)\s+(.*)$")

PHASES = [
    "CLI start",
    "create + start",
    "to the shim",
    "shim birth",
    "runc setup",
    "runc init",
    "container",
    "exit report",
    "to runc delete",
    "runc delete",
    "clean-up",
    "CLI end",
]


def parse(path: str) -> list[tuple[int, float, str]]:
    out = []
    with open(path) as f:
        for line in f:
            m = LINE.match(line)
            if m:
                out.append((int(m.group(1)), float(m.group(2)), m.group(3)))
    return out


def phases(cli: list[tuple[int, float, str]], daemon: list[tuple[int, float, str]], t0: float) -> list[float]:
    ev = sorted([*cli, *daemon], key=lambda e: e[1])
    ev = [e for e in ev if e[1] >= t0]

    def first(pred: object, after: float) -> tuple[int, float, str]:
        for e in ev:
            if e[1] >= after and pred(e):  # type: ignore[operator]
                return e
        raise LookupError(f"no event after {after}")

    cli_exec = first(lambda e: e[2].startswith("execve(") and "/tug" in e[2], t0)
    conn = first(lambda e: e[0] == cli_exec[0] and "connect(" in e[2] and "tugd.sock" in e[2], cli_exec[1])
    mount = first(lambda e: e[2].startswith('mount("overlay"'), conn[1])
    tmpl = first(lambda e: "connect(" in e[2] and "shim-template.sock" in e[2], mount[1])
    runc = first(lambda e: e[2].startswith("execve(") and '"run"' in e[2] and "runc" in e[2], tmpl[1])
    init = first(lambda e: e[2].startswith("execve(") and '"init"' in e[2], runc[1])
    cmd = first(
        lambda e: e[2].startswith("execve(") and "runc" not in e[2] and "/proc/self/exe" not in e[2],
        init[1],
    )
    cmd_exit = first(lambda e: e[0] == cmd[0] and e[2].startswith("+++ exited"), cmd[1])
    exitjson = first(lambda e: e[2].startswith("rename(") and "exit.json" in e[2], cmd_exit[1])
    delete0 = first(lambda e: e[2].startswith("execve(") and '"delete"' in e[2], exitjson[1])
    delete1 = first(lambda e: e[0] == delete0[0] and e[2].startswith("+++ exited"), delete0[1])
    removed = first(lambda e: e[2].startswith("rename(") and "containers/.deleting" in e[2], delete1[1])
    end = first(lambda e: e[0] == cli_exec[0] and e[2].startswith("+++ exited"), removed[1])
    marks = [cli_exec, conn, mount, tmpl, runc, init, cmd, cmd_exit, exitjson, delete0, delete1, removed, end]
    return [(b[1] - a[1]) * 1000 for a, b in itertools.pairwise(marks)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args(argv)
    base = short_tempdir()
    root, state = os.path.join(base, "root"), os.path.join(base, "s")
    sock = os.path.join(state, "tugd.sock")
    trace = os.path.join(base, "tugd.trace")
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    daemon = subprocess.Popen(
        [*STRACE, "-o", trace, TUGD, "--root", root, "--state", state, "--metrics-address", "off",
         "--default-network", "none"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    runc: Runc | None = None
    problems: list[str] = []
    try:
        tar = os.path.join(base, "busybox.tar")
        build_tar(tar)
        deadline = time.monotonic() + 60
        while subprocess.run([TUG, "--socket", sock, "info"], capture_output=True, check=False).returncode:
            if time.monotonic() > deadline:
                raise RuntimeError("tugd did not come up")
            time.sleep(0.1)
        subprocess.run([TUG, "--socket", sock, "import", tar, "busybox"], check=True, capture_output=True)
        runc = Runc(base, tar)
        bundle = runc.bundle("b", ["true"])
        run = [TUG, "--socket", sock, "run", "--rm", "busybox", "true"]
        rows: list[list[float]] = []
        plain_tug: list[float] = []
        plain_runc: list[float] = []
        traced_total: list[float] = []
        for r in range(args.rounds + 2):
            t = time.perf_counter()
            subprocess.run(runc.argv(bundle), check=True, capture_output=True)
            t1 = time.perf_counter()
            subprocess.run(run, check=True, capture_output=True)
            t2 = time.perf_counter()
            cli_trace = os.path.join(base, f"cli{r}.trace")
            t0 = time.time()
            t3 = time.perf_counter()
            subprocess.run([*STRACE, "-o", cli_trace, *run], check=True, capture_output=True)
            t4 = time.perf_counter()
            if r < 2:
                continue  # warm-up
            plain_runc.append((t1 - t) * 1000)
            plain_tug.append((t2 - t1) * 1000)
            traced_total.append((t4 - t3) * 1000)
            time.sleep(0.2)  # let strace write the daemon's lines
            rows.append(phases(parse(cli_trace), parse(trace), t0))
            note(f"round {r - 1}: {sum(rows[-1]):.1f} ms traced")
        med = [statistics.median(col) for col in zip(*rows, strict=True)]
        lines = [
            "## Where the start time goes (`bench/breakdown.py`)",
            "",
            "    .venv/bin/python bench/breakdown.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "",
            *machine_info(),
            "",
            f"Untraced, median of {len(plain_tug)}: `runc run` {statistics.median(plain_runc):.1f} ms, "
            f"`tug run --rm busybox true` {statistics.median(plain_tug):.1f} ms "
            f"({statistics.median(plain_tug) / statistics.median(plain_runc):.2f}x). "
            f"Traced: {statistics.median(traced_total):.1f} ms.",
            "",
            "| phase | median ms (traced) | share |",
            "|---|---|---|",
        ]
        total = sum(med)
        for name, v in zip(PHASES, med, strict=True):
            lines.append(f"| {name} | {v:.1f} | {v / total * 100:.0f} % |")
        lines.append(f"| total | {total:.1f} | |")
        print("\n".join(lines))
    finally:
        for pid, cmd in children_of(daemon.pid):  # tugd, under strace: SIGTERM to tugd itself
            if "tugd" in cmd:
                os.kill(pid, signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        problems = cleanup(base, [], runc)
    for p in problems:
        note(f"cleanup: {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
