"""The pure parts of the CLI's terminal handling: detach keys and their scanner."""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor.cli.tty import DetachScanner, parse_detach_keys
from tugwire import errors


def test_parse_detach_keys() -> None:
    assert parse_detach_keys("ctrl-p,ctrl-q") == b"\x10\x11"
    assert parse_detach_keys("ctrl-a,x") == b"\x01x"
    assert parse_detach_keys("ctrl-@,ctrl-[,ctrl-\\,ctrl-],ctrl-^,ctrl-_") == bytes([0, 27, 28, 29, 30, 31])
    for bad in ("", "ctrl-", "ctrl-pp", "ab", "ctrl-1", "p,,q"):
        with pytest.raises(errors.InvalidArgument):
            parse_detach_keys(bad)


def test_scanner_detaches_on_the_sequence_split_anywhere() -> None:
    s = DetachScanner(b"\x10\x11")
    assert s.feed(b"ab\x10") == (b"ab", False)
    assert s.feed(b"\x11rest") == (b"", True)


def test_scanner_forwards_a_broken_sequence() -> None:
    s = DetachScanner(b"\x10\x11")
    assert s.feed(b"\x10x") == (b"\x10x", False)
    assert s.feed(b"\x10\x10") == (b"\x10", False)  # the second ^P may start the sequence
    assert s.feed(b"\x11") == (b"", True)


@given(st.binary(), st.lists(st.integers(min_value=1, max_value=7)))
def test_scanner_passes_data_without_the_sequence_unchanged(data: bytes, cuts: list[int]) -> None:
    keys = b"\x10\x11"
    data = data.replace(keys, b"")
    if b"\x10\x11" in data:
        return
    s = DetachScanner(keys)
    out = b""
    i = 0
    for n in cuts:
        got, detached = s.feed(data[i : i + n])
        assert not detached
        out += got
        i += n
    got, detached = s.feed(data[i:])
    out += got
    assert not detached
    held = data[len(out) :]
    assert data.startswith(out) and held in (b"", b"\x10")  # at most a trailing ^P is held


def test_console_socket_of_a_long_state_dir_lives_in_a_temp_dir(tmp_path: Any) -> None:
    """A state dir too long for a socket address: the console socket goes to a private temp dir
    (tempfile and shutil imported only then, not by every shim's template), removed on close."""
    from shimd.console import MAX_SUN_PATH, ConsoleSocket

    deep = tmp_path / ("d" * (MAX_SUN_PATH + 10))
    deep.mkdir()
    sock = ConsoleSocket(str(deep), "console.sock")
    try:
        assert not sock.path.startswith(str(deep))
        assert os.path.exists(sock.path)
        tmp = os.path.dirname(sock.path)
    finally:
        sock.close()
    assert not os.path.exists(tmp)
