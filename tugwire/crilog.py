"""The CRI log format: writing it a chunk at a time, rotating it, and reading it back.

A record is ``<RFC3339Nano timestamp> <stdout|stderr> <P|F> <bytes>\\n``. ``F`` ends a line (the
newline the container wrote is the record's own), ``P`` is a piece of a line that continues in a
later record of the same stream. Concatenating a stream's records, adding a newline after each
``F``, gives back exactly the bytes the container wrote: a final line without a newline stays a
``P`` record.

Formatting is per chunk, not per line: a read of 64 KiB holding a thousand lines costs a handful of
C-level operations (``bytes.replace`` and one regex search), not a thousand Python ones. Every
line of one chunk carries the chunk's timestamp (they were read at the same instant).

This module is pure (no anyio): the shim writes with it, tugd and the CLI read with it.
"""

from __future__ import annotations

import errno
import itertools
import os
import time
from collections import deque
from collections.abc import Iterator

MAX_LINE = 16 * 1024  # a longer line is split into partial records
_BLOCK = MAX_LINE // 2
DEFAULT_MAX_SIZE = 64 * 1024 * 1024
DEFAULT_MAX_FILES = 4


def timestamp(ns: int | None = None) -> bytes:
    """RFC3339Nano in UTC, fixed width, so that timestamps compare as strings."""
    if ns is None:
        ns = time.time_ns()
    sec, frac = divmod(ns, 1_000_000_000)
    return b"%s.%09dZ" % (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)).encode(), frac)


def format_chunk(stream: bytes, data: bytes, ts: bytes) -> bytes:
    """Turn one chunk read from a container's pipe into CRI records."""
    if not data:
        return b""
    prefix_f = ts + b" " + stream + b" F "
    end = data.rfind(b"\n") + 1
    complete, tail = data[:end], data[end:]
    out = b""
    if complete:
        if not _may_have_long_line(complete):
            # The fast path: every line fits, one replace formats them all.
            out = prefix_f + complete[:-1].replace(b"\n", b"\n" + prefix_f) + b"\n"
        else:
            out = b"".join(_format_line(stream, ts, line, True) for line in complete[:-1].split(b"\n"))
    if tail:
        out += _format_line(stream, ts, tail, False)
    return out


def _may_have_long_line(data: bytes) -> bool:
    """False when no line of ``data`` can be longer than MAX_LINE.

    A run of more than MAX_LINE bytes without a newline covers at least one whole aligned block of
    MAX_LINE/2 bytes, so it is enough to look for a block without a newline: one C-level ``find``
    per 8 KiB (a regex for long runs cost 28 ms per MiB of short lines and seconds per MiB of long
    ones, measured with bench/crilog_format.py)."""
    n = len(data)
    if n <= MAX_LINE:
        return False
    find = data.find
    return any(find(b"\n", i, i + _BLOCK) < 0 for i in range(0, n - _BLOCK + 1, _BLOCK))


def _format_line(stream: bytes, ts: bytes, line: bytes, full: bool) -> bytes:
    """One logical line (without its newline), split into partial records past MAX_LINE."""
    parts = []
    while len(line) > MAX_LINE:
        parts.append(b"%s %s P %s\n" % (ts, stream, line[:MAX_LINE]))
        line = line[MAX_LINE:]
    if line or full:
        parts.append(b"%s %s %s %s\n" % (ts, stream, b"F" if full else b"P", line))
    return b"".join(parts)


def rotated_paths(path: str, max_files: int) -> list[str]:
    """The files of one log, oldest first: ``path.N`` ... ``path.1``, ``path``."""
    return [f"{path}.{i}" for i in range(max_files - 1, 0, -1)] + [path]


class LogWriter:
    """Appends CRI records to one file, rotating by size and count. One writer per file.

    A write that fails for lack of space is dropped and counted (``dropped_bytes``), never retried
    in a loop and never allowed to block the container; the file keeps only whole records because
    a short write is completed or, when the disk is full, truncated back to the last record.
    """

    def __init__(self, path: str, max_size: int = DEFAULT_MAX_SIZE, max_files: int = DEFAULT_MAX_FILES):
        self.path = path
        self.max_size = max(max_size, 4096)
        self.max_files = max(max_files, 1)
        self.generation = 0  # rotations so far; followers use it to find their file
        self.bytes = {b"stdout": 0, b"stderr": 0}  # bytes the container wrote, per stream
        self.dropped_bytes = 0
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        self._size = os.fstat(self._fd).st_size

    def write(self, stream: bytes, data: bytes) -> None:
        self.bytes[stream] = self.bytes.get(stream, 0) + len(data)
        out = format_chunk(stream, data, timestamp())
        if self._size and self._size + len(out) > self.max_size:
            self._rotate()
        size = self._size
        try:
            self._write_all(out)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise
            self.dropped_bytes += len(data)
            # Keep the file a sequence of whole records: cut off what a short write put there
            # before the disk filled (the size before this chunk, not the size counted since).
            os.ftruncate(self._fd, size)
            self._size = size

    def _write_all(self, out: bytes) -> None:
        view = memoryview(out)
        while view:
            n = os.write(self._fd, view)
            self._size += n
            view = view[n:]

    def _rotate(self) -> None:
        os.close(self._fd)
        paths = rotated_paths(self.path, self.max_files)  # oldest first
        if self.max_files == 1:
            os.unlink(self.path)
        else:
            try:
                os.unlink(paths[0])
            except FileNotFoundError:
                pass
            for older, newer in itertools.pairwise(paths):
                try:
                    os.rename(newer, older)
                except FileNotFoundError:
                    pass
        self.generation += 1
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        self._size = 0

    def path_of(self, generation: int) -> str | None:
        """Where the file written in ``generation`` is now, or None once rotated away."""
        age = self.generation - generation
        if age == 0:
            return self.path
        if 0 < age < self.max_files:
            return f"{self.path}.{age}"
        return None

    def sync(self) -> None:
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


# --------------------------------------------------------------------------------------- reading


def iter_records(paths: list[str]) -> Iterator[bytes]:
    """Every whole record in these files, in order (a torn last line is skipped)."""
    for p in paths:
        try:
            with open(p, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            continue
        end = data.rfind(b"\n") + 1
        if end:
            yield from data[: end - 1].split(b"\n")


def iter_chunks(paths: list[str], size: int = 256 * 1024) -> Iterator[bytes]:
    """The files' whole records, in chunks of about ``size`` bytes cut at record ends (a torn last
    line of a file is skipped): streaming a log without splitting it into records."""
    for p in paths:
        try:
            f = open(p, "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            continue
        with f:
            carry = b""
            while chunk := f.read(size):
                chunk = carry + chunk
                end = chunk.rfind(b"\n") + 1
                carry = chunk[end:]
                if end:
                    yield chunk[:end]


def select_records(paths: list[str], *, tail: int | None = None, since: bytes | None = None) -> list[bytes]:
    """Records to show for ``logs --tail N --since T`` (``since`` as a CRI timestamp)."""
    records: Iterator[bytes] = iter_records(paths)
    if since is not None:
        records = (r for r in records if r[: len(since)] >= since)
    if tail is not None:
        return list(deque(records, maxlen=tail)) if tail > 0 else []
    return list(records)


def parse_record(record: bytes) -> tuple[bytes, bytes, bool, bytes]:
    """(timestamp, stream, is_full_line, content) of one record."""
    ts, stream, tag, content = [*record.split(b" ", 3), b"", b"", b""][:4]
    return ts, stream, tag == b"F", content
