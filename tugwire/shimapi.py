"""The shim contract, in one place for both sides: tugd (``supervisor/shims.py``) and the shim
(``shimd/``).

- the files of a shim's state directory (its socket, pid file, exit record, ...);
- the shim config: what tugd hands a new shim (:class:`ShimConfig`, one JSON line);
- the launch reply: ``{pid, shim_pid, socket}`` once the container runs (:class:`LaunchReply`);
- the exit record: ``exit.json``, written once by the shim, read by tugd (:class:`ExitRecord`);
- the JSON-RPC methods on the shim's socket (the ``TASK_*`` names), their
  parameters and their results (``*Params`` and the records below).

Kept cheap to import (stdlib ``dataclasses`` and ``json``, :mod:`tugwire.errors` and
:mod:`tugwire.crilog`, which the shim imports anyway): every
shim imports it, and every import costs each shim memory.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from . import crilog
from .errors import InvalidArgument

# ------------------------------------------------------------------------------ the state dir

SOCKET = "shim.sock"  # the shim's JSON-RPC socket
PID_FILE = "shim.pid"  # the shim's pid (written by its parent at birth, and by itself)
EXIT_FILE = "exit.json"  # the exit record (:class:`ExitRecord`), until the task is deleted
INIT_PID_FILE = "init.pid"  # PID 1's pid, as runc wrote it
RUNC_LOG = "runc.log"
SHIM_LOG = "shim.log"

DEFAULT_LOG_MAX_SIZE = crilog.DEFAULT_MAX_SIZE
DEFAULT_LOG_MAX_FILES = crilog.DEFAULT_MAX_FILES
DEFAULT_RUNTIME_TIMEOUT = 60.0  # no runc call may hang the shim for ever

# ------------------------------------------------------------------------------ the methods

TASK_STATE = "task.state"  # -> TaskState
TASK_WAIT = "task.wait"  # -> ExitRecord, once PID 1 exited and its output is on disk
TASK_KILL = "task.kill"  # KillParams -> {}
TASK_DELETE = "task.delete"  # DeleteParams -> {"exit": ExitRecord | None}; the shim then exits
TASK_LOGS = "task.logs"  # LogsParams; streams LOGS_DATA, or raw frames; -> {"dropped_bytes": int}
TASK_METRICS = "task.metrics"  # -> {"text": Prometheus text}
TASK_PAUSE = "task.pause"  # -> {}
TASK_RESUME = "task.resume"  # -> {}
TASK_UPDATE = "task.update"  # UpdateParams -> {}
TASK_TOP = "task.top"  # -> {titles, processes}
TASK_STATS = "task.stats"  # -> the cgroup's figures as JSON
TASK_REOPEN_LOG = "task.reopen_log"  # -> {}: the log file opened again at its path (kubelet renamed it)
# A raw stream only: the client's stdin frames (empty: close) and control resize frames are PID
# 1's input; at the client's half-close the end frame {} (or the first dropped input's error).
TASK_ATTACH = "task.attach"
# ExecParams, a raw stream only: control {"started": {exec_id, pid}}, stdout/stderr frames, the
# end frame {exit_code, ...}; the client's stdin and control (resize) frames are the exec's input.
TASK_EXEC = "task.exec"

# Notifications from the shim.
LOGS_DATA = "logs.data"  # {"data": base64 of whole CRI records}


def _flat(record: Any) -> dict[str, Any]:
    """The fields of a flat record (every value a str, number, bool or None) as a new dict: what
    ``dataclasses.asdict`` gives for these, without its recursion and ``copy.deepcopy``, which
    would run a dozen more functions in every shim, each costing it the template's pages that
    hold them (see "Where a shim's memory goes" in docs/design.md)."""
    return dict(record.__dict__)


def path(directory: str, name: str) -> str:
    """A file of a shim's state directory."""
    return os.path.join(directory, name)


# ------------------------------------------------------------------------------ the config


@dataclass(frozen=True)
class ShimConfig:
    """What tugd hands a new shim: one JSON object (stdin of ``tug-shim start``, or a line to
    the template's socket)."""

    id: str
    bundle: str
    dir: str
    runtime: str
    runtime_root: str
    log_path: str
    log_max_size: int = DEFAULT_LOG_MAX_SIZE
    log_max_files: int = DEFAULT_LOG_MAX_FILES
    cgroup_path: str | None = None
    requested_at: float = 0.0  # time.monotonic() when tugd asked for this shim (for the log)
    name: str = ""  # the container's name and image: labels of its metrics
    image: str = ""
    metrics_address: str = ""  # HOST:PORT of an HTTP listener for this container's metrics, if asked
    tty: bool = False  # PID 1 on a terminal whose master the shim holds (see shimd.console)
    stdin: bool = False  # PID 1's stdin a pipe the shim holds, else /dev/null
    runtime_timeout: float = DEFAULT_RUNTIME_TIMEOUT  # the deadline of each runc call
    backend: str = "asyncio"  # the anyio backend the shim runs on (tugd's own)

    def to_json(self) -> dict[str, Any]:
        """The config as the shim reads it."""
        return _flat(self)

    @classmethod
    def from_json(cls, obj: Any) -> ShimConfig:
        """Parse and check a config: InvalidArgument if a field is missing, of the wrong type, or
        a path is not absolute."""
        if not isinstance(obj, dict):
            raise InvalidArgument("shim config must be an object")
        try:
            cfg = cls(
                id=str(obj["id"]),
                bundle=str(obj["bundle"]),
                dir=str(obj["dir"]),
                runtime=str(obj["runtime"]),
                runtime_root=str(obj["runtime_root"]),
                log_path=str(obj["log_path"]),
                log_max_size=int(obj.get("log_max_size", DEFAULT_LOG_MAX_SIZE)),
                log_max_files=int(obj.get("log_max_files", DEFAULT_LOG_MAX_FILES)),
                cgroup_path=obj.get("cgroup_path"),
                requested_at=float(obj.get("requested_at", 0.0)),
                name=str(obj.get("name") or ""),
                image=str(obj.get("image") or ""),
                metrics_address=str(obj.get("metrics_address") or ""),
                tty=bool(obj.get("tty", False)),
                stdin=bool(obj.get("stdin", False)),
                runtime_timeout=float(obj.get("runtime_timeout") or DEFAULT_RUNTIME_TIMEOUT),
                backend=str(obj.get("backend") or "asyncio"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidArgument(f"bad shim config: {exc}") from exc
        for p in (cfg.bundle, cfg.dir, cfg.runtime_root, cfg.log_path):
            if not os.path.isabs(p):
                raise InvalidArgument(f"shim config paths must be absolute: {p!r}")
        if cfg.backend not in ("asyncio", "trio"):
            raise InvalidArgument(f"bad shim config: unknown backend {cfg.backend!r}")
        return cfg

    def path(self, name: str) -> str:
        """A file of this shim's state directory."""
        return os.path.join(self.dir, name)


@dataclass(frozen=True)
class LaunchReply:
    """The shim's answer once its container runs."""

    pid: int  # PID 1 of the container
    shim_pid: int
    socket: str

    def to_json(self) -> dict[str, Any]:
        """The reply as the shim writes it on its notify fd."""
        return _flat(self)

    @classmethod
    def from_json(cls, obj: Any) -> LaunchReply:
        """Parse a reply (InvalidArgument if it is not one)."""
        if not isinstance(obj, dict):
            raise InvalidArgument("a launch reply must be an object")
        try:
            return cls(int(obj.get("pid", 0)), int(obj.get("shim_pid", 0)), str(obj.get("socket", "")))
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(f"bad launch reply: {exc}") from exc


# ------------------------------------------------------------------------------ the exit record


@dataclass(frozen=True)
class ExitRecord:
    """What the shim knows of an exit; written once, atomically, to ``exit.json``."""

    pid: int
    exit_code: int
    signal: str | None
    exited_at: str
    oom_killed: bool
    log_dropped_bytes: int = 0  # output the log could not keep (a full disk), in bytes

    def to_json(self) -> dict[str, Any]:
        """The record as JSON (as the shim answers ``task.wait``)."""
        return _flat(self)

    def encode(self) -> bytes:
        """The bytes of ``exit.json``."""
        return json.dumps(self.to_json()).encode() + b"\n"

    @classmethod
    def from_json(cls, obj: Any) -> ExitRecord:
        """Parse a record; ValueError if it is not one (an exit code is never guessed)."""
        if not isinstance(obj, dict) or not isinstance(obj.get("exit_code"), int):
            raise ValueError(f"not an exit record: {obj!r:.200}")
        try:
            return cls(
                pid=int(obj.get("pid", 0)),
                exit_code=int(obj["exit_code"]),
                signal=None if obj.get("signal") is None else str(obj["signal"]),
                exited_at=str(obj.get("exited_at") or ""),
                oom_killed=bool(obj.get("oom_killed", False)),
                log_dropped_bytes=int(obj.get("log_dropped_bytes") or 0),
            )
        except (TypeError, ValueError) as exc:
            raise ValueError(f"not an exit record: {exc}") from exc

    @classmethod
    def decode(cls, data: bytes) -> ExitRecord:
        """Parse the bytes of ``exit.json``; ValueError if they are not a record."""
        return cls.from_json(json.loads(data))

    @classmethod
    def read(cls, directory: str) -> ExitRecord | None:
        """The record in a shim's state directory, or None if there is none (yet) or it is not
        a whole record."""
        try:
            with open(os.path.join(directory, EXIT_FILE), "rb") as f:
                return cls.decode(f.read())
        except (FileNotFoundError, NotADirectoryError, ValueError):
            return None

    @classmethod
    def optional(cls, obj: Any) -> ExitRecord | None:
        """A record, or None for a missing or malformed one."""
        if obj is None:
            return None
        try:
            return cls.from_json(obj)
        except ValueError:
            return None


# ------------------------------------------------------------------------------ the methods' shapes


@dataclass(frozen=True)
class TaskState:
    """The answer to ``task.state``."""

    id: str
    pid: int
    status: str  # creating, running, paused, stopped, deleted
    shim_pid: int
    exit: ExitRecord | None = None
    log_bytes: dict[str, int] = field(default_factory=dict)
    log_dropped_bytes: int = 0

    @property
    def paused(self) -> bool:
        """Whether the task is paused (frozen)."""
        return self.status == "paused"

    def to_json(self) -> dict[str, Any]:
        """The state as the shim answers it."""
        out = _flat(self)
        out["exit"] = self.exit.to_json() if self.exit is not None else None
        out["log_bytes"] = dict(self.log_bytes)
        return out

    @classmethod
    def from_json(cls, obj: Any) -> TaskState:
        """Parse an answer (InvalidArgument if it is not one)."""
        if not isinstance(obj, dict):
            raise InvalidArgument("a task state must be an object")
        try:
            return cls(
                id=str(obj.get("id", "")),
                pid=int(obj.get("pid", 0)),
                status=str(obj.get("status", "")),
                shim_pid=int(obj.get("shim_pid", 0)),
                exit=ExitRecord.optional(obj.get("exit")),
                log_bytes={str(k): int(v) for k, v in (obj.get("log_bytes") or {}).items()},
                log_dropped_bytes=int(obj.get("log_dropped_bytes") or 0),
            )
        except (TypeError, ValueError, AttributeError) as exc:
            raise InvalidArgument(f"bad task state: {exc}") from exc


@dataclass(frozen=True)
class KillParams:
    """``task.kill``: ``signal`` (a number) to PID 1, or with ``all`` to every process."""

    signal: int
    all: bool = False


@dataclass(frozen=True)
class DeleteParams:
    """``task.delete``: delete the runtime's state; ``force`` kills a running task first."""

    force: bool = False


@dataclass(frozen=True)
class LogsParams:
    """``task.logs``: the whole log, its last ``tail`` records, or those since ``since`` (an RFC
    3339 time as the log writes them); ``follow`` keeps streaming until the task exits;
    ``timestamps`` (raw streams only) puts each line's time before it."""

    follow: bool = False
    tail: int | None = None
    since: str | None = None
    timestamps: bool = False


@dataclass(frozen=True)
class UpdateParams:
    """``task.update`` (``runc update``): ``memory`` in bytes, ``cpu_quota``/``cpu_period`` in µs."""

    memory: int | None = None
    cpu_quota: int | None = None
    cpu_period: int | None = None
    pids_limit: int | None = None
    resources: dict[str, Any] | None = None  # an OCI linux.resources object: ``runc update -r``


@dataclass(frozen=True)
class ExecParams:
    """``task.exec``: run ``args`` in the container (an exec process the shim reaps)."""

    args: list[str]
    exec_id: str | None = None
    env: list[str] = field(default_factory=list)
    cwd: str | None = None
    user: dict[str, Any] | None = None  # {"uid", "gid", "additionalGids"?}, resolved by tugd
    stdin: bool = False
    detach: bool = False
    tty: bool = False
    rows: int = 24
    cols: int = 80


def params(obj: Any) -> dict[str, Any]:
    """The JSON parameters of one of the ``*Params`` records above."""
    return asdict(obj)
