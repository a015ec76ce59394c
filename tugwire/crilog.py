"""The CRI log format: writing it a chunk at a time, rotating it, and reading it back.

A record is ``<RFC3339Nano timestamp> <stdout|stderr> <P|F> <bytes>\\n``. ``F`` ends a line (the
newline the container wrote is the record's own), ``P`` is a piece of a line that continues in a
later record of the same stream. Concatenating a stream's records, adding a newline after each
``F``, gives back exactly the bytes the container wrote: a final line without a newline stays a
``P`` record.

Formatting is per chunk, not per line: a read of 64 KiB holding a thousand lines costs a handful of
C-level operations (``bytes.replace`` and one regex search), not a thousand Python ones. Every
line of one chunk carries the chunk's timestamp (they were read at the same instant).

Reading is here too, the one reader for every side: whole records of open files or paths
(:func:`records_of`, :func:`iter_records`, :func:`iter_chunks`), ``--tail``/``--since``
(:func:`select`), one record (:func:`parse_record`), and records back into the bytes the container
wrote (:class:`LogDecoder`).

This module is pure (no anyio) and cheap to import: the shim writes with it, tugd, build and the
CLI read with it.
"""

from __future__ import annotations

import errno
import itertools
import os
from collections import deque

from .timefmt import rfc3339_bytes

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from typing import BinaryIO

MAX_LINE = 16 * 1024  # a longer line is split into partial records
_BLOCK = MAX_LINE // 2
DEFAULT_MAX_SIZE = 64 * 1024 * 1024
DEFAULT_MAX_FILES = 4


# A record's timestamp: RFC3339Nano in UTC, fixed width, so that timestamps compare as strings
# (tugwire.timefmt.rfc3339_bytes, by the name the writers and readers of logs know it).
timestamp = rfc3339_bytes


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
        self.last_start = (0, 0)  # (generation, offset) where the last write's records begin
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        self._size = os.fstat(self._fd).st_size

    def write(self, stream: bytes, data: bytes) -> None:
        self.bytes[stream] = self.bytes.get(stream, 0) + len(data)
        out = format_chunk(stream, data, timestamp())
        if self._size and self._size + len(out) > self.max_size:
            self._rotate()
        size = self._size
        self.last_start = (self.generation, size)
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

    def reopen(self) -> None:
        """Open the file at :attr:`path` again (whoever rotates the log renamed the old one):
        the next record goes to the new file. Writes are whole records from the one task that
        writes, so every record is in one file or the other, none split or lost. Followers see
        a new generation. OSError (a missing directory): the old file is kept."""
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        os.close(self._fd)
        self._fd = fd
        self._size = os.fstat(fd).st_size
        self.generation += 1

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


def records_of(files: Iterable[BinaryIO]) -> Iterator[bytes]:
    """Every whole record of these open files, from each one's position, in order. Each file is
    left just after its last whole record: a torn last line is skipped, and a follower reading on
    from there gets it once it is whole."""
    for f in files:
        pos = f.tell()
        data = f.read()
        end = data.rfind(b"\n") + 1
        f.seek(pos + end)
        if end:
            yield from data[: end - 1].split(b"\n")


def iter_records(paths: list[str]) -> Iterator[bytes]:
    """Every whole record in these files, in order (a torn last line is skipped; a missing file
    is no records)."""
    for p in paths:
        try:
            f = open(p, "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            continue
        with f:
            yield from records_of([f])


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


def select(records: Iterable[bytes], *, tail: int | None = None, since: bytes | None = None) -> list[bytes]:
    """The records to show for ``logs --tail N --since T`` (``since`` as a CRI timestamp): those
    at or after ``since``, of them the last ``tail``."""
    if since is not None:
        n = len(since)
        records = (r for r in records if r[:n] >= since)
    if tail is not None:
        # Read to the end even for a tail of 0: open files are left after their last record,
        # where a follower goes on (``logs -f --tail 0`` shows only what comes next).
        return list(deque(records, maxlen=max(tail, 0)))
    return list(records)


def select_records(paths: list[str], *, tail: int | None = None, since: bytes | None = None) -> list[bytes]:
    """Records of these files to show for ``logs --tail N --since T`` (see :func:`select`)."""
    return select(iter_records(paths), tail=tail, since=since)


def parse_record(record: bytes) -> tuple[bytes, bytes, bool, bytes]:
    """(timestamp, stream, is_full_line, content) of one record."""
    ts, stream, tag, content = [*record.split(b" ", 3), b"", b"", b""][:4]
    return ts, stream, tag == b"F", content


# --------------------------------------------------------------------------------------- decoding

# A chunk is decoded a run of records at a time (LogDecoder._runs): runs of one header are cut
# by bytes.replace, with or without timestamps (``logs -t`` keeps the run's timestamp: the
# header's replacement is ``\n<ts> `` instead of ``\n``).
_TS_WIDTH = len(b"2026-01-02T03:04:05.123456789Z")
_HEADER_WIDTH = _TS_WIDTH + len(b" stdout F ")
_FDS = {b"stdout": 1, b"stderr": 2}

# bytes.replace finds each match with a fresh search: on a haystack of 30000 bytes or more that
# is CPython's two-way search, whose set-up per match costs more than the match (measured on a
# 108 KB run of 61-byte lines, Python 3.11: 300 us whole, 160 us in pieces of 16 KiB).
_PIECE = 16 * 1024


def _replace_in_pieces(data: bytes, start: int, end: int, key: bytes, new: bytes) -> bytes:
    """``data[start:end].replace(key, new)`` for a ``key`` that starts with a newline, cut at
    newlines into pieces of about _PIECE bytes (a match never spans two pieces: each starts at a
    newline, the first byte of ``key``)."""
    if end - start <= _PIECE:
        return data[start:end].replace(key, new)
    parts = []
    find = data.find
    while start < end:
        cut = find(b"\n", start + _PIECE, end)
        if cut < 0:
            cut = end
        parts.append(data[start:cut].replace(key, new))
        start = cut
    return b"".join(parts)


class LogDecoder:
    """Turns CRI log records into the bytes the container wrote, per stream.

    ``feed`` takes a log's data in any pieces (a log file's chunks, ``container.logs.data``: a
    torn record is kept until the rest arrives) and returns ``[(fd, bytes), ...]`` with fd 1
    (stdout) or 2 (stderr), runs of one stream joined. A newline is added after an ``F`` record
    and nothing after a ``P`` one. With ``timestamps``, each line starts with its record's
    timestamp and a space (only the first piece of a line split into ``P`` records).
    """

    def __init__(self, *, timestamps: bool = False) -> None:
        self.timestamps = timestamps
        self._torn = b""
        self._midline = {b"stdout": False, b"stderr": False}  # after a P record of that stream

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """The output for ``data``: a list of (fd, bytes)."""
        if self._torn:
            data = self._torn + data
        end = data.rfind(b"\n") + 1
        self._torn = data[end:]
        data = data[:end]
        if not data:
            return []
        return self._runs(data)

    def _runs(self, data: bytes) -> list[tuple[int, bytes]]:
        """Whole records to the container's bytes, a run of records at a time.

        The shim gives every record of one read from a pipe the same header (timestamp, stream,
        ``F``), so the records of one read lie together: a run. Its end is found by galloping
        ``rfind`` of ``\n<header>`` and its headers cut by ``bytes.replace`` (C speed, no
        regex); a length check proves every record of the run had that header, else the run goes
        record by record (:meth:`_slow`). A ``P`` record is one piece without its newline."""
        out: list[tuple[int, list[bytes]]] = []
        n = len(data)
        pos = 0
        hw = _HEADER_WIDTH
        timestamps = self.timestamps
        midline = self._midline
        while pos < n:
            end = data.index(b"\n", pos) + 1
            head = data[pos : pos + hw]
            stream = head[_TS_WIDTH + 1 : _TS_WIDTH + 7]
            fd = _FDS.get(stream)
            tag = head[hw - 2 : hw - 1]
            if end - pos <= hw or fd is None or head[-1:] != b" " or head[_TS_WIDTH : _TS_WIDTH + 1] != b" ":
                piece = self._slow(data[pos:end])  # not a record of the usual shape
            elif tag not in (b"P", b"F"):
                piece = self._slow(data[pos:end])
            elif tag == b"P":
                content = data[pos + hw : end - 1]
                if timestamps and not midline[stream]:
                    content = head[: _TS_WIDTH + 1] + content
                midline[stream] = True
                piece = [(fd, content)]
            else:
                key = b"\n" + head
                window = 1 << 14
                while end < n and data.startswith(head, end):
                    i = data.rfind(key, end - 1, min(n, end - 1 + window))
                    end = data.index(b"\n", i + 1) + 1
                    window <<= 1
                # The headers go by replace (in pieces: _replace_in_pieces); the number replaced
                # (from the lengths) plus one must be the number of records left, counted on
                # the shorter output: then every record of the run had the header.
                new = b"\n" + head[: _TS_WIDTH + 1] if timestamps else b"\n"
                content = _replace_in_pieces(data, pos + hw, end, key, new)
                replaced, rest = divmod(end - pos - hw - len(content), hw + 1 - len(new))
                if not rest and replaced + 1 == content.count(b"\n"):
                    if timestamps and not midline[stream]:
                        content = head[: _TS_WIDTH + 1] + content
                    midline[stream] = False
                    piece = [(fd, content)]
                else:
                    piece = self._slow(data[pos:end])
            for pfd, pdata in piece:
                if out and out[-1][0] == pfd:
                    out[-1][1].append(pdata)
                else:
                    out.append((pfd, [pdata]))
            pos = end
        return [(fd, b"".join(parts)) for fd, parts in out]

    def _slow(self, data: bytes) -> list[tuple[int, bytes]]:
        out: list[tuple[int, list[bytes]]] = []
        for record in data[:-1].split(b"\n"):
            ts, stream, full, content = parse_record(record)
            fd = _FDS.get(stream)
            if fd is None:
                continue  # not a record
            pieces = []
            if self.timestamps and not self._midline[stream]:
                pieces.append(ts + b" ")
            pieces.append(content)
            if full:
                pieces.append(b"\n")
            self._midline[stream] = not full
            if out and out[-1][0] == fd:
                out[-1][1].extend(pieces)
            else:
                out.append((fd, pieces))
        return [(fd, b"".join(parts)) for fd, parts in out]
