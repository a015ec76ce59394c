"""``container.exec``: a process run in a running container, proxied to the container's shim.

The shim runs and reaps the process (``task.exec``, a raw stream); tugd checks the container's
state, resolves the user in the container's own /etc/passwd, and relays the shim's frames to a
sink as they come, not looked at: the control frame ``{"started": {exec_id, pid}}``, then stdout
and stderr frames of the exec's bytes (the JSON-RPC door sends them on as frames of a raw
``container.exec``, or as its ``container.exec.started`` and ``container.exec.output``
notifications). The exec's stdin is fed with :meth:`Execs.stdin` and closed with
:meth:`Execs.close_stdin`, forwarded as frames on the same shim stream, in order.
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

from tugwire import frames
from tugwire.errors import FailedPrecondition, InvalidArgument, NotFound
from tugwire.shimapi import ExecParams

from . import shims, spec
from .containers import EXITED, RUNNING, Containers, health

START_GRACE = 30.0  # after an exec's timeout, how long its start may still take before it is killed

ExecSink = Callable[[int, bytes], Awaitable[None]]
"""Receives each frame of an exec (:mod:`tugwire.frames`): ``CONTROL`` with the JSON of
``{"started": {exec_id, pid}}`` once it runs, then ``STDOUT`` and ``STDERR`` with its bytes."""


@dataclass(frozen=True)
class ExecRequest:
    """``container.exec``: run ``cmd`` in running container ``id`` (checked by
    :meth:`Containers.get`)."""

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
    timeout: float | None = None  # seconds; then the process is killed and the result says so


class Execs:
    """The exec verbs of tugd, and the shim connections of the running execs."""

    def __init__(self, containers: Containers) -> None:
        self.c = containers
        self._shims: dict[str, shims.ExecSession] = {}  # exec id -> its session with the shim

    def __repr__(self) -> str:
        return f"<Execs with_stdin={len(self._shims)}>"

    async def exec(self, req: ExecRequest, sink: ExecSink) -> dict[str, Any]:
        """Run ``req.cmd`` in running container ``req.id``, each frame of the shim to ``sink``;
        returns the shim's result. Errors: ``not_found``, ``failed_precondition`` (not
        running, or paused), ``invalid_argument``."""
        rec = self.c.get(req.id)
        cmd = list(req.cmd)
        if not cmd:
            raise InvalidArgument("exec needs a command", field="cmd")
        env = list(req.env)
        for item in env:
            if "=" not in item or item.startswith("="):
                raise InvalidArgument(f"bad environment variable {item!r}: want KEY=VALUE", field="env")
        workdir = req.workdir
        if workdir is not None and not os.path.isabs(workdir):
            raise InvalidArgument(f"the working directory must be absolute: {workdir!r}", field="workdir")
        if req.timeout is not None and not req.timeout > 0:
            raise InvalidArgument("timeout must be positive", field="timeout")
        if req.timeout is not None and req.detach:
            raise InvalidArgument("a detached exec has no timeout", field="timeout")
        if rec.state != RUNNING:
            raise FailedPrecondition(
                f"cannot exec in container {rec.name}: container is {rec.state}", state=rec.state
            )
        resolved: dict[str, Any] | None = None
        user = req.user
        if user:
            uid, gid, extra = spec.resolve_user(user, [self.c.rootfs(rec.id)])
            resolved = {"uid": uid, "gid": gid, **({"additionalGids": extra} if extra else {})}
        eid = uuid.uuid4().hex
        params = ExecParams(
            args=cmd,
            exec_id=eid,
            env=env,
            cwd=workdir,
            user=resolved,
            stdin=req.stdin,
            detach=req.detach,
            tty=req.tty and not req.detach,
            rows=req.rows,
            cols=req.cols,
        )
        pid = 0
        try:
            async with self.c.shim(rec.id).exec(params) as session:
                self._shims[eid] = session
                with anyio.move_on_after(req.timeout if req.timeout is not None else math.inf) as deadline:
                    async for kind, data in session:
                        if kind == frames.CONTROL:
                            pid = shims.started_pid(data) or pid
                        await sink(kind, data)
                    result = session.result or {}
                if deadline.cancelled_caught:
                    # Out of time: killed (the shim reaps it); the caller is told, and no exit code
                    # is made up. Not started yet (runc exec is slow under load): wait for its pid.
                    if not pid:
                        with anyio.move_on_after(START_GRACE):
                            async for kind, data in session:
                                if kind == frames.CONTROL and (pid := shims.started_pid(data)):
                                    break
                    health.kill_exec(rec.id, pid)
                    return {"exec_id": eid, "exit_code": None, "timed_out": True}
        except FailedPrecondition as exc:
            raise FailedPrecondition(
                f"cannot exec in container {rec.name}: it is not running", state=EXITED
            ) from exc
        finally:
            self._shims.pop(eid, None)
        return result

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
