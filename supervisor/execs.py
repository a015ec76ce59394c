"""``container.exec``: a process run in a running container, proxied to the container's shim.

The shim runs and reaps the process (``task.exec``); tugd checks the container's state, resolves
the user in the container's own /etc/passwd, and passes the stream through: ``exec.started`` and
``exec.output`` notifications come back as ``container.exec.started`` and
``container.exec.output``. The exec's stdin is fed with ``container.exec.stdin`` and closed with
``container.exec.close_stdin``, forwarded on the same shim connection, in order.
"""

from __future__ import annotations

import base64
import binascii
import os
import uuid
from typing import Any

from tugwire import jsonrpc
from tugwire.errors import FailedPrecondition, InvalidArgument, NotFound
from tugwire.shimapi import ExecParams

from . import shims, spec
from .containers import EXITED, RUNNING, Containers


class Execs:
    """The exec methods of tugd, and the shim connections of the running execs."""

    def __init__(self, containers: Containers) -> None:
        self.c = containers
        self._shims: dict[str, shims.ExecSession] = {}  # exec id -> its session with the shim

    def __repr__(self) -> str:
        return f"<Execs with_stdin={len(self._shims)}>"

    def register(self, d: jsonrpc.Dispatcher) -> None:
        """Add ``container.exec``, ``container.exec.stdin`` and ``container.exec.close_stdin``."""
        d.add("container.exec", self.exec)
        # Accepted once forwarded: the stdin of one exec goes to the shim in the order it came.
        d.add("container.exec.stdin", self.stdin, accept_late=True)
        d.add("container.exec.close_stdin", self.close_stdin, accept_late=True)
        d.add("container.exec.resize", self.resize, accept_late=True)

    async def exec(self, call: jsonrpc.Call) -> dict[str, Any]:
        """Run ``cmd`` in running container ``id``; see docs/api.md. Errors: ``not_found``,
        ``failed_precondition`` (not running, or paused), ``invalid_argument``."""
        p = call.params
        rec = self.c.get(p.raw.get("id"))
        cmd = p.list_of_str("cmd")
        if not cmd:
            raise InvalidArgument("exec needs a command", field="cmd")
        env = p.list_of_str("env")
        for item in env:
            if "=" not in item or item.startswith("="):
                raise InvalidArgument(f"bad environment variable {item!r}: want KEY=VALUE", field="env")
        workdir = p.string("workdir")
        if workdir is not None and not os.path.isabs(workdir):
            raise InvalidArgument(f"the working directory must be absolute: {workdir!r}", field="workdir")
        if rec.state != RUNNING:
            raise FailedPrecondition(
                f"cannot exec in container {rec.name}: container is {rec.state}", state=rec.state
            )
        resolved: dict[str, Any] | None = None
        user = p.string("user")
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
            stdin=p.boolean("stdin"),
            detach=p.boolean("detach"),
            tty=p.boolean("tty") and not p.boolean("detach"),
            rows=p.integer("rows", 24),
            cols=p.integer("cols", 80),
        )
        try:
            async with self.c.shim(rec.id).exec(params) as session:
                self._shims[eid] = session
                async for note in session:
                    method = "container.exec.output" if "stream" in note else "container.exec.started"
                    note.pop("request", None)
                    await call.notify(method, note)
                result = await session.result()
        except FailedPrecondition as exc:
            raise FailedPrecondition(
                f"cannot exec in container {rec.name}: it is not running", state=EXITED
            ) from exc
        finally:
            self._shims.pop(eid, None)
        return result

    def _shim(self, call: jsonrpc.Call) -> shims.ExecSession:
        eid = call.params.string("exec_id", required=True)
        session = self._shims.get(eid)
        if session is None:
            raise NotFound(f"no running exec {eid!r}")
        return session

    async def stdin(self, call: jsonrpc.Call) -> dict[str, Any]:
        """Forward ``data`` (base64) to the stdin of exec ``exec_id``."""
        session = self._shim(call)
        data = call.params.string("data", "")
        try:
            base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidArgument(f"data is not base64: {exc}", field="data") from exc
        await session.stdin(data)
        return {}

    async def resize(self, call: jsonrpc.Call) -> dict[str, Any]:
        """Set the window size (``rows``, ``cols``) of exec ``exec_id``'s terminal."""
        session = self._shim(call)
        rows, cols = call.params.integer("rows", 24), call.params.integer("cols", 80)
        await session.resize(rows, cols)
        return {}

    async def close_stdin(self, call: jsonrpc.Call) -> dict[str, Any]:
        """Close the stdin of exec ``exec_id`` after the data sent before."""
        await self._shim(call).close_stdin()
        return {}
