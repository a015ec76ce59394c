"""The init process of a task and the state machine that refuses illegal verbs."""

from __future__ import annotations

import enum
import os
import signal as signals

from tugwire.errors import FailedPrecondition
from tugwire.shimapi import ExitRecord

__all__ = ["ExitRecord", "State", "check", "oom_kills", "pid_alive", "signal_name"]


class State(enum.Enum):
    CREATING = "creating"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"
    DELETED = "deleted"


_ALLOWED = {
    "kill": {State.RUNNING, State.PAUSED},  # a paused task takes SIGKILL (then it is thawed)
    "delete": {State.STOPPED, State.RUNNING, State.PAUSED},  # a live task only with force
    "pause": {State.RUNNING},
    "resume": {State.PAUSED},
    "update": {State.RUNNING, State.PAUSED},
    "top": {State.RUNNING, State.PAUSED},
}


def check(state: State, verb: str) -> None:
    if state not in _ALLOWED[verb]:
        raise FailedPrecondition(f"cannot {verb}: task is {state.value}", state=state.value)


def signal_name(num: int | None) -> str | None:
    if num is None:
        return None
    try:
        return signals.Signals(num).name
    except ValueError:
        return f"SIG{num}"


def oom_kills(cgroup_path: str | None) -> int:
    """The cgroup's OOM-kill counter (v1 ``memory.oom_control``, v2 ``memory.events``)."""
    if not cgroup_path:
        return 0
    rel = cgroup_path.lstrip("/")
    for path, key in (
        (f"/sys/fs/cgroup/memory/{rel}/memory.oom_control", "oom_kill"),
        (f"/sys/fs/cgroup/{rel}/memory.events", "oom_kill"),
    ):
        try:
            with open(path) as f:
                for line in f:
                    name, _, value = line.partition(" ")
                    if name == key:
                        return int(value)
        except (FileNotFoundError, NotADirectoryError, ValueError):
            continue
    return 0


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
