"""Input to a container's PID 1: ``container.stdin``, ``container.close_stdin``,
``container.resize``, each forwarded to the container's shim, which holds PID 1's terminal (or
its stdin pipe). Output is the log: an attached client follows it (``container.logs`` with
``follow`` and ``tail: 0``), so attaching never replays and never holds the container back.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from tugwire import jsonrpc
from tugwire.errors import FailedPrecondition, InvalidArgument

from .containers import RUNNING, Containers
from .store import ContainerRecord


class Attach:
    """The input methods of tugd."""

    def __init__(self, containers: Containers) -> None:
        self.c = containers

    def __repr__(self) -> str:
        return "<Attach>"

    def register(self, d: jsonrpc.Dispatcher) -> None:
        """Add the methods. Each is accepted only once forwarded: the input from one connection
        reaches the container in the order it was sent."""
        d.add("container.stdin", self.stdin, accept_late=True)
        d.add("container.close_stdin", self.close_stdin, accept_late=True)
        d.add("container.resize", self.resize, accept_late=True)

    def _running(self, call: jsonrpc.Call, what: str) -> ContainerRecord:
        rec = self.c.get(call.params.raw.get("id"))
        if rec.state != RUNNING:
            raise FailedPrecondition(
                f"cannot {what} container {rec.name}: it is {rec.state}", state=rec.state
            )
        return rec

    async def _forward(self, rec: ContainerRecord, request: Awaitable[None]) -> dict[str, Any]:
        try:
            await request
        except FailedPrecondition as exc:
            raise FailedPrecondition(f"container {rec.name}: {exc.message}", state=rec.state) from exc
        return {}

    async def stdin(self, call: jsonrpc.Call) -> dict[str, Any]:
        """Write ``data`` (base64) to the terminal or stdin of running container ``id``."""
        rec = self._running(call, "write to")
        data = call.params.string("data", "")
        return await self._forward(rec, self.c.shim(rec.id).stdin(data))

    async def close_stdin(self, call: jsonrpc.Call) -> dict[str, Any]:
        """Close the stdin of running container ``id`` (created with ``stdin`` and no ``tty``)."""
        rec = self._running(call, "close the stdin of")
        return await self._forward(rec, self.c.shim(rec.id).close_stdin())

    async def resize(self, call: jsonrpc.Call) -> dict[str, Any]:
        """Set the terminal of running container ``id`` to ``rows`` x ``cols``."""
        rec = self._running(call, "resize")
        rows, cols = call.params.integer("rows", 24), call.params.integer("cols", 80)
        if not (0 < rows < 65536 and 0 < cols < 65536):
            raise InvalidArgument(f"bad terminal size {rows}x{cols}", field="rows")
        return await self._forward(rec, self.c.shim(rec.id).resize(rows, cols))
