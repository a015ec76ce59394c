"""Execs: processes run in a running container, proxied to the container's shim, and their
records (``exec.create`` / ``exec.start`` / ``exec.inspect``; ``container.exec`` is both at once).

The shim runs and reaps the process (``task.exec``, a raw stream); tugd checks the container's
state, resolves the user in the container's own /etc/passwd, and relays the shim's frames to a
sink as they come, not looked at: the control frame ``{"started": {exec_id, pid}}``, then stdout
and stderr frames of the exec's bytes (the JSON-RPC door sends them on as frames of a raw
``container.exec``, or as its ``container.exec.started`` and ``container.exec.output``
notifications). The exec's stdin is fed with :meth:`Execs.stdin` and closed with
:meth:`Execs.close_stdin`, forwarded as frames on the same shim stream, in order.

Each exec has a record (:class:`ExecRecord`: its command, whether it runs, its pid and exit
code), kept in memory for the last :data:`KEEP` finished ones, and the container events docker
sends: ``exec_create: CMD``, ``exec_start: CMD`` and ``exec_die`` (with ``execID`` and
``exitCode``). A detached exec is run by tugd itself (in the container's tasks, its output
drained and dropped) so that its exit code is known too.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

from tugwire import frames
from tugwire.errors import FailedPrecondition, InvalidArgument, NotFound, TugError
from tugwire.shimapi import ExecParams
from tugwire.timefmt import rfc3339

from . import shims, spec
from .containers import EXITED, RUNNING, Containers, health
from .store import ContainerRecord

log = logging.getLogger("tugboat.execs")

START_GRACE = 30.0  # after an exec's timeout, how long its start may still take before it is killed
KEEP = 1000  # finished exec records kept for inspect (docker keeps them until the container goes)

ExecSink = Callable[[int, bytes], Awaitable[None]]
"""Receives each frame of an exec (:mod:`tugwire.frames`): ``CONTROL`` with the JSON of
``{"started": {exec_id, pid}}`` once it runs, then ``STDOUT`` and ``STDERR`` with its bytes."""


@dataclass(frozen=True)
class ExecRequest:
    """``exec.create`` (and ``container.exec``): run ``cmd`` in running container ``id``
    (checked by :meth:`Containers.get`). ``stdout``/``stderr`` say which outputs the one who
    starts it wants (recorded for inspect, as docker's ``AttachStdout``)."""

    id: Any
    cmd: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)
    workdir: str | None = None
    user: str | None = None
    stdin: bool = False
    detach: bool = False
    tty: bool = False
    rows: int = 24
    cols: int = 80
    stdout: bool = True
    stderr: bool = True
    timeout: float | None = None  # seconds; then the process is killed and the result says so


@dataclass
class ExecRecord:
    """One exec: its config, then its process (``running``, ``pid``) and its end
    (``exit_code``, ``signal``, ``error`` when it could not start)."""

    id: str
    container_id: str
    request: ExecRequest
    created_at: str
    started: bool = False
    running: bool = False
    pid: int = 0
    exit_code: int | None = None
    signal: int | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The record as ``exec.inspect`` returns it (docs/api.md)."""
        r = self.request
        return {
            "id": self.id,
            "container_id": self.container_id,
            "cmd": list(r.cmd),
            "env": list(r.env),
            "workdir": r.workdir,
            "user": r.user,
            "tty": r.tty,
            "stdin": r.stdin,
            "stdout": r.stdout,
            "stderr": r.stderr,
            "created_at": self.created_at,
            "started": self.started,
            "running": self.running,
            "pid": self.pid,
            "exit_code": self.exit_code,
            "signal": self.signal,
            **({"error": self.error} if self.error else {}),
        }


async def _drop(kind: int, data: bytes) -> None:
    """The sink of a detached exec: its output goes nowhere (as docker's ``exec -d``)."""


class Execs:
    """The exec verbs of tugd, the exec records, and the shim connections of the running execs."""

    def __init__(self, containers: Containers) -> None:
        self.c = containers
        self._shims: dict[str, shims.ExecSession] = {}  # exec id -> its session with the shim
        self._records: dict[str, ExecRecord] = {}  # exec id -> record, oldest first

    def __repr__(self) -> str:
        return f"<Execs records={len(self._records)} with_stdin={len(self._shims)}>"

    # ---------------------------------------------------------------------------- records

    def create(self, req: ExecRequest) -> ExecRecord:
        """Check ``req`` and record an exec of it in running container ``req.id``, not started.
        Errors: ``not_found``, ``failed_precondition`` (not running, or paused),
        ``invalid_argument``."""
        rec = self.c.get(req.id)
        if not req.cmd:
            raise InvalidArgument("exec needs a command", field="cmd")
        for item in req.env:
            if "=" not in item or item.startswith("="):
                raise InvalidArgument(f"bad environment variable {item!r}: want KEY=VALUE", field="env")
        if req.workdir is not None and not os.path.isabs(req.workdir):
            raise InvalidArgument(f"the working directory must be absolute: {req.workdir!r}", field="workdir")
        if req.timeout is not None and not req.timeout > 0:
            raise InvalidArgument("timeout must be positive", field="timeout")
        if req.timeout is not None and req.detach:
            raise InvalidArgument("a detached exec has no timeout", field="timeout")
        if rec.run.state != RUNNING:
            raise FailedPrecondition(
                f"cannot exec in container {rec.name}: container is {rec.run.state}", state=rec.run.state
            )
        ex = ExecRecord(id=secrets.token_hex(32), container_id=rec.id, request=req, created_at=rfc3339())
        self._records[ex.id] = ex
        self._trim()
        self.c.publish(f"exec_create: {' '.join(req.cmd)}", rec, execID=ex.id)
        return ex

    def _trim(self) -> None:
        """Forget the oldest finished records beyond :data:`KEEP` (never a running one)."""
        excess = len(self._records) - KEEP
        if excess <= 0:
            return
        for eid in [e.id for e in self._records.values() if not e.running][:excess]:
            del self._records[eid]

    def inspect(self, eid: Any) -> ExecRecord:
        """The record of exec ``eid`` (NotFound once forgotten, or once its container is gone,
        as docker's)."""
        ex = self._records.get(eid) if isinstance(eid, str) else None
        if ex is not None and not ex.running and self.c.find(ex.container_id) is None:
            del self._records[ex.id]
            ex = None
        if ex is None:
            raise NotFound(f"no such exec: {eid}")
        return ex

    # ------------------------------------------------------------------------------- runs

    async def exec(self, req: ExecRequest, sink: ExecSink) -> dict[str, Any]:
        """Create and start an exec of ``req`` at once (``container.exec``): see :meth:`start`."""
        ex = self.create(req)
        return await self._start(ex, self.c.get(ex.container_id), sink, req.detach, req.rows, req.cols)

    async def start(
        self,
        eid: Any,
        sink: ExecSink,
        *,
        detach: bool | None = None,
        rows: int | None = None,
        cols: int | None = None,
    ) -> dict[str, Any]:
        """Run created exec ``eid``, each note of the shim to ``sink``; returns the shim's result
        (``exit_code``, ``signal``, and ``error`` if runc could not start it). With ``detach``
        (default: the request's) it returns ``{exec_id, pid}`` once the process runs, and tugd
        runs it to its end, its output dropped. Errors: ``not_found``, ``failed_precondition``
        (started before; the container is not running, or paused), ``invalid_argument``."""
        ex = self._records.get(eid) if isinstance(eid, str) else None
        rec = self.c.find(ex.container_id) if ex is not None else None
        if ex is None or rec is None:
            raise NotFound(f"no such exec: {eid}")
        if ex.started:
            raise FailedPrecondition(f"exec {ex.id} has already been started")
        return await self._start(ex, rec, sink, detach, rows, cols)

    async def _start(
        self,
        ex: ExecRecord,
        rec: ContainerRecord,
        sink: ExecSink,
        detach: bool | None,
        rows: int | None,
        cols: int | None,
    ) -> dict[str, Any]:
        req = ex.request
        if rec.run.state != RUNNING:
            raise FailedPrecondition(
                f"cannot exec in container {rec.name}: container is {rec.run.state}", state=rec.run.state
            )
        resolved: dict[str, Any] | None = None
        if req.user:
            uid, gid, extra = spec.resolve_user(req.user, [self.c.rootfs(rec.id)])
            resolved = {"uid": uid, "gid": gid, **({"additionalGids": extra} if extra else {})}
        detached = req.detach if detach is None else detach
        params = ExecParams(
            args=list(req.cmd),
            exec_id=ex.id,
            env=list(req.env),
            cwd=req.workdir,
            user=resolved,
            stdin=req.stdin and not detached,
            detach=False,  # tugd drains a detached one itself: its exit code is then known
            tty=req.tty and not detached,
            rows=req.rows if rows is None else rows,
            cols=req.cols if cols is None else cols,
        )
        ex.started = True
        self.c.publish(f"exec_start: {' '.join(req.cmd)}", rec, execID=ex.id)
        if not detached:
            return await self._run(ex, rec, params, sink, None)
        running = anyio.Event()
        failure: list[Exception] = []

        async def run() -> None:
            try:
                await self._run(ex, rec, params, _drop, running)
            except Exception as exc:  # reported to the starter if it had not started yet
                failure.append(exc)
                if running.is_set():
                    log.warning("detached exec %s in %s: %s", ex.id[:12], rec.id[:12], exc)
            finally:
                running.set()

        self.c.spawn(rec.id, run)
        await running.wait()
        if failure and not ex.pid:
            raise failure[0]
        if ex.error is not None:
            return {"exec_id": ex.id, "exit_code": ex.exit_code, "signal": None, "error": ex.error}
        return {"exec_id": ex.id, "pid": ex.pid}

    async def _run(
        self,
        ex: ExecRecord,
        rec: ContainerRecord,
        params: ExecParams,
        sink: ExecSink,
        running: anyio.Event | None,
    ) -> dict[str, Any]:
        """The shim's exec of ``ex`` in container ``rec``: its notes to ``sink``, its end in the
        record, then the ``exec_die`` event."""
        try:
            async with self.c.shim(ex.container_id).exec(params) as session:
                self._shims[ex.id] = session
                timeout = ex.request.timeout
                with anyio.move_on_after(timeout if timeout is not None else math.inf) as deadline:
                    async for kind, data in session:
                        if kind == frames.CONTROL and (pid := shims.started_pid(data)):
                            ex.pid, ex.running = pid, True
                            if running is not None:
                                running.set()
                        await sink(kind, data)
                    result = session.result or {}
                if deadline.cancelled_caught:
                    # Out of time: killed (the shim reaps it); the caller is told, and no exit code
                    # is made up. Not started yet (runc exec is slow under load): wait for its pid.
                    if not ex.pid:
                        with anyio.move_on_after(START_GRACE):
                            async for kind, data in session:
                                if kind == frames.CONTROL and (pid := shims.started_pid(data)):
                                    ex.pid = pid
                                    break
                    health.kill_exec(rec.id, ex.pid)
                    result = {"exec_id": ex.id, "exit_code": None, "timed_out": True}
        except FailedPrecondition as exc:
            raise FailedPrecondition(
                f"cannot exec in container {rec.name}: it is not running", state=EXITED
            ) from exc
        except TugError as exc:  # the runtime failed it: docker's 126
            ex.exit_code, ex.error = 126, exc.message
            raise
        finally:
            self._shims.pop(ex.id, None)
            ex.running = False
        code = result.get("exit_code")
        ex.exit_code = int(code) if code is not None else None
        ex.signal = result.get("signal")
        ex.error = result.get("error") or None
        self._trim()
        self.c.publish("exec_die", rec, execID=ex.id, exit_code=ex.exit_code)
        return result

    # --------------------------------------------------------------------- input of a run

    def _shim(self, eid: str) -> shims.ExecSession:
        session = self._shims.get(eid)
        if session is None:
            raise NotFound(f"no running exec {eid!r}")
        return session

    async def stdin(self, eid: str, data: bytes) -> None:
        """Forward ``data`` to the stdin of exec ``eid``."""
        await self._shim(eid).stdin(data)

    async def resize(self, eid: str, rows: int, cols: int) -> None:
        """Set the window size of exec ``eid``'s terminal."""
        await self._shim(eid).resize(rows, cols)

    async def close_stdin(self, eid: str) -> None:
        """Close the stdin of exec ``eid`` after the data sent before."""
        await self._shim(eid).close_stdin()
