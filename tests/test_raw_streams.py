"""Raw log streams end to end (issue 14): real tugd on both backends, real shims and runc.

Every byte once across log rotation through the shim's live tap, a stuck raw follower that
never holds the container, ``tug logs`` of a finished log and with ``-t``, and a plain
JSON-RPC client that still gets its notifications."""

from __future__ import annotations

import hashlib
import subprocess
import time
from typing import Any

import pytest

from tugwire import crilog, frames
from tugwire.syncclient import Client

from .conftest import TUG, needs_root, needs_runc
from .helpers import output, run
from .waiting import wait_until

pytestmark = [pytest.mark.integration, needs_root, needs_runc]

# 20 MiB of numbered lines (about 120 MB of CRI records) through a log of 4 MiB files, all kept:
# about 30 rotations while it is followed. (A follower that lags by more than the kept files
# loses what was rotated away, as before: that is the log's retention, not the stream's.)
WRITER = "seq 1 2600000"
EXPECTED = b"".join(b"%d\n" % i for i in range(1, 2600001))


def test_foreground_run_gets_every_byte_once_across_rotation(make_daemon: Any, backend: str) -> None:
    d = make_daemon(backend=backend)
    out = d.tug(
        "run",
        "--rm",
        "--log-max-size",
        "4m",
        "--log-max-files",
        "64",
        "busybox",
        "sh",
        "-c",
        WRITER,
        timeout=300,
    )
    assert len(out.stdout) == len(EXPECTED)
    assert hashlib.sha256(out.stdout).digest() == hashlib.sha256(EXPECTED).digest()
    assert out.stderr == b""


def test_a_stuck_raw_follower_never_holds_the_container(make_daemon: Any, backend: str) -> None:
    """A raw ``container.logs {follow}`` that never reads: the container runs to its end at
    once, a reading follower gets every byte, and the log is whole."""
    d = make_daemon(backend=backend)
    with Client(d.socket) as c:
        cid = c.call(
            "container.create", {"image": "busybox", "cmd": ["sh", "-c", WRITER], "log_max_size": 1 << 30}
        )["id"]
        stuck = c.raw_stream("container.logs", {"id": cid, "follow": True})  # never read
        reader = subprocess.Popen(
            [TUG, "--socket", d.socket, "logs", "-f", cid], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            wid = c.send("container.wait", {"id": cid, "condition": "next-exit"})
            c.call("container.start", {"id": cid})
            t0 = time.monotonic()
            assert c.wait_for(wid)["exit_code"] == 0
            assert time.monotonic() - t0 < 60
            got, err = reader.communicate(timeout=120)
        finally:
            reader.kill()
            reader.wait()
            stuck.close()
    assert err == b""
    assert hashlib.sha256(got).digest() == hashlib.sha256(EXPECTED).digest()
    assert output(d, cid)[0] == EXPECTED


def test_logs_of_a_finished_container_raw_and_plain(make_daemon: Any, backend: str) -> None:
    d = make_daemon(backend=backend)
    cid, result = run(d, ["sh", "-c", "echo one; echo two >&2; printf 'no newline'"])
    assert result["exit_code"] == 0
    out = d.tug("logs", cid)
    assert (out.stdout, out.stderr) == (b"one\nno newline", b"two\n")
    stamped = d.tug("logs", "-t", cid).stdout.splitlines()
    assert [line.split(b" ", 1)[1] for line in stamped] == [b"one", b"no newline"]
    assert all(len(line.split(b" ", 1)[0]) == 30 for line in stamped)
    last = d.tug("logs", "--tail", "1", cid)  # whichever pipe the shim read last
    assert last.stdout + last.stderr in (b"no newline", b"two\n")
    # The raw stream itself: stdout and stderr frames, then the end frame's result.
    with Client(d.socket) as c:
        raw = c.raw_stream("container.logs", {"id": cid})
        items = [(item[0], item[1]) for item in raw if len(item) == 2]
        assert raw.result == {"dropped_bytes": 0}
        assert b"".join(data for kind, data in items if kind == frames.STDOUT) == b"one\nno newline"
        assert b"".join(data for kind, data in items if kind == frames.STDERR) == b"two\n"
        # A plain client on the same tugd sees base64 CRI records as before.
        rid = c.send("container.logs", {"id": cid})
        notes = []
        while True:
            msg = c.next_message()
            assert msg is not None
            if msg.get("id") == rid:
                break
            notes.append(msg["params"]["data"])
    import base64

    text = b"".join(base64.b64decode(n) for n in notes)
    assert sorted(crilog.parse_record(r)[3] for r in text.splitlines()) == [b"no newline", b"one", b"two"]


def test_raw_stream_errors_before_the_switch(make_daemon: Any, backend: str) -> None:
    d = make_daemon(backend=backend)
    from tugwire import errors

    with Client(d.socket) as c:
        with pytest.raises(errors.NotFound):
            c.raw_stream("container.logs", {"id": "nosuch"})
        with pytest.raises(errors.InvalidParams, match="stream mode"):
            c.call("container.logs", {"id": "nosuch", "stream": "base64"})
        wait_until(lambda: c.call("system.info") is not None, what="the connection still serves")


def _collect(raw: Any) -> bytes:
    return b"".join(item[1] for item in raw if len(item) == 2 and item[0] == frames.STDOUT)


def test_attach_input_travels_as_frames(make_daemon: Any, backend: str) -> None:
    """On the raw stream of ``container.logs``: stdin frames reach PID 1 byte for byte, an empty
    one closes its stdin (the half-close: the output still comes, then the end frame), and a
    control frame resizes its terminal."""
    d = make_daemon(backend=backend)
    blob = bytes(range(256)) * 64
    with Client(d.socket) as c:
        cid = c.call("container.create", {"image": "busybox", "cmd": ["cat"], "stdin": True})["id"]
        raw = c.raw_stream("container.logs", {"id": cid, "follow": True})
        c.call("container.start", {"id": cid})
        raw.send(frames.STDIN, blob)
        raw.send(frames.STDIN, b"")
        assert _collect(raw) == blob
        assert raw.result == {"dropped_bytes": 0}
        assert c.call("container.wait", {"id": cid})["exit_code"] == 0

        cmd = ["sh", "-c", "read line; stty size"]
        cid = c.call("container.create", {"image": "busybox", "cmd": cmd, "stdin": True, "tty": True})["id"]
        raw = c.raw_stream("container.logs", {"id": cid, "follow": True})
        c.call("container.start", {"id": cid})
        raw.send(frames.CONTROL, b'{"resize": [33, 101]}')
        raw.send(frames.STDIN, b"go\r")
        assert b"33 101" in _collect(raw)
