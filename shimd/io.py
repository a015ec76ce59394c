"""A container's stdio: pipes drained into the CRI log file, and followers of that file.

The container writes into pipes; the shim reads them as fast as they fill and appends CRI records
to the log file. Followers (``logs -f``) read the *file*, each at its own pace, so a slow or stuck
follower never holds the container or any other follower back: the only thing between the
container and the disk is this process's read-format-write loop.

A raw follower that has caught up with the file takes the bytes as they are read from the pipes
(a :class:`Tap`), not decoded back from the file: a bounded queue that the log's writer fills and
never waits for. Once the queue is over its budget the follower leaves it and reads the file
again from where that chunk's records begin, until it has caught up again: no byte lost or
doubled, and the container is never held up.
"""

from __future__ import annotations

import fcntl
import os
from collections import deque
from collections.abc import Awaitable, Callable
from typing import BinaryIO

import anyio

from tugwire import crilog

F_SETPIPE_SZ = 1031
PIPE_SIZE = 1 << 20  # the default pipe-max-size; bigger pipes mean fewer wake-ups
READ_SIZE = 1 << 20
FOLLOW_CHUNK = 256 * 1024  # bytes of log file per notification to a follower
LIVE_FRAME = 1 << 20  # at most this many queued bytes are joined into one frame
TAP_BUDGET = 4 << 20  # bytes a live follower may have queued before it goes back to the file
_KINDS = {b"stdout": 1, b"stderr": 2}  # tugwire.frames.STDOUT, STDERR


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


class Tap:
    """A live follower's queue of the chunks written to the log since it caught up."""

    def __init__(self, budget: int) -> None:
        self.chunks: deque[tuple[int, bytes]] = deque()
        self.size = 0
        self.budget = budget
        self.overflow: tuple[int, int] | None = None  # (generation, offset) to read the file from
        self.closed = False
        self._changed = anyio.Event()

    def offer(self, kind: int, data: bytes, where: tuple[int, int]) -> bool:
        """Queue a chunk; False (and the tap is done) when that would pass the budget: the
        chunk's records begin at ``where`` in the log."""
        if self.chunks and self.size + len(data) > self.budget:
            self.overflow = where
            self._wake()
            return False
        self.chunks.append((kind, data))
        self.size += len(data)
        self._wake()
        return True

    def close(self) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def wait(self) -> None:
        await self._changed.wait()


class LogSink:
    """The log file of one container, the signal followers wait on, and the live taps."""

    def __init__(self, writer: crilog.LogWriter) -> None:
        self.writer = writer
        self._changed = anyio.Event()
        self.closed = False  # no more data will come (the container's pipes reached EOF)
        self.taps: set[Tap] = set()

    def write(self, stream: bytes, data: bytes) -> None:
        writer = self.writer
        dropped = writer.dropped_bytes
        writer.write(stream, data)
        if self.taps and writer.dropped_bytes == dropped:  # what the file has, the taps get
            kind = _KINDS.get(stream, 1)
            for tap in list(self.taps):
                if not tap.offer(kind, data, writer.last_start):
                    self.taps.discard(tap)
        self._changed.set()
        self._changed = anyio.Event()

    def close(self) -> None:
        self.closed = True
        for tap in self.taps:
            tap.close()
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
    live: Callable[[int, bytes], Awaitable[None]] | None = None,
) -> None:
    """Send the log's records (``tail``/``since`` applied) and then, with ``follow``, whatever is
    written next, until the container's output has ended. Reads the files; with ``live``, once
    caught up, the bytes as they are written go to ``live(stream, data)`` through a
    :class:`Tap` instead, and back to the files whenever the tap overflows."""
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
            if live is not None and writer.generation == generation and not sink.closed:
                # Caught up, with no await since the read that found the end: every later
                # write goes to the tap, none is missed or read twice. (Closed meanwhile: the
                # next turn reads the rest of the file and ends.)
                where = await _live(sink, live)
                if where is None:
                    return
                generation, offset = where
                found = writer.path_of(generation)
                if found is None:  # rotated away while we lagged: the oldest kept file
                    generation = writer.generation - writer.max_files + 1
                    found, offset = (writer.path_of(generation) or writer.path), 0
                f = open(found, "rb")  # noqa: SIM115
                files.append(f)
                f.seek(offset)
                continue
            # No await since the last read found the end: no write can slip in before this wait.
            await sink.wait_changed()
    finally:
        for f in files:
            f.close()


async def _live(sink: LogSink, live: Callable[[int, bytes], Awaitable[None]]) -> tuple[int, int] | None:
    """Send what the log's writer puts in a new tap until the output ends (None) or the tap
    overflows: then where in the log to go on reading."""
    tap = Tap(TAP_BUDGET)
    sink.taps.add(tap)
    try:
        while True:
            chunks = tap.chunks
            while chunks:
                # What queued while we sent goes as one frame per run of one stream: a writer
                # of small pieces costs per frame, not per piece.
                kind, data = chunks.popleft()
                if chunks and chunks[0][0] == kind and len(data) < LIVE_FRAME:
                    parts = [data]
                    size = len(data)
                    while chunks and chunks[0][0] == kind and size < LIVE_FRAME:
                        more = chunks.popleft()[1]
                        parts.append(more)
                        size += len(more)
                    data = b"".join(parts)
                tap.size -= len(data)
                await live(kind, data)
            if tap.overflow is not None:
                return tap.overflow
            if tap.closed:
                return None
            await tap.wait()
    finally:
        sink.taps.discard(tap)


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
