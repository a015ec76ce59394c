"""Raw byte streams: the frames a connection carries once a call has switched it (docs/api.md,
"Raw streams").

A frame is an 8-byte header and its payload, as Docker's multiplexed stream::

    byte 0      stream id: 0 stdin, 1 stdout, 2 stderr, 3 end, 4 control
    bytes 1-3   zero
    bytes 4-7   payload length, unsigned 32-bit big-endian (at most MAX_PAYLOAD)

``stdout``/``stderr`` carry the container's bytes as it wrote them; ``stdin`` the client's (an
empty stdin frame closes the input: the half-close); ``end`` is the last frame of the server,
a JSON object: the call's result, or ``{"error": {...}}`` as a JSON-RPC error object; ``control``
a JSON object: from the client ``{"resize": [rows, cols]}`` (``{"detach": true}`` reserved),
from the server of an exec ``{"started": {"exec_id", "pid"}}`` once its process runs.

Pure and cheap to import (the CLI, tugd and every shim use it): a header codec and an
incremental :class:`FrameParser`; the sockets are the callers' (:mod:`tugwire.jsonrpc` for the
async side, :mod:`tugwire.syncclient` for the CLI).
"""

from __future__ import annotations

import json
import struct

from . import errors

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

STDIN, STDOUT, STDERR, END, CONTROL = 0, 1, 2, 3, 4
KINDS = frozenset((STDIN, STDOUT, STDERR, END, CONTROL))
HEADER = struct.Struct(">BxxxI")
HEADER_SIZE = HEADER.size  # 8
MAX_PAYLOAD = 16 << 20  # a longer frame is malformed: a reader never buffers more than this
RAW = "raw"  # the ``stream`` param that asks a call to switch its connection


class MalformedFrame(errors.Unavailable):
    """The peer sent something that is not a frame: the stream cannot go on."""


def header(kind: int, size: int) -> bytes:
    return HEADER.pack(kind, size)


def frame(kind: int, data: bytes) -> bytes:
    """One frame: header and payload (a copy; for big payloads send the header, then the data)."""
    return HEADER.pack(kind, len(data)) + data


def end_frame(result: Any) -> bytes:
    """The ``end`` frame of a call that returned ``result``."""
    return frame(END, json.dumps(result, separators=(",", ":")).encode())


def error_frame(exc: errors.TugError) -> bytes:
    """The ``end`` frame of a call that failed."""
    return end_frame({"error": exc.to_json()})


def control_frame(obj: dict[str, Any]) -> bytes:
    return frame(CONTROL, json.dumps(obj, separators=(",", ":")).encode())


def parse_json(payload: bytes) -> dict[str, Any]:
    """The JSON object of an ``end`` or ``control`` frame."""
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        raise MalformedFrame(f"malformed frame payload: {exc}") from exc
    if not isinstance(obj, dict):
        raise MalformedFrame("a frame's JSON payload must be an object")
    return obj


def end_result(payload: bytes) -> Any:
    """The result an ``end`` frame carries, or raise its error as the matching TugError (an
    ``error`` that is an object; an exec's result has its own ``error``, a string)."""
    obj = parse_json(payload)
    if isinstance(obj.get("error"), dict):
        raise errors.from_json(obj["error"])
    return obj


def resize_of(payload: bytes) -> tuple[int, int] | None:
    """The ``[rows, cols]`` of a control frame ``{"resize": [rows, cols]}``; None for any other
    control frame."""
    size = parse_json(payload).get("resize")
    if isinstance(size, list) and len(size) == 2 and all(type(n) is int for n in size):
        return size[0], size[1]
    return None


def started_payload(exec_id: str, pid: int) -> bytes:
    """The control frame's payload of a process that has started: ``{"started": {exec_id, pid}}``."""
    return json.dumps({"started": {"exec_id": exec_id, "pid": pid}}, separators=(",", ":")).encode()


def started_of(payload: bytes) -> dict[str, Any] | None:
    """The ``{exec_id, pid}`` of a ``started`` control frame; None for any other."""
    started = parse_json(payload).get("started")
    return started if isinstance(started, dict) else None


class FrameParser:
    """Splits bytes into frames, whatever pieces they arrive in. ``feed`` data, then take frames
    with :meth:`next` until it returns None. A bad header raises :class:`MalformedFrame`."""

    def __init__(self, kinds: frozenset[int] = KINDS) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._kinds = kinds

    def feed(self, data: bytes) -> None:
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def next(self) -> tuple[int, bytes] | None:
        buf, pos = self._buf, self._pos
        if len(buf) - pos < HEADER_SIZE:
            return None
        if buf[pos + 1] or buf[pos + 2] or buf[pos + 3]:
            raise MalformedFrame("malformed frame header: reserved bytes are not zero")
        kind, size = HEADER.unpack_from(buf, pos)
        if kind not in self._kinds:
            raise MalformedFrame(f"malformed frame header: unknown stream {kind}")
        if size > MAX_PAYLOAD:
            raise MalformedFrame(f"malformed frame header: {size} bytes is over {MAX_PAYLOAD}")
        start = pos + HEADER_SIZE
        if len(buf) - start < size:
            return None
        self._pos = start + size
        return kind, bytes(buf[start : self._pos])

    def need(self) -> int:
        """At least how many more bytes the next frame needs (for sizing reads)."""
        have = len(self._buf) - self._pos
        if have < HEADER_SIZE:
            return HEADER_SIZE - have
        size: int = HEADER.unpack_from(self._buf, self._pos)[1]
        return max(HEADER_SIZE + size - have, 1)
