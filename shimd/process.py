"""The init process of a task and the state machine that refuses illegal verbs."""

from __future__ import annotations

import enum
import json
import os
import signal as signals
from dataclasses import asdict, dataclass

from tugwire.errors import FailedPrecondition


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


@dataclass(frozen=True)
class ExitRecord:
    """What the shim knows of an exit; written once, atomically, to ``exit.json``."""

    pid: int
    exit_code: int
    signal: str | None
    exited_at: str
    oom_killed: bool
    log_dropped_bytes: int = 0  # output the log could not keep (a full disk), in bytes

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    def encode(self) -> bytes:
        return json.dumps(self.to_json()).encode() + b"\n"

    @classmethod
    def decode(cls, data: bytes) -> ExitRecord:
        obj = json.loads(data)
        return cls(
            pid=int(obj["pid"]),
            exit_code=int(obj["exit_code"]),
            signal=obj.get("signal"),
            exited_at=str(obj["exited_at"]),
            oom_killed=bool(obj.get("oom_killed", False)),
            log_dropped_bytes=int(obj.get("log_dropped_bytes", 0)),
        )


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
