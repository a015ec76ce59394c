"""The one seam between tugd's byte streams and tug-cri's streaming server.

Everything the streaming server (cri/streaming.py) sends or receives of a process's stdio goes
through :class:`Process`: its :meth:`~Process.output` yields ``(stream, bytes)`` (``"stdout"``,
``"stderr"``), and it takes :meth:`~Process.send_stdin`, :meth:`~Process.close_stdin` and
:meth:`~Process.resize`. Both are tugd's raw streams (docs/api.md, "Raw streams": frames of
bytes both ways, on a connection of their own): :func:`exec_process` runs a command
(``container.exec``); :func:`attach_process` attaches to a container's PID 1
(``container.logs`` with ``follow`` and ``tail: 0``, its input on the same stream, as ``tug
attach`` does).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio

from tugwire import frames, jsonrpc
from tugwire.errors import Unavailable
from tugwire.rawchannel import RawChannel

_KINDS = {frames.STDOUT: "stdout", frames.STDERR: "stderr"}


class Process:
    """A process whose stdio the streaming server carries; see :func:`exec_process` and
    :func:`attach_process`. After :meth:`output` ends, :attr:`exit_code` is the exec's exit
    code (None for an attach, or when tugd does not know it) and :attr:`error` tugd's message
    when the command could not run."""

    def __init__(self, socket: str, cid: str) -> None:
        self.socket = socket  # tugd's: each stream is a connection of its own
        self.cid = cid
        self.exit_code: int | None = None
        self.error: str | None = None

    async def output(self) -> AsyncGenerator[tuple[str, bytes], None]:
        raise NotImplementedError
        yield  # pragma: no cover

    async def send_stdin(self, data: bytes) -> None:
        raise NotImplementedError

    async def close_stdin(self) -> None:
        raise NotImplementedError

    async def resize(self, width: int, height: int) -> None:
        raise NotImplementedError


class _Exec(Process):
    """An exec on tugd's raw stream of ``container.exec`` (docs/api.md, "Raw streams"): its
    output as stdout and stderr frames, its input as stdin and control frames on the same
    connection, its exit code in the end frame."""

    def __init__(self, socket: str, cid: str, params: dict[str, Any]) -> None:
        super().__init__(socket, cid)
        self.params = params
        self.started = anyio.Event()
        self.channel: RawChannel | None = None  # while it runs

    async def output(self) -> AsyncGenerator[tuple[str, bytes], None]:
        result: dict[str, Any] = {}
        try:
            async with jsonrpc.open_raw(self.socket, "container.exec", self.params) as channel:
                while True:
                    try:
                        kind, data = await channel.receive()
                    except anyio.EndOfStream:
                        raise Unavailable("tugd closed the exec stream before its end") from None
                    if kind == frames.END:
                        result = frames.end_result(data)
                        break
                    if kind == frames.CONTROL and frames.started_of(data) is not None:
                        self.channel = channel
                        self.started.set()
                    elif kind in _KINDS and data:
                        yield _KINDS[kind], data
        finally:
            self.channel = None
            self.started.set()
        code = result.get("exit_code")
        self.exit_code = None if code is None else int(code)
        self.error = result.get("error")

    async def _input(self, kind: int, data: bytes) -> None:
        await self.started.wait()
        channel = self.channel
        if channel is None:
            return  # it never ran, or it has ended: nothing to feed
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            await channel.send(kind, data)

    async def send_stdin(self, data: bytes) -> None:
        if data:
            await self._input(frames.STDIN, data)

    async def close_stdin(self) -> None:
        await self._input(frames.STDIN, b"")

    async def resize(self, width: int, height: int) -> None:
        await self._input(frames.CONTROL, json.dumps({"resize": [height, width]}).encode())


class _Attach(Process):
    """An attach on tugd's raw stream of ``container.logs`` (``follow``, ``tail: 0``): PID 1's
    output as stdout and stderr frames, its input as stdin and control frames on the same
    connection (input it cannot take is dropped by tugd)."""

    def __init__(self, socket: str, cid: str) -> None:
        super().__init__(socket, cid)
        self.following = anyio.Event()
        self.channel: RawChannel | None = None  # while it is followed
        self.stdin_once = False

    async def output(self) -> AsyncGenerator[tuple[str, bytes], None]:
        params = {"id": self.cid, "follow": True, "tail": 0}
        try:
            async with jsonrpc.open_raw(self.socket, "container.logs", params) as channel:
                # tugd answers the switch once the follower is registered: input from now on
                # is answered by output we get.
                self.channel = channel
                self.following.set()
                while True:
                    try:
                        kind, data = await channel.receive()
                    except anyio.EndOfStream:
                        raise Unavailable("tugd closed the log stream before its end") from None
                    if kind == frames.END:
                        frames.end_result(data)
                        return
                    if kind in _KINDS and data:
                        yield _KINDS[kind], data
        finally:
            self.channel = None
            self.following.set()

    async def _input(self, kind: int, data: bytes) -> None:
        await self.following.wait()  # input only once the output that answers it is followed
        channel = self.channel
        if channel is None:
            return  # not followed (any more): the input has nowhere to go
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            await channel.send(kind, data)

    async def send_stdin(self, data: bytes) -> None:
        if data:
            await self._input(frames.STDIN, data)

    async def close_stdin(self) -> None:
        """The container's stdin closes (EOF) if it was made with ``stdin_once``; otherwise it
        stays open for the next attach, as containerd does."""
        if self.stdin_once:
            await self._input(frames.STDIN, b"")

    async def resize(self, width: int, height: int) -> None:
        await self._input(frames.CONTROL, json.dumps({"resize": [height, width]}).encode())


@asynccontextmanager
async def exec_process(
    socket: str, cid: str, cmd: list[str], *, stdin: bool, tty: bool
) -> AsyncIterator[Process]:
    """Run ``cmd`` in container ``cid`` (its stream on a connection of its own, opened by
    :meth:`~Process.output` and closed when that ends)."""
    params = {"id": cid, "cmd": cmd, "stdin": stdin, "tty": tty}
    yield _Exec(socket, cid, params)


@asynccontextmanager
async def attach_process(socket: str, cid: str, *, stdin_once: bool = False) -> AsyncIterator[Process]:
    """Attach to container ``cid``'s PID 1. Its output starts with what it writes after this
    is followed: input waits until the follower is registered (tugd's switch to frames)."""
    proc = _Attach(socket, cid)
    proc.stdin_once = stdin_once
    yield proc
