"""The suite's wait helpers themselves: a wait returns what it waited for, and one that reaches
its deadline fails naming what it waited for (no daemon needed)."""

from __future__ import annotations

import itertools
import json
import socket
import time
from typing import Any

import pytest

from .waiting import WaitTimeout, read_stream, wait_until


def test_wait_until_returns_the_first_true_value() -> None:
    counter = itertools.count()
    assert wait_until(lambda: next(counter) >= 3 and "there", 5, "the count") == "there"


def test_wait_until_fails_at_its_deadline_naming_what_it_waited_for() -> None:
    t0 = time.monotonic()
    with pytest.raises(WaitTimeout, match=r"timed out after 0.2s waiting for the moon; last seen: 'cheese'"):
        wait_until(lambda: False, 0.2, "the moon", describe=lambda: "cheese")
    assert 0.2 <= time.monotonic() - t0 < 5


def test_read_stream_fails_at_its_deadline_and_when_the_stream_ends(tmp_path: Any) -> None:
    from tugwire.syncclient import Client

    path = str(tmp_path / "s.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        server.listen()
        with Client(path) as c:
            rid = c.send("events.subscribe", {})
            peer, _ = server.accept()
            with peer:
                note = {"jsonrpc": "2.0", "method": "event", "params": {"action": "start"}}
                peer.sendall(json.dumps(note).encode() + b"\n")
                t0 = time.monotonic()
                with pytest.raises(WaitTimeout, match=r"waiting for a die; got \[\{'action': 'start'\}\]"):
                    read_stream(c, rid, lambda got: len(got) >= 2, timeout=0.3, what="a die")
                assert 0.3 <= time.monotonic() - t0 < 5
                peer.sendall(json.dumps({"jsonrpc": "2.0", "id": rid, "result": {}}).encode() + b"\n")
                with pytest.raises(AssertionError, match="the stream ended before a die"):
                    read_stream(c, rid, lambda got: len(got) >= 2, timeout=5, what="a die")
