"""Where the time of ``tug run --rm busybox true`` goes, untraced: wall-clock stamps in the code.

Usage (as root, from the repository):

    .venv/bin/python bench/timeline.py [--rounds 15]

``bench/breakdown.py`` times the phases with strace, which slows what it watches (every new
child stops the tracee; runc's threads most of all). This script instead copies the packages to a
temporary directory, inserts one line at each of the points below that appends
``PID TAG TIME`` to a file, and runs a tugd, its shims and the CLI from that copy
(``PYTHONPATH``); the repository itself is not touched. A stamp costs a few microseconds (an
``open`` in append mode and a write). Then ``--rounds`` runs of ``tug run --rm busybox true``
after 3 warm-ups, the driver stamping before it spawns the CLI and after the CLI has exited, and
the median of each phase:

    CLI start         driver spawns ``tug`` -> its ``main()`` runs (interpreter, imports)
    CLI to create     argument parsing, connect, the request reaches ``container.create``
    create            tugd: the spec, the record, the overlay mount
    to start          the answer, the pipelined ``logs``/``wait``/``start`` requests
    to the template   tugd: ``container.start`` until the template has read the shim's config
    shim birth        fork, setsid, fork, close fds: the shim's code begins
    shim set-up       pid file, socket, pipes, log, reaper, anyio loop: ``runc run`` spawned
    runc run          ``runc run --detach`` of the container (create + start, seccomp included)
    start answered    the shim tells the template's caller, tugd answers ``container.start``
    container         ``true`` runs and exits; the shim drains the pipes, writes the exit record
    exit to tugd      the shim answers tugd's ``task.wait``
    removal           tugd records the exit, waits for the log stream's end, the row goes
                      (``runc delete``, unmount, bundle: after, off the critical path)
    CLI end           the CLI gets ``removed``, flushes and exits

Prints Markdown to stdout, progress to stderr. Everything lives under one temporary directory,
removed at the end; the tugd is stopped by its pid.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from run import TUG, TUGD, build_tar, machine_info, note, short_tempdir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def stamp(tag: str, log: str) -> str:
    """One line of Python that appends ``PID TAG TIME`` to ``log`` (tag may use f-string fields)."""
    return (
        f'open({log!r}, "a").write(f"{{__import__(\'os\').getpid()}} {tag} '
        f"{{__import__('time').time():.6f}}\\n\")"
    )


# (file, the statement a stamp goes next to, "before" or "after" it, tag): each statement occurs
# once in its file; the stamp gets the statement's indentation.
_API = "supervisor/api/containers.py"
_EXITS = "supervisor/containers/exits.py"
POINTS = [
    ("shimd/birth.py", "pid = birth(config, conn.fileno(), keep_fds=())", "before", "tpl_got"),
    ("shimd/birth.py", "logging.basicConfig(", "before", "shim_start"),
    ("shimd/runc.py", "offset = self._log_offset()", "before", "runc_{verb}_spawn"),
    ("shimd/runc.py", "code, _ = exit_code(status)", "after", "runc_{verb}_done"),
    ("shimd/server.py", "_notify(notify_fd, shimapi.LaunchReply(", "after", "shim_notified"),
    ("shimd/task.py", "fsutil.write_atomic(self.cfg.path(EXIT_FILE)", "after", "exit_recorded"),
    (_API, "rec = await self.containers.create(create_request(call.params))", "before", "create_begin"),
    (_API, "rec = await self.containers.create(create_request(call.params))", "after", "create_end"),
    (_API, "rec = await self.containers.start(call.params.string(", "before", "start_begin"),
    (_API, "rec = await self.containers.start(call.params.string(", "after", "start_end"),
    (_EXITS, "done = partial(self._handle_exit, cid, record)", "before", "exit_seen"),
    (_EXITS, "live.cancel_tasks()  # what is left of its watcher", "after", "removed"),
    ("supervisor/cli/main.py", "parser = build_parser(argv)", "before", "cli_main"),
    ("supervisor/cli/main.py", "code = main()", "after", "cli_done"),
]


PHASES = [
    ("CLI start", "drv_begin", "cli_main"),
    ("CLI to create", "cli_main", "create_begin"),
    ("create", "create_begin", "create_end"),
    ("to start", "create_end", "start_begin"),
    ("to the template", "start_begin", "tpl_got"),
    ("shim birth", "tpl_got", "shim_start"),
    ("shim set-up", "shim_start", "runc_run_spawn"),
    ("runc run", "runc_run_spawn", "runc_run_done"),
    ("start answered", "runc_run_done", "start_end"),
    ("container", "start_end", "exit_recorded"),
    ("exit to tugd", "exit_recorded", "exit_seen"),
    ("removal", "exit_seen", "removed"),
    ("CLI end", "removed", "drv_end"),
]


def instrumented_copy(base: str, log: str) -> str:
    root = os.path.join(base, "src")
    for pkg in ("tugwire", "shimd", "supervisor"):
        skip = shutil.ignore_patterns("__pycache__")
        shutil.copytree(os.path.join(REPO, pkg), os.path.join(root, pkg), ignore=skip)
    for rel, statement, where, tag in POINTS:
        path = os.path.join(root, rel)
        with open(path) as f:
            lines = f.read().split("\n")
        found = [i for i, line in enumerate(lines) if statement in line]
        if len(found) != 1:
            raise SystemExit(f"bench/timeline.py: the code changed: {statement!r} is not once in {rel}")
        i = found[0]
        indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
        lines.insert(i if where == "before" else i + 1, indent + stamp(tag, log))
        with open(path, "w") as f:
            f.write("\n".join(lines))
    subprocess.run([sys.executable, "-m", "compileall", "-q", root], check=True, stdout=subprocess.DEVNULL)
    return root


def rounds_of(log: str) -> list[dict[str, float]]:
    rounds: list[dict[str, float]] = []
    with open(log) as f:
        for line in f:
            _, tag, t = line.split()
            if tag == "drv_begin":
                rounds.append({})
            if rounds and tag not in rounds[-1]:
                rounds[-1][tag] = float(t)
    return rounds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args(argv)
    base = short_tempdir()
    log = os.path.join(base, "stamps")
    tmp_src = instrumented_copy(base, log)
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    env["PYTHONPATH"] = tmp_src  # before site-packages: the copy's code wins over the repository's
    sock = os.path.join(base, "s", "tugd.sock")
    daemon = subprocess.Popen(
        [TUGD, "--root", os.path.join(base, "root"), "--state", os.path.join(base, "s"),
         "--metrics-address", "off", "--default-network", "none"],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        tar = os.path.join(base, "busybox.tar")
        build_tar(tar)
        tug = [TUG, "--socket", sock]
        deadline = time.monotonic() + 60
        while subprocess.run([*tug, "info"], env=env, capture_output=True, check=False).returncode:
            if time.monotonic() > deadline:
                raise RuntimeError("tugd did not come up")
            time.sleep(0.1)
        subprocess.run([*tug, "import", tar, "busybox"], env=env, check=True, capture_output=True)
        run = [*tug, "run", "--rm", "busybox", "true"]
        for _ in range(3):
            subprocess.run(run, env=env, check=True, capture_output=True)
        with open(log, "w"):
            pass  # the warm-ups' stamps go
        for r in range(args.rounds):
            with open(log, "a") as f:
                f.write(f"{os.getpid()} drv_begin {time.time():.6f}\n")
            subprocess.run(run, env=env, check=True, capture_output=True)
            with open(log, "a") as f:
                f.write(f"{os.getpid()} drv_end {time.time():.6f}\n")
            note(f"round {r + 1}/{args.rounds}")
            time.sleep(0.1)
        complete = [r for r in rounds_of(log) if all(a in r and b in r for _, a, b in PHASES)]
        if not complete:
            raise RuntimeError("no round has every stamp")
        cols = {name: [(r[b] - r[a]) * 1000 for r in complete] for name, a, b in PHASES}
        totals = [(r["drv_end"] - r["drv_begin"]) * 1000 for r in complete]
        lines = [
            "## Where the start time goes, untraced (`bench/timeline.py`)",
            "",
            "    .venv/bin/python bench/timeline.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "",
            *machine_info(),
            "",
            f"{len(complete)} rounds of `tug run --rm busybox true`; whole command, median "
            f"{statistics.median(totals):.1f} ms.",
            "",
            "| phase | median ms | min ms |",
            "|---|---:|---:|",
        ]
        for name, xs in cols.items():
            lines.append(f"| {name} | {statistics.median(xs):.2f} | {min(xs):.2f} |")
        print("\n".join(lines))
    finally:
        daemon.terminate()
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
