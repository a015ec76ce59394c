"""Input to a container's PID 1: its stdin, the closing of it, and its terminal's size, each
forwarded to the container's shim, which holds PID 1's terminal (or its stdin pipe). Output is
the log: an attached client follows it (``container.logs`` with ``follow`` and ``tail: 0``), so
attaching never replays and never holds the container back; on a raw stream its input comes as
frames on that same connection (the JSON-RPC door calls these verbs for them).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from tugwire.errors import FailedPrecondition, InvalidArgument

from .containers import RUNNING, Containers
from .store import ContainerRecord


class Attach:
    """The input verbs of tugd (``ref``: a container id or name, checked by
    :meth:`Containers.get`)."""

    def __init__(self, containers: Containers) -> None:
        self.c = containers

    def __repr__(self) -> str:
        return "<Attach>"

    def _running(self, ref: Any, what: str) -> ContainerRecord:
        rec = self.c.get(ref)
        if rec.run.state != RUNNING:
            raise FailedPrecondition(
                f"cannot {what} container {rec.name}: it is {rec.run.state}", state=rec.run.state
            )
        return rec

    async def _forward(self, rec: ContainerRecord, request: Awaitable[None]) -> None:
        try:
            await request
        except FailedPrecondition as exc:
            raise FailedPrecondition(f"container {rec.name}: {exc.message}", state=rec.run.state) from exc

    async def stdin(self, ref: Any, data: str) -> None:
        """Write ``data`` (base64) to the terminal or stdin of running container ``ref``."""
        rec = self._running(ref, "write to")
        await self._forward(rec, self.c.shim(rec.id).stdin(data))

    async def close_stdin(self, ref: Any) -> None:
        """Close the stdin of running container ``ref`` (created with ``stdin`` and no ``tty``)."""
        rec = self._running(ref, "close the stdin of")
        await self._forward(rec, self.c.shim(rec.id).close_stdin())

    async def resize(self, ref: Any, rows: int, cols: int) -> None:
        """Set the terminal of running container ``ref`` to ``rows`` x ``cols``."""
        rec = self._running(ref, "resize")
        if not (0 < rows < 65536 and 0 < cols < 65536):
            raise InvalidArgument(f"bad terminal size {rows}x{cols}", field="rows")
        await self._forward(rec, self.c.shim(rec.id).resize(rows, cols))
