"""One end of a connection switched to frames (:mod:`tugwire.frames`), for the async programs
(tugd, the shims, the Docker API door): :class:`RawChannel`. The switch itself is
:meth:`tugwire.jsonrpc.Call.switch` (server) and :func:`tugwire.jsonrpc.open_raw` (client)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc

from . import errors, frames
from .errors import TugError

log = logging.getLogger("tugboat.rpc")

_READ_SIZE = 1 << 16


class RawChannel:
    """A connection switched to frames (:mod:`tugwire.frames`), either side of it: send frames,
    receive the peer's. ``receive`` raises :class:`anyio.EndOfStream` when the peer has closed,
    :class:`frames.MalformedFrame` for bytes that are not a frame."""

    def __init__(
        self, stream: anyio.abc.ByteStream, leftover: bytes = b"", lock: anyio.Lock | None = None
    ) -> None:
        self.stream = stream
        self.parser = frames.FrameParser()
        self.parser.feed(leftover)
        self._lock = lock or anyio.Lock()
        self.ended = False

    async def send(self, kind: int, data: bytes) -> None:
        """One frame (the payload is sent without copying it into the header's buffer)."""
        async with self._lock:
            if len(data) < 65536:
                await self.stream.send(frames.header(kind, len(data)) + data)
            else:
                await self.stream.send(frames.header(kind, len(data)))
                await self.stream.send(data)

    async def send_framed(self, data: bytes) -> None:
        """Bytes that are whole frames already (relayed as they came)."""
        async with self._lock:
            await self.stream.send(data)

    async def receive(self) -> tuple[int, bytes]:
        while True:
            got = self.parser.next()
            if got is not None:
                return got
            try:
                data = await self.stream.receive(max(self.parser.need(), _READ_SIZE))
            except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
                raise anyio.EndOfStream from exc
            self.parser.feed(data)

    async def end(self, result: Any) -> None:
        """The ``end`` frame with ``result``; then the server closes the connection."""
        self.ended = True
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            await self.send_framed(frames.end_frame(result))

    async def fail(
        self, exc: Exception, map_error: Callable[[Exception], TugError | None] | None, method: str
    ) -> None:
        """The ``end`` frame of a handler that raised ``exc`` after it switched."""
        if isinstance(exc, (anyio.BrokenResourceError, anyio.ClosedResourceError)):
            return  # the client is gone
        if isinstance(exc, TugError):
            err: TugError = exc
        else:
            mapped = map_error(exc) if map_error is not None else None
            if mapped is None:
                log.error("method %s failed", method, exc_info=exc)
            err = mapped or errors.Internal(f"internal error in {method}: {exc}")
        self.ended = True
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            await self.send_framed(frames.error_frame(err))
