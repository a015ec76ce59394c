"""``container.run`` (create, start and follow in one call, what a foreground ``tug run`` sends):
real tugd on both backends, real shims and runc."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from tugwire import errors, frames
from tugwire.syncclient import Client, RawStream

from .conftest import TUG, needs_root, needs_runc

pytestmark = [pytest.mark.integration, needs_root, needs_runc]


def _run(sock: str, params: dict[str, Any]) -> tuple[dict[str, Any], bytes, bytes, Any]:
    """One ``container.run`` on a connection of its own: its answer, stdout, stderr, end."""
    with Client(sock) as c:
        opened = c.call("container.run", {**params, "stream": frames.RAW})
        stream = RawStream(c)
        out, err = b"", b""
        for kind, data in stream:  # type: ignore[misc]  # no wakeup fd: never ()
            if kind == frames.STDOUT:
                out += data
            else:
                err += data
        return opened, out, err, stream.result


def test_run_streams_the_output_and_ends_with_the_exit(make_daemon: Any, backend: str) -> None:
    d = make_daemon(backend=backend)
    opened, out, err, end = _run(
        d.socket,
        {"image": "busybox", "cmd": ["sh", "-c", "echo out; echo err >&2; exit 3"], "auto_remove": True},
    )
    assert opened["stream"] == frames.RAW and len(opened["id"]) == 64 and opened["name"]
    assert (out, err) == (b"out\n", b"err\n")
    assert end["exit_code"] == 3 and end["state"] == "removed" and end["dropped_bytes"] == 0
    with Client(d.socket) as c:  # removed when the call ends: the wait was for "removed"
        assert c.call("container.list", {"all": True}) == []


def test_run_without_auto_remove_keeps_the_exited_container(make_daemon: Any, backend: str) -> None:
    d = make_daemon(backend=backend)
    opened, out, _, end = _run(d.socket, {"image": "busybox", "cmd": ["echo", "kept"]})
    assert out == b"kept\n" and end["exit_code"] == 0
    with Client(d.socket) as c:
        rec = c.call("container.inspect", {"id": opened["id"]})
        assert rec["state"] == "exited"
        c.call("container.delete", {"id": opened["id"]})


def test_a_start_that_fails_is_the_calls_error_and_removes_an_auto_removed_one(
    make_daemon: Any, backend: str
) -> None:
    d = make_daemon(backend=backend)
    with Client(d.socket) as c:
        with pytest.raises(errors.TugError) as info:
            c.call(
                "container.run",
                {"image": "busybox", "cmd": ["/nonexistent"], "auto_remove": True, "stream": "raw"},
            )
        assert "no such file" in info.value.message and len(info.value.details["container_id"]) == 64
        assert c.call("container.list", {"all": True}) == []  # gone before the error came
        with pytest.raises(errors.TugError) as info:
            c.call("container.run", {"image": "busybox", "cmd": ["/nonexistent"], "stream": "raw"})
        cid = info.value.details["container_id"]
        assert c.call("container.inspect", {"id": cid})["state"] == "created"  # kept, as docker does
        c.call("container.delete", {"id": cid})
        # The connection is still JSON-RPC after an error (nothing switched).
        assert c.call("container.list", {"all": True}) == []


def test_a_create_that_fails_and_a_call_without_a_raw_stream(make_daemon: Any, backend: str) -> None:
    d = make_daemon(backend=backend)
    with Client(d.socket) as c:
        with pytest.raises(errors.NotFound) as info:
            c.call("container.run", {"image": "nosuch:1", "cmd": ["true"], "stream": "raw"})
        assert info.value.details.get("field") == "image" and "container_id" not in info.value.details
        with pytest.raises(errors.InvalidParams):
            c.call("container.run", {"image": "busybox", "cmd": ["true"]})
        assert c.call("container.list", {"all": True}) == []


def test_tug_run_is_one_connection_and_one_call(make_daemon: Any, backend: str) -> None:
    """What ``tug run --rm`` sends, counted with strace: one connect, one request."""
    d = make_daemon(backend=backend)
    trace = ["strace", "-f", "-s", "200", "-e", "trace=connect,sendto"]
    argv = [*trace, TUG, "--socket", d.socket, "run", "--rm", "busybox", "true"]
    try:
        cp = subprocess.run(argv, capture_output=True, timeout=60, check=True)
    except FileNotFoundError:
        pytest.skip("strace is not installed")
    lines = cp.stderr.decode().splitlines()
    assert sum(1 for line in lines if line.startswith("connect(") or "] connect(" in line) == 1
    sent = [line for line in lines if "sendto(" in line]
    assert len(sent) == 1 and "container.run" in sent[0]


def test_run_detached_is_create_and_start_in_one_call(make_daemon: Any, backend: str) -> None:
    d = make_daemon(backend=backend)
    with Client(d.socket) as c:
        got = c.call("container.run", {"image": "busybox", "cmd": ["sleep", "100"], "detach": True})
        assert got["pid"] > 0 and c.call("container.inspect", {"id": got["id"]})["state"] == "running"
        c.call("container.delete", {"id": got["id"], "force": True})
    # The CLI: a start that fails is docker's 127 and leaves nothing with --rm; a create that
    # fails is 125.
    r = subprocess.run(
        [TUG, "--socket", d.socket, "run", "-d", "--rm", "busybox", "/nonexistent"], capture_output=True
    )
    assert r.returncode == 127 and b"no such file" in r.stderr
    r = subprocess.run(
        [TUG, "--socket", d.socket, "run", "-d", "--pull", "never", "nosuch:1"], capture_output=True
    )
    assert r.returncode == 125
    with Client(d.socket) as c:
        assert c.call("container.list", {"all": True}) == []
