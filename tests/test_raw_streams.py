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


# ------------------------------------------------------------------------------------- exec


def _exec_frames(raw: Any) -> tuple[bytes, bytes, list[bytes]]:
    """Everything of a raw exec stream to its end: stdout, stderr, and its control frames."""
    out: dict[int, list[bytes]] = {frames.STDOUT: [], frames.STDERR: [], frames.CONTROL: []}
    for item in raw:
        if len(item) == 2:
            out[item[0]].append(item[1])
    return b"".join(out[frames.STDOUT]), b"".join(out[frames.STDERR]), out[frames.CONTROL]


def test_exec_bytes_stdin_half_close_and_exit_code_as_frames(make_daemon: Any, backend: str) -> None:
    """A raw ``container.exec``: the ``started`` control frame, every byte value both ways (1 MiB
    in, fed from a thread while the output is read), the empty stdin frame as EOF with the
    output still coming after it, stderr apart, the exit code in the end frame; ``tug exec -i``
    the same bytes through the CLI."""
    import json
    import threading

    d = make_daemon(backend=backend)
    blob = bytes(range(256)) * 4096
    with Client(d.socket) as c:
        cid = c.call("container.create", {"image": "busybox", "cmd": ["sleep", "1000"]})["id"]
        c.call("container.start", {"id": cid})
        cmd = ["sh", "-c", "cat; printf 'e\\0\\377' >&2; exit 7"]
        raw = c.raw_stream("container.exec", {"id": cid, "cmd": cmd, "stdin": True})

        def feed() -> None:
            for i in range(0, len(blob), 50000):
                raw.send(frames.STDIN, blob[i : i + 50000])
            raw.send(frames.STDIN, b"")

        feeder = threading.Thread(target=feed)
        feeder.start()
        out, err, controls = _exec_frames(raw)
        feeder.join()
        assert hashlib.sha256(out).digest() == hashlib.sha256(blob).digest() and len(out) == len(blob)
        assert err == b"e\0\377"
        assert raw.result["exit_code"] == 7 and raw.result["signal"] is None
        started = json.loads(controls[0])["started"]
        assert started["pid"] > 0 and started["exec_id"] == raw.result["exec_id"]
        # A command runc cannot start: no frame but the end, its 127 and runc's message.
        raw = c.raw_stream("container.exec", {"id": cid, "cmd": ["no-such-program"]})
        assert _exec_frames(raw) == (b"", b"", [])
        assert raw.result["exit_code"] == 127 and "no-such-program" in raw.result["error"]
    got = d.tug("exec", "-i", cid, "sh", "-c", "cat; exit 3", input=blob, check=False)
    assert (got.returncode, len(got.stdout), got.stderr) == (3, len(blob), b"")
    assert got.stdout == blob
    d.call("container.delete", {"id": cid, "force": True})


def test_exec_terminal_resize_as_a_control_frame(make_daemon: Any, backend: str) -> None:
    d = make_daemon(backend=backend)
    with Client(d.socket) as c:
        cid = c.call("container.create", {"image": "busybox", "cmd": ["sleep", "1000"]})["id"]
        c.call("container.start", {"id": cid})
        params = {
            "id": cid,
            "cmd": ["sh", "-c", "stty size; read line; stty size"],
            "stdin": True,
            "tty": True,
        }
        raw = c.raw_stream("container.exec", {**params, "rows": 20, "cols": 70})
        seen = b""
        for item in raw:
            if len(item) == 2 and item[0] != frames.CONTROL:
                assert item[0] == frames.STDOUT  # a terminal has one stream
                seen += item[1]
            if b"20 70" in seen:  # the size it started with
                break
        raw.send(frames.CONTROL, b'{"resize": [33, 101]}')
        raw.send(frames.STDIN, b"go\r")
        out, err, _ = _exec_frames(raw)
        assert err == b"" and b"33 101" in out
        assert raw.result["exit_code"] == 0
    d.call("container.delete", {"id": cid, "force": True})


def test_a_stuck_exec_reader_holds_only_its_exec(make_daemon: Any, backend: str) -> None:
    """A raw exec whose client never reads holds only that exec (blocked on its pipe, as
    docker's): other execs and the container's own log go on; once the client closes, the exec
    runs to its end, its output dropped, and the shim reaps it."""
    d = make_daemon(backend=backend)
    with Client(d.socket) as c:
        cid = c.call("container.create", {"image": "busybox", "cmd": ["sh", "-c", "echo up; sleep 1000"]})[
            "id"
        ]
        c.call("container.start", {"id": cid})
        stuck = c.raw_stream(
            "container.exec", {"id": cid, "cmd": ["sh", "-c", WRITER + "; echo done > /tmp/x"]}
        )
        try:
            for _ in range(3):
                raw = c.raw_stream("container.exec", {"id": cid, "cmd": ["echo", "hi"]})
                assert _exec_frames(raw)[0] == b"hi\n" and raw.result["exit_code"] == 0
            assert output(d, cid)[0] == b"up\n"
            busy = c.call("container.top", {"id": cid})["processes"]
            assert any("seq" in " ".join(p) for p in busy), busy  # held by its unread output
        finally:
            stuck.close()

        def finished() -> bool:
            raw = c.raw_stream("container.exec", {"id": cid, "cmd": ["cat", "/tmp/x"]})
            return _exec_frames(raw)[0] == b"done\n"

        wait_until(finished, timeout=120, what="the unread exec runs to its end")
        wait_until(
            lambda: not any("seq" in " ".join(p) for p in c.call("container.top", {"id": cid})["processes"]),
            what="the exec reaped",
        )
    d.call("container.delete", {"id": cid, "force": True})
