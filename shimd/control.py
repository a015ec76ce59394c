"""What the shim does to a running task besides starting and killing it: pause and resume
(``runc pause``/``resume``, the cgroup freezer), resource updates (``runc update``), the list of
its processes (``top``, from the cgroup's ``cgroup.procs`` and ``/proc``), and its cgroup figures
as JSON (``stats``).

Every verb checks the task's state first (:func:`shimd.process.check`) and changes nothing when
the state forbids it.
"""

from __future__ import annotations

import os
import pwd
import time
from typing import Any

from tugwire.errors import FailedPrecondition, InvalidArgument, TugError

from . import stats
from .process import State, check
from .runc import classify
from .task import Task

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
TOP_TITLES = ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]


async def pause(task: Task) -> None:
    """Freeze the container; FailedPrecondition unless it is running."""
    check(task.state, "pause")
    _check_alive(task, "pause")
    try:
        await task.runc.pause(task.cfg.id)
    except TugError as exc:
        raise classify(exc) from exc
    task.state = State.PAUSED


async def resume(task: Task) -> None:
    """Thaw the container; FailedPrecondition unless it is paused."""
    check(task.state, "resume")
    await task.thaw()


async def update(
    task: Task,
    *,
    memory: int | None,
    cpu_quota: int | None,
    cpu_period: int | None,
    pids_limit: int | None,
    resources: dict[str, Any] | None = None,
) -> None:
    """Change the container's limits through ``runc update``: the single ones, or ``resources``
    (an OCI ``linux.resources`` object) whole."""
    check(task.state, "update")
    _check_alive(task, "update")
    singles = (memory, cpu_quota, cpu_period, pids_limit)
    if resources is None and all(v is None for v in singles):
        raise InvalidArgument(
            "nothing to update: give memory, cpu_quota, cpu_period, pids_limit or resources"
        )
    try:
        await task.runc.update(
            task.cfg.id,
            memory=memory,
            cpu_quota=cpu_quota,
            cpu_period=cpu_period,
            pids_limit=pids_limit,
            resources=resources,
        )
    except TugError as exc:
        raise classify(exc) from exc


def _check_alive(task: Task, verb: str) -> None:
    if task.reaped or task.exited.is_set():
        raise FailedPrecondition(f"cannot {verb}: task is stopped", state="stopped")


def cgroup_pids(cgroup_path: str, root: str = stats.CGROUP_ROOT) -> list[int]:
    """The pids in the container's cgroup: v2 (unified) first, else a v1 hierarchy that holds
    every process (pids, memory, freezer)."""
    rel = cgroup_path.strip("/")
    candidates = [os.path.join(root, rel)]
    candidates += [os.path.join(root, c, rel) for c in ("pids", "memory", "freezer", "unified")]
    for directory in candidates:
        try:
            with open(os.path.join(directory, "cgroup.procs")) as f:
                return sorted(int(line) for line in f if line.strip())
        except (FileNotFoundError, NotADirectoryError, ValueError):
            continue
    return []


def top(task: Task, *, now: float | None = None) -> dict[str, Any]:
    """The container's processes as ``ps -ef`` shows them (host pids): ``{titles, processes}``."""
    check(task.state, "top")
    _check_alive(task, "top")
    if not task.cfg.cgroup_path:
        raise FailedPrecondition("the container has no cgroup")
    boot = _boot_time()
    now = time.time() if now is None else now
    rows = []
    for pid in cgroup_pids(task.cfg.cgroup_path):
        row = process_row(pid, boot, now)
        if row is not None:
            rows.append(row)
    return {"titles": TOP_TITLES, "processes": rows}


def _boot_time() -> float:
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("btime "):
                return float(line.split()[1])
    return 0.0


def process_row(pid: int, boot: float, now: float, proc: str = "/proc") -> list[str] | None:
    """One ``ps -ef`` row for ``pid``; None if it is gone."""
    try:
        with open(f"{proc}/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
        with open(f"{proc}/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
        with open(f"{proc}/{pid}/status") as f:
            status = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm is in parentheses and may itself hold spaces and parentheses: split at the last ')'.
    comm = stat[stat.index("(") + 1 : stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2 :].split()
    ppid = int(fields[1])
    tty_nr = int(fields[4])
    cpu_ticks = int(fields[11]) + int(fields[12])
    start = boot + int(fields[19]) / CLOCK_TICKS
    uid = 0
    for line in status.splitlines():
        if line.startswith("Uid:"):
            uid = int(line.split()[1])
            break
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    cpu_seconds = cpu_ticks / CLOCK_TICKS
    elapsed = max(now - start, 1e-9)
    args = [a.decode(errors="replace") for a in cmdline.split(b"\0") if a]
    return [
        user,
        str(pid),
        str(ppid),
        str(int(cpu_seconds * 100 / elapsed)),
        _stime(start, now),
        _tty(tty_nr),
        _cputime(cpu_seconds),
        " ".join(args) if args else f"[{comm}]",
    ]


def _stime(start: float, now: float) -> str:
    t, n = time.localtime(start), time.localtime(now)
    if (t.tm_year, t.tm_yday) == (n.tm_year, n.tm_yday):
        return time.strftime("%H:%M", t)
    if t.tm_year == n.tm_year:
        return time.strftime("%b%d", t)
    return time.strftime("%Y", t)


def _tty(tty_nr: int) -> str:
    if tty_nr == 0:
        return "?"
    major, minor = (tty_nr >> 8) & 0xFFF, (tty_nr & 0xFF) | ((tty_nr >> 12) & 0xFFF00)
    if major == 136:
        return f"pts/{minor}"
    if major == 4:
        return f"tty{minor}"
    return "?"


def _cputime(seconds: float) -> str:
    total = int(seconds)
    days, rest = divmod(total, 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    text = f"{h:02d}:{m:02d}:{s:02d}"
    return f"{days}-{text}" if days else text


def task_stats(task: Task) -> dict[str, Any]:
    """The cgroup's figures as JSON, with the monotonic time they were read at (the CPU percentage
    is computed by the client from two samples)."""
    live = task.state in (State.RUNNING, State.PAUSED) and not task.reaped and task.pid > 0
    figures = stats.read_cgroup(task.cfg.cgroup_path) if live and task.cfg.cgroup_path else None
    return {
        "read_at": time.monotonic(),
        "online_cpus": os.cpu_count() or 1,
        "running": live,
        "cgroup_version": figures.version if figures else None,
        "cpu_seconds": figures.cpu_seconds if figures else None,
        "memory_usage": figures.memory_usage if figures else None,
        "memory_working_set": figures.memory_working_set if figures else None,
        "memory_limit": figures.memory_limit if figures else None,
        "pids": figures.pids if figures else None,
        **(figures.detail if figures else {}),
        **(stats.read_procs(cgroup_pids(task.cfg.cgroup_path)) if figures and task.cfg.cgroup_path else {}),
    }
