"""The one CRI log reader of :mod:`tugwire.crilog` (issue 13: the shim, tugd, build and the CLI
read through it): whole records of open files, ``--tail``/``--since``, and the decoder back to
the bytes the container wrote, from real log files written by :class:`crilog.LogWriter`."""

from __future__ import annotations

import io
from collections import deque
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from tugwire import crilog
from tugwire.timefmt import NS

writes = st.lists(
    st.tuples(st.sampled_from([b"stdout", b"stderr"]), st.binary(min_size=1, max_size=200)),
    max_size=30,
)


def reference_select(files: list[bytes], tail: int | None, since: bytes | None) -> list[bytes]:
    """The shim's selection as it was written before the reader had one home."""
    selected: deque[bytes] | list[bytes] = deque(maxlen=tail) if tail is not None else []
    for data in files:
        end = data.rfind(b"\n") + 1
        if not end:
            continue
        records = data[: end - 1].split(b"\n")
        if since is not None:
            records = [r for r in records if r[: len(since)] >= since]
        selected.extend(records)
    return list(selected) if tail != 0 else []


@given(
    st.lists(st.lists(st.integers(0, 50), max_size=8), max_size=4),
    st.lists(st.booleans(), max_size=4),
    st.one_of(st.none(), st.integers(0, 12)),
    st.one_of(st.none(), st.integers(0, 50)),
)
def test_select_of_open_files_matches_the_shims_old_selection(
    files: list[list[int]], torn: list[bool], tail: int | None, since_sec: int | None
) -> None:
    contents = []
    for i, seconds in enumerate(files):
        data = b"".join(
            crilog.format_chunk(b"stdout", b"line %d\n" % s, crilog.timestamp(s * NS)) for s in seconds
        )
        if i < len(torn) and torn[i]:
            data += crilog.timestamp(99 * NS) + b" stdout F half-writ"  # being written
        contents.append(data)
    since = crilog.timestamp(since_sec * NS) if since_sec is not None else None
    handles = [io.BytesIO(data) for data in contents]
    got = crilog.select(crilog.records_of(handles), tail=tail, since=since)
    assert got == reference_select(contents, tail, since)
    for f, data in zip(handles, contents, strict=True):  # each left after its last whole record
        assert f.tell() == data.rfind(b"\n") + 1


def test_records_of_reads_on_from_where_it_left() -> None:
    ts = crilog.timestamp(5 * NS)
    f = io.BytesIO(ts + b" stdout F a\n" + ts + b" stdout P b")
    assert list(crilog.records_of([f])) == [ts + b" stdout F a"]
    f.seek(0, io.SEEK_END)
    f.write(b"c\n")
    f.seek(len(ts + b" stdout F a\n"))
    assert list(crilog.records_of([f])) == [ts + b" stdout P bc"]
    assert list(crilog.records_of([f])) == []


@given(writes, st.integers(4096, 20000), st.integers(1, 4))
def test_written_log_reads_back_as_written(tmp_path_factory: Any, chunks: list[tuple[bytes, bytes]],
                                           max_size: int, max_files: int) -> None:  # fmt: skip
    """LogWriter, then the files read back whole (``iter_chunks``) and decoded: each stream's
    bytes as the container wrote them (for the chunks the rotation kept)."""
    path = str(tmp_path_factory.mktemp("log") / "ctr.log")
    writer = crilog.LogWriter(path, max_size=1 << 30, max_files=max_files)
    written = {1: b"", 2: b""}
    for stream, data in chunks:
        writer.write(stream, data)
        written[1 if stream == b"stdout" else 2] += data
    writer.close()
    decoder = crilog.LogDecoder()
    got = {1: b"", 2: b""}
    for chunk in crilog.iter_chunks(crilog.rotated_paths(path, max_files), size=max_size):
        for fd, data in decoder.feed(chunk):
            got[fd] += data
    # A P record gets no newline, an F record its own: the bytes are exactly the container's.
    assert got == written
    records = list(crilog.iter_records(crilog.rotated_paths(path, max_files)))
    assert crilog.select_records(crilog.rotated_paths(path, max_files), tail=3) == records[-3:]


# A run: records of one pipe read share a header (timestamp, stream); its lines are full (F) but
# the last may be a piece (P). Contents are any bytes but a newline, empty ones too; the year of a
# timestamp may differ (a clock that was wrong at boot), which the run-at-a-time reading must
# notice like any other header that differs.
runs = st.lists(
    st.tuples(
        st.sampled_from([b"2026-12-07T04:05:06.%09dZ", b"1970-01-01T00:00:01.%09dZ"]),
        st.integers(min_value=0, max_value=3),
        st.sampled_from([b"stdout", b"stderr"]),
        st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), min_size=1, max_size=25),
        st.booleans(),
    ),
    max_size=12,
)


def _merged(chunks: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    for fd, data in chunks:
        if data and out and out[-1][0] == fd:
            out[-1] = (fd, out[-1][1] + data)
        elif data:
            out.append((fd, data))
    return out


@given(runs, st.lists(st.integers(min_value=0), max_size=6), st.sampled_from([1, 50, 16384]), st.booleans())
@example(  # a run's header comes back after other records: the run must not swallow them
    [
        (b"2026-12-07T04:05:06.%09dZ", 0, b"stdout", [b"a", b"b"], False),
        (b"1970-01-01T00:00:01.%09dZ", 0, b"stdout", [b"c"], False),
        (b"2026-12-07T04:05:06.%09dZ", 0, b"stdout", [b"e"], False),
    ],
    [],
    16 * 1024,
    False,
)
def test_fast_decoder_equals_the_record_by_record_one(
    items: list[tuple[bytes, int, bytes, list[bytes], bool]], cuts: list[int], piece: int, timestamps: bool
) -> None:
    """The run-at-a-time decoder (headers cut by replace in pieces of any size, runs proved by
    counting) gives what reading record by record gives, however the data is cut."""
    lines = []
    for ts_format, ts, stream, contents, partial_last in items:
        head = b"%s %s " % (ts_format % ts, stream)
        for i, content in enumerate(contents):
            tag = b"P" if partial_last and i == len(contents) - 1 else b"F"
            lines.append(head + tag + b" " + content + b"\n")
    data = b"".join(lines)
    expected = _merged(crilog.LogDecoder(timestamps=timestamps)._slow(data))
    saved = crilog._PIECE
    crilog._PIECE = piece
    try:
        decoder = crilog.LogDecoder(timestamps=timestamps)
        got: list[tuple[int, bytes]] = []
        pos = 0
        for cut in sorted(c % (len(data) + 1) for c in cuts):
            got += decoder.feed(data[pos:cut])
            pos = cut
        got += decoder.feed(data[pos:])
    finally:
        crilog._PIECE = saved
    assert _merged(got) == expected
