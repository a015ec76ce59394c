"""Input to a container's PID 1: its stdin, the closing of it, and its terminal's size, each
forwarded to the container's shim, which holds PID 1's terminal (or its stdin pipe). Output is
the log: an attached client follows it (``container.logs`` with ``follow`` and ``tail: 0``), so
attaching never replays and never holds the container back; on a raw stream its input comes as
frames on that same connection, relayed as frames on one ``task.attach`` stream to the shim
(:meth:`Attach.stream`). The verbs (:meth:`Attach.stdin` and friends) send one frame each, on a
``task.attach`` of its own, and report what the shim could not take.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio

from tugwire import frames
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

    async def stdin(self, ref: Any, data: bytes) -> None:
        """Write ``data`` to the terminal or stdin of running container ``ref``."""
        rec = self._running(ref, "write to")
        if data:
            await self._forward(rec, self.c.shim(rec.id).input(frames.STDIN, data))

    async def close_stdin(self, ref: Any) -> None:
        """Close the stdin of running container ``ref`` (created with ``stdin`` and no ``tty``)."""
        rec = self._running(ref, "close the stdin of")
        await self._forward(rec, self.c.shim(rec.id).input(frames.STDIN, b""))

    async def resize(self, ref: Any, rows: int, cols: int) -> None:
        """Set the terminal of running container ``ref`` to ``rows`` x ``cols``."""
        rec = self._running(ref, "resize")
        if not (0 < rows < 65536 and 0 < cols < 65536):
            raise InvalidArgument(f"bad terminal size {rows}x{cols}", field="rows")
        resize = json.dumps({"resize": [rows, cols]}).encode()
        await self._forward(rec, self.c.shim(rec.id).input(frames.CONTROL, resize))

    @contextlib.asynccontextmanager
    async def stream(self, ref: Any) -> AsyncIterator[Callable[[int, bytes], Awaitable[None]]]:
        """PID 1's input for an attached client: ``send(kind, frame)`` relays its stdin and
        control frames, in order, on one ``task.attach`` stream to the shim. Input the container
        cannot take is dropped (as by a pipe); so is all of it once the shim's stream has ended
        (the container exited)."""
        rec = self._running(ref, "attach to")
        async with self.c.shim(rec.id).attach() as channel:

            async def send(kind: int, data: bytes) -> None:
                with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                    await channel.send(kind, data)

            yield send
