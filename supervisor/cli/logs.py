"""``tug logs``, and the decoding of a followed log that ``run``, ``attach`` and ``logs`` share: CRI
log records from ``container.logs.data`` notifications back into the bytes the container wrote.
"""

from __future__ import annotations

import argparse
import binascii
import re
import sys

from tugwire import errors
from tugwire.crilog import parse_record, timestamp
from tugwire.syncclient import Client

from .options import parse_since

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

COMMANDS = ("logs",)

# The common case, a chunk of full lines of one stream with crilog's fixed-width timestamps, is
# decoded by one regex substitution (C speed, about 150 MB/s), not record by record in Python. A
# record starts after a newline, so the data gets one in front: a pattern that starts with a
# literal is searched for far faster than one anchored with ``^`` and ``re.M``.
_TS_WIDTH = len(timestamp(0))
_HEADER_WIDTH = _TS_WIDTH + len(b" stdout F ")
_FULL_RECORD = {
    stream: re.compile(rb"\n.{%d} %s F " % (_TS_WIDTH, stream)) for stream in (b"stdout", b"stderr")
}
# The shim writes a P record wherever a read from the pipe ended mid-line (it never holds a
# partial line back), so a 1 MiB chunk of short lines has a P record every ~64 KiB: one P used
# to send the whole chunk to the per-record path (46 MB/s for a followed `tug run`).
_ANY_RECORD = {
    stream: re.compile(rb"\n.{%d} %s [FP] " % (_TS_WIDTH, stream)) for stream in (b"stdout", b"stderr")
}
_PARTIAL_RECORD = {
    stream: re.compile(rb"\n.{%d} %s P " % (_TS_WIDTH, stream)) for stream in (b"stdout", b"stderr")
}
_FDS = {b"stdout": 1, b"stderr": 2}


class LogDecoder:
    """Turns CRI log records into the bytes the container wrote, per stream.

    ``feed`` takes data from ``container.logs.data`` (whole records; a torn record is kept until
    the rest arrives) and returns ``[(fd, bytes), ...]`` with fd 1 (stdout) or 2 (stderr), runs of
    one stream joined. A newline is added after an ``F`` record and nothing after a ``P`` one.
    With ``timestamps``, each line starts with its record's timestamp and a space (only the first
    piece of a line split into ``P`` records).
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
        stream = data[_TS_WIDTH + 1 : _TS_WIDTH + 7]
        if not self.timestamps and stream in _ANY_RECORD:
            joined = self._one_stream(data, stream)
            if joined is not None:
                return [(_FDS[stream], joined)]
            return self._slow(data)
        pattern = _FULL_RECORD.get(stream)
        if pattern is not None:
            stripped, n = pattern.subn(b"\n", b"\n" + data)
            if n == data.count(b"\n"):  # every record is a full line of this stream
                if not self.timestamps:
                    return [(_FDS[stream], stripped[1:])]
                # "<ts> stdout F <content>" -> "<ts> <content>"
                lines = data[:-1].split(b"\n")
                out = [line[:_TS_WIDTH] + line[_HEADER_WIDTH - 1 :] for line in lines]
                if self._midline[stream]:  # the end of a line begun by a P record
                    out[0] = lines[0][_HEADER_WIDTH:]
                self._midline[stream] = False
                return [(_FDS[stream], b"\n".join(out) + b"\n")]
        return self._slow(data)

    def _one_stream(self, data: bytes, stream: bytes) -> bytes | None:
        """The content of ``data`` if every record in it is of ``stream`` (F or P), else None.

        Each ``\\n<header> `` becomes ``\\n`` in one C-level substitution: with a newline put in
        front, that leaves every record's content preceded by the newline that ended the record
        before it, so dropping the first byte gives the container's bytes, except that a P
        record's newline is not the container's. Each header is ``_HEADER_WIDTH`` bytes longer
        than its replacement, so the P records' newlines are found in the result by arithmetic
        and cut out by slicing.
        """
        framed = b"\n" + data
        whole, n = _ANY_RECORD[stream].subn(b"\n", framed)
        if n != data.count(b"\n"):
            return None  # another stream, or something that is not a record
        cuts = [0]  # positions in ``whole`` of bytes to drop: the artificial newline, P newlines
        records = 0  # records whose header starts at or before the current match
        counted = 0
        for m in _PARTIAL_RECORD[stream].finditer(framed):
            records += framed.count(b"\n", counted, m.start() + 1)
            counted = m.start() + 1
            cuts.append(framed.index(b"\n", m.end()) - records * _HEADER_WIDTH)
        self._midline[stream] = cuts[-1] == len(whole) - 1 and len(cuts) > 1  # ends with a P
        if len(cuts) == 1:
            return whole[1:]
        ends = [*cuts[1:], len(whole)]
        return b"".join(whole[cut + 1 : end] for cut, end in zip(cuts, ends, strict=True))

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


def write_output(chunks: list[tuple[int, bytes]]) -> None:
    """Write decoded output, each piece to our stdout (fd 1) or stderr (fd 2), flushed."""
    for fd, data in chunks:
        stream = sys.stdout if fd == 1 else sys.stderr
        stream.flush()
        stream.buffer.write(data)
        stream.buffer.flush()


def log_data(msg: dict[str, Any], req_id: int) -> bytes | None:
    """The decoded data of a ``container.logs.data`` notification for ``req_id``, else None."""
    if msg.get("method") != "container.logs.data":
        return None
    params = msg.get("params")
    if not isinstance(params, dict) or params.get("request") != req_id:
        return None
    try:
        return binascii.a2b_base64(params.get("data") or "")
    except (binascii.Error, TypeError, ValueError) as exc:
        raise errors.Internal(f"malformed log data from tugd: {exc}") from exc


def _cmd_logs(args: argparse.Namespace, client: Client) -> int:
    params: dict[str, Any] = {"id": args.container, "follow": args.follow}
    if args.tail is not None:
        params["tail"] = args.tail
    if args.since is not None:
        params["since"] = args.since
    decoder = LogDecoder(timestamps=args.timestamps)
    logs = client.stream("container.logs", params)
    for msg in logs:
        data = log_data(msg, logs.id)
        if data:
            write_output(decoder.feed(data))
    return 0


def _tail_arg(text: str) -> int | None:
    if text == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid --tail {text!r}: want N or 'all'") from None
    return max(value, 0)


def _since_arg(text: str) -> str:
    try:
        return parse_since(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Add ``logs`` through ``build_parser``'s ``add``."""
    p = add("logs", "show a container's output")
    p.add_argument("-f", "--follow", action="store_true", help="follow until the container exits")
    p.add_argument("-n", "--tail", type=_tail_arg, metavar="N|all", help="only the last N lines")
    p.add_argument(
        "--since",
        type=_since_arg,
        metavar="TIME",
        help="RFC 3339 time, duration (10m) or unix timestamp",
    )
    p.add_argument("-t", "--timestamps", action="store_true", help="show timestamps")
    p.add_argument("container", metavar="CONTAINER")
    p.set_defaults(func=_cmd_logs)
