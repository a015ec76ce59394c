"""The one seam between tugd's output streams and docker's byte streams.

Everything the Docker API sends of a container's or an exec's output goes through
:func:`container_output` and :class:`ExecRun`, which yield ``(stream, bytes)`` pairs (1 stdout,
2 stderr), and :func:`frame`, which makes docker's multiplexed frames of them. A container's
output is tugd's raw stream of ``container.logs`` (docs/api.md, "Raw streams": frames of the
container's bytes, decoded from the CRI log by tugd or its shim, on a connection of its own);
an exec's is the raw stream of ``container.exec``, which also carries its stdin as frames. The
adapters never see tugd's encoding.
"""

from __future__ import annotations

import base64
import contextlib
import struct
from collections.abc import AsyncGenerator
from typing import Any

import anyio

from tugwire import errors, frames, jsonrpc
from tugwire.rawchannel import RawChannel

STDIN, STDOUT, STDERR, SYSTEMERR = 0, 1, 2, 3

MULTIPLEXED = "application/vnd.docker.multiplexed-stream"
RAW = "application/vnd.docker.raw-stream"


def frame(stream: int, data: bytes) -> bytes:
    """Docker's multiplexed frame: ``[stream, 0, 0, 0, size (uint32 big-endian)]`` + payload."""
    return struct.pack(">BxxxI", stream, len(data)) + data


def encode(stream: int, data: bytes, multiplexed: bool) -> bytes:
    """A chunk as the client expects it: a frame, or the raw bytes (a TTY)."""
    return frame(stream, data) if multiplexed else data


async def container_output(
    rpc: jsonrpc.RpcClient,
    cid: str,
    *,
    follow: bool = False,
    tail: int | None = None,
    since: str | None = None,
    timestamps: bool = False,
    until: bytes | None = None,
    barrier: bool = False,
) -> AsyncGenerator[tuple[int, bytes], None]:
    """A container's output from its log: ``(stream, bytes)`` in the order written. ``tail``
    counts records; ``since`` is RFC 3339; ``timestamps`` puts the line's RFC 3339 time and a
    space before each line (docker's ``logs -t``); ``until`` (a CRI timestamp) leaves out the
    lines written after it. With ``barrier``, the first item is
    ``(-1, b"")`` once tugd has registered the follower (a later ``start`` cannot be missed)."""
    params: dict[str, Any] = {"id": cid, "follow": follow, "timestamps": timestamps or until is not None}
    if tail is not None:
        params["tail"] = tail
    if since is not None:
        params["since"] = since
    midline: dict[int, bool] = {}  # with ``until``: the stream's last line goes on (no time)
    keep: dict[int, bool] = {}  # with ``until``: the stream's current line is shown
    async with jsonrpc.open_raw(rpc.path, "container.logs", params) as channel:
        if barrier:
            # tugd answers the switch once the follower is registered: a later ``start`` on
            # any connection cannot be missed.
            yield -1, b""
        while True:
            try:
                kind, data = await channel.receive()
            except anyio.EndOfStream:
                raise errors.Unavailable("tugd closed the log stream before its end") from None
            if kind == frames.END:
                frames.end_result(data)
                return
            if not data:
                continue
            if until is None:
                yield kind, data
                continue
            kept = []  # one docker frame per tugd frame, not one per line
            for line in data.splitlines(keepends=True):
                if not midline.get(kind):
                    ts, _, rest = line.partition(b" ")
                    keep[kind] = ts <= until
                    line = line if timestamps else rest
                midline[kind] = not line.endswith(b"\n")
                if keep.get(kind):
                    kept.append(line)
            if kept:
                yield kind, b"".join(kept)


class ExecRun:
    """One exec run through ``container.exec``: iterate ``(stream, bytes)``, then read
    :attr:`result` (``exit_code``, ``signal``, ``error``). :attr:`exec_id` is tugd's id of the
    process, known once it has started (for resize); its stdin goes as frames on the same raw
    stream (:meth:`send_stdin`, :meth:`close_stdin`)."""

    def __init__(self, rpc: jsonrpc.RpcClient, params: dict[str, Any]) -> None:
        self.rpc = rpc
        self.params = params
        self.exec_id: str | None = None
        self.pid: int | None = None
        self.result: dict[str, Any] = {}
        self._channel: RawChannel | None = None

    async def output(self) -> AsyncGenerator[tuple[int, bytes], None]:
        """The exec's output, ``(-1, b"")`` first once it has started; :attr:`result` is set
        when this ends. With ``detach`` it ends at once (the result is then ``{exec_id, pid}``)."""
        if self.params.get("detach"):
            self.result = await self.rpc.call("container.exec", self.params)
            self.exec_id = self.result.get("exec_id")
            self.pid = self.result.get("pid")
            return
        async with jsonrpc.open_raw(self.rpc.path, "container.exec", self.params) as channel:
            self._channel = channel
            try:
                while True:
                    try:
                        kind, data = await channel.receive()
                    except anyio.EndOfStream:
                        raise errors.Unavailable("tugd closed the exec stream before its end") from None
                    if kind == frames.END:
                        self.result = frames.end_result(data)
                        return
                    if kind == frames.CONTROL and (started := frames.started_of(data)):
                        self.exec_id = started.get("exec_id")
                        self.pid = started.get("pid")
                        yield -1, b""
                    elif kind in (STDOUT, STDERR) and data:
                        yield kind, data
            finally:
                self._channel = None

    async def _send(self, kind: int, data: bytes) -> None:
        channel = self._channel
        if channel is None:
            return  # not started, or over: the input has nowhere to go
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            await channel.send(kind, data)

    async def send_stdin(self, data: bytes) -> None:
        """Feed the exec's stdin."""
        if data:
            await self._send(frames.STDIN, data)

    async def close_stdin(self) -> None:
        """EOF on the exec's stdin."""
        await self._send(frames.STDIN, b"")


async def send_container_stdin(rpc: jsonrpc.RpcClient, cid: str, data: bytes) -> None:
    """Feed a container's PID 1 (created with ``OpenStdin``)."""
    await rpc.call("container.stdin", {"id": cid, "data": base64.b64encode(data).decode()})
