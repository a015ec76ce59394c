"""The one seam between tugd's output streams and docker's byte streams.

Everything the Docker API sends of a container's or an exec's output goes through
:func:`container_output` and :class:`ExecRun`, which yield ``(stream, bytes)`` pairs (1 stdout,
2 stderr), and :func:`frame`, which makes docker's multiplexed frames of them. Today they
translate tugd's JSON-RPC notifications (``container.logs.data``: base64 CRI log records;
``container.exec.output``: base64 chunks). When issue 14 gives tugd a raw framed byte stream for
logs, attach and exec, only this module changes: the adapters never see tugd's encoding.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import AsyncGenerator
from typing import Any

from tugwire import crilog, jsonrpc

STDIN, STDOUT, STDERR, SYSTEMERR = 0, 1, 2, 3
_STREAMS = {b"stdout": STDOUT, b"stderr": STDERR}

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
    barrier: bool = False,
) -> AsyncGenerator[tuple[int, bytes], None]:
    """A container's output from its log: ``(stream, bytes)`` in the order written. ``tail``
    counts records; ``since`` is RFC 3339; ``timestamps`` puts the record's RFC 3339 time and a
    space before each record's bytes (docker's ``logs -t``). With ``barrier``, the first item is
    ``(-1, b"")`` once tugd has registered the follower (a later ``start`` cannot be missed)."""
    params: dict[str, Any] = {"id": cid, "follow": follow}
    if tail is not None:
        params["tail"] = tail
    if since is not None:
        params["since"] = since
    async with rpc.stream("container.logs", params) as notes:
        if barrier:
            # Requests on one connection are accepted in order: once this answers, the logs
            # request before it has registered its interest.
            await rpc.call("container.inspect", {"id": cid})
            yield -1, b""
        async for note in notes:
            data = base64.b64decode(note.get("data", ""))
            for record in data.split(b"\n"):
                if not record:
                    continue
                ts, name, full, content = crilog.parse_record(record)
                if full:
                    content += b"\n"
                if timestamps:
                    content = ts + b" " + content
                yield _STREAMS.get(name, STDOUT), content
        await notes.result()


class ExecRun:
    """One exec run through ``container.exec``: iterate ``(stream, bytes)``, then read
    :attr:`result` (``exit_code``, ``signal``, ``error``). :attr:`exec_id` is tugd's id of the
    process, known once it has started (for stdin and resize)."""

    def __init__(self, rpc: jsonrpc.RpcClient, params: dict[str, Any]) -> None:
        self.rpc = rpc
        self.params = params
        self.exec_id: str | None = None
        self.pid: int | None = None
        self.result: dict[str, Any] = {}

    async def output(self) -> AsyncGenerator[tuple[int, bytes], None]:
        """The exec's output; :attr:`result` is set when this ends. With ``detach`` it ends at
        once (the result is then ``{exec_id, pid}``)."""
        if self.params.get("detach"):
            self.result = await self.rpc.call("container.exec", self.params)
            self.exec_id = self.result.get("exec_id")
            self.pid = self.result.get("pid")
            return
        async with self.rpc.stream("container.exec", self.params) as notes:
            async for note in notes:
                if "stream" not in note:  # container.exec.started
                    self.exec_id = note.get("exec_id")
                    self.pid = note.get("pid")
                    yield -1, b""
                    continue
                yield _STREAMS.get(str(note["stream"]).encode(), STDOUT), base64.b64decode(note["data"])
            self.result = await notes.result()

    async def send_stdin(self, data: bytes) -> None:
        """Feed the exec's stdin."""
        await self.rpc.call(
            "container.exec.stdin", {"exec_id": self.exec_id, "data": base64.b64encode(data).decode()}
        )

    async def close_stdin(self) -> None:
        """EOF on the exec's stdin."""
        await self.rpc.call("container.exec.close_stdin", {"exec_id": self.exec_id})


async def send_container_stdin(rpc: jsonrpc.RpcClient, cid: str, data: bytes) -> None:
    """Feed a container's PID 1 (created with ``OpenStdin``)."""
    await rpc.call("container.stdin", {"id": cid, "data": base64.b64encode(data).decode()})
