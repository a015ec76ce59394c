"""A container's stdio: pipes drained into the CRI log file, and followers of that file.

The container writes into pipes; the shim reads them as fast as they fill and appends CRI records
to the log file. Followers (``logs -f``) read the *file*, each at its own pace, so a slow or stuck
follower never holds the container or any other follower back: the only thing between the
container and the disk is this process's read-format-write loop.
"""

from __future__ import annotations

import base64
import fcntl
import os
from collections.abc import Awaitable, Callable
from typing import BinaryIO

import anyio

from tugwire import crilog

F_SETPIPE_SZ = 1031
PIPE_SIZE = 1 << 20  # the default pipe-max-size; bigger pipes mean fewer wake-ups
READ_SIZE = 1 << 20
FOLLOW_CHUNK = 256 * 1024  # bytes of log file per notification to a follower


class StdioPipes:
    """Pipes for a container's stdout and stderr (stdin is /dev/null for now)."""

    def __init__(self) -> None:
        self.stdout_r, self.stdout_w = os.pipe2(os.O_CLOEXEC)
        self.stderr_r, self.stderr_w = os.pipe2(os.O_CLOEXEC)
        self.stdin = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        for fd in (self.stdout_r, self.stderr_r):
            try:
                fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE)
            except OSError:
                pass  # a lower pipe-max-size: the default size still works
            os.set_blocking(fd, False)

    def close_child_ends(self) -> None:
        """Once the runtime has started the container, only the container holds the write ends:
        their EOF then means every process of the container has gone."""
        for name in ("stdout_w", "stderr_w", "stdin"):
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)

    def close(self) -> None:
        self.close_child_ends()
        for name in ("stdout_r", "stderr_r"):
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)


class LogSink:
    """The log file of one container and the signal followers wait on."""

    def __init__(self, writer: crilog.LogWriter) -> None:
        self.writer = writer
        self._changed = anyio.Event()
        self.closed = False  # no more data will come (the container's pipes reached EOF)

    def write(self, stream: bytes, data: bytes) -> None:
        self.writer.write(stream, data)
        self._changed.set()
        self._changed = anyio.Event()

    def close(self) -> None:
        self.closed = True
        self._changed.set()

    def wake(self) -> None:
        """Wake the followers (the writer moved to a new file)."""
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_changed(self) -> None:
        await self._changed.wait()


async def drain(fd: int, stream: bytes, sink: LogSink) -> None:
    """Copy one pipe into the log until EOF. Reads until the pipe is empty before waiting again."""
    while True:
        await anyio.wait_readable(fd)
        while True:
            try:
                data = os.read(fd, READ_SIZE)
            except BlockingIOError:
                break
            if not data:
                return
            sink.write(stream, data)


async def follow(
    sink: LogSink,
    send: Callable[[bytes], Awaitable[None]],
    *,
    tail: int | None,
    since: bytes | None,
    follow: bool,
    ready: Callable[[], None] = lambda: None,
) -> None:
    """Send the log's records (``tail``/``since`` applied) and then, with ``follow``, whatever is
    written next, until the container's output has ended. Reads the files, never the pipes."""
    writer = sink.writer
    generation = writer.generation
    # Open every file of the log with no await in between: the writer runs on this same event
    # loop, so this is one consistent snapshot, and open files survive later rotations.
    files: list[BinaryIO] = []
    for path in crilog.rotated_paths(writer.path, writer.max_files):
        try:
            files.append(open(path, "rb"))  # noqa: SIM115 - closed in finally
        except FileNotFoundError:
            pass
    current = files[-1] if files and files[-1].name == writer.path else None
    ready()
    try:
        if tail is None and since is None:
            for f in files:
                await _send_file(f, send)
        else:
            records = _select(files, tail, since)
            for i in range(0, len(records), FOLLOW_CHUNK):
                await send(records[i : i + FOLLOW_CHUNK])
        if not follow or current is None:
            return
        f = current
        while True:
            rotated = writer.generation != generation  # seen before reading f to its end
            closed = sink.closed
            await _send_file(f, send)
            if rotated:
                # f was complete before we read to its end: move on to the next generation.
                generation += 1
                next_path = writer.path_of(generation)
                if next_path is None:  # we lagged behind more than the kept files: skip to the oldest
                    generation = writer.generation - writer.max_files + 1
                    next_path = writer.path_of(generation) or writer.path
                f = open(next_path, "rb")  # noqa: SIM115
                files.append(f)
                continue
            if closed:
                return
            # No await since the last read found the end: no write can slip in before this wait.
            await sink.wait_changed()
    finally:
        for f in files:
            f.close()


def _select(files: list[BinaryIO], tail: int | None, since: bytes | None) -> bytes:
    """Records of ``files`` that pass ``tail``/``since``; leaves each file after its last whole
    record, so that following continues exactly there."""
    selected = crilog.select(crilog.records_of(files), tail=tail, since=since)
    return b"\n".join(selected) + b"\n" if selected else b""


async def _send_file(f: BinaryIO, send: Callable[[bytes], Awaitable[None]]) -> None:
    """Send whole records from the file's position to its current end."""
    while True:
        pos = f.tell()
        data = f.read(FOLLOW_CHUNK)
        if not data:
            return
        end = data.rfind(b"\n") + 1
        if end == 0:
            # One record longer than a chunk, or being written: take it whole, or come back.
            rest = f.readline()
            if not rest.endswith(b"\n"):
                f.seek(pos)
                return
            data, end = data + rest, len(data) + len(rest)
        elif end < len(data):
            f.seek(pos + end)
        await send(data[:end])


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
