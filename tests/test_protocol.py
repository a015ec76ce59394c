"""JSON-RPC 2.0 exactly as the specification says, against a real tugd over its socket."""

from __future__ import annotations

import json
import os
import socket
import stat
from typing import Any

import pytest

from .conftest import needs_root, needs_runc

pytestmark = [pytest.mark.integration, needs_root, needs_runc]


class Raw:
    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.sock.settimeout(10)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self) -> Any:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            assert chunk, "connection closed"
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw(daemon: Any) -> Any:
    r = Raw(daemon.socket)
    yield r
    r.close()


def test_parse_error_and_invalid_requests(raw: Raw) -> None:
    raw.send(b'{"jsonrpc": "2.0", "method": "system.info", "params": [}\n')
    assert raw.recv() == {
        "jsonrpc": "2.0",
        "id": None,
        "error": {"code": -32700, "message": "parse error", "data": {"kind": "parse_error"}},
    }
    raw.send(b'{"jsonrpc": "1.0", "method": "system.info", "id": 1}\n')
    reply = raw.recv()
    assert reply["id"] == 1 and reply["error"]["code"] == -32600
    raw.send(b'{"jsonrpc": "2.0", "method": 1, "params": "bar"}\n')
    assert raw.recv()["error"]["code"] == -32600
    raw.send(b"[]\n")
    assert raw.recv()["error"]["code"] == -32600
    raw.send(b'{"jsonrpc": "2.0", "method": "system.info", "id": true}\n')
    assert raw.recv()["error"]["code"] == -32600


def test_unknown_method_and_bad_params(raw: Raw) -> None:
    raw.send(b'{"jsonrpc": "2.0", "method": "nope.nothing", "id": "a"}\n')
    reply = raw.recv()
    assert reply["id"] == "a"
    assert reply["error"]["code"] == -32601
    assert reply["error"]["data"] == {"kind": "method_not_found"}
    raw.send(b'{"jsonrpc": "2.0", "method": "container.inspect", "params": {"id": 5}, "id": 2}\n')
    reply = raw.recv()
    assert reply["error"]["code"] == -32602
    assert reply["error"]["data"] == {"kind": "invalid_params", "param": "id"}
    raw.send(b'{"jsonrpc": "2.0", "method": "container.inspect", "params": {"id": "zz"}, "id": 3}\n')
    reply = raw.recv()
    assert reply["error"]["code"] == -32001
    assert reply["error"]["data"]["kind"] == "not_found"
    assert "Traceback" not in json.dumps(reply)


def test_batch_and_notifications(raw: Raw) -> None:
    raw.send(
        json.dumps(
            [
                {"jsonrpc": "2.0", "method": "system.info", "id": 1},
                {"jsonrpc": "2.0", "method": "system.info"},  # a notification: no answer
                {"jsonrpc": "2.0", "method": "nope", "id": 2},
                {"foo": "boo"},
                {"jsonrpc": "2.0", "method": "container.list", "params": {"all": True}, "id": "x"},
            ]
        ).encode()
        + b"\n"
    )
    replies = raw.recv()
    assert isinstance(replies, list)
    by_id = {json.dumps(r["id"]): r for r in replies}
    assert len(replies) == 4
    assert "result" in by_id["1"] and by_id["2"]["error"]["code"] == -32601
    assert by_id["null"]["error"]["code"] == -32600
    assert by_id['"x"']["result"] == []
    # A batch of notifications gets no answer at all; the next request is answered normally.
    raw.send(b'[{"jsonrpc": "2.0", "method": "system.info"}, {"jsonrpc": "2.0", "method": "nope"}]\n')
    raw.send(b'{"jsonrpc": "2.0", "method": "system.info", "id": 9}\n')
    assert raw.recv()["id"] == 9


def test_huge_line_is_refused_and_the_connection_stays_sane(raw: Raw) -> None:
    raw.send(
        b'{"jsonrpc": "2.0", "method": "system.info", "params": {"x": "'
        + b"a" * (2 << 20)
        + b'"}, "id": 1}\n'
    )
    reply = raw.recv()
    assert reply["error"]["code"] == -32600
    assert "exceeds" in reply["error"]["message"]
    raw.send(b'{"jsonrpc": "2.0", "method": "system.info", "id": 2}\n')
    assert raw.recv()["id"] == 2


def test_deep_nesting_is_a_parse_error(raw: Raw) -> None:
    raw.send(b"[" * 100000 + b"]" * 100000 + b"\n")
    assert raw.recv()["error"]["code"] == -32700
    raw.send(b'{"jsonrpc": "2.0", "method": "system.info", "id": 2}\n')
    assert raw.recv()["id"] == 2


def test_socket_permissions(daemon: Any) -> None:
    mode = stat.S_IMODE(os.stat(daemon.socket).st_mode)
    assert mode == 0o660
    assert stat.S_IMODE(os.stat(daemon.state).st_mode) in (0o700, 0o710)
    assert not stat.S_IMODE(os.stat(daemon.root).st_mode) & 0o077


def test_peer_credentials_are_checked(daemon: Any) -> None:
    """A non-root peer is refused even if it could open the socket (mode 0666 for the test)."""
    os.chmod(daemon.base, 0o711)
    os.chmod(daemon.state, 0o711)
    os.chmod(daemon.socket, 0o666)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.setgid(65534)
            os.setuid(65534)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(daemon.socket)  # the mode lets us in; the peer check must not
            s.settimeout(5)
            try:
                s.sendall(b'{"jsonrpc": "2.0", "method": "system.info", "id": 1}\n')
                data = b""
                while chunk := s.recv(4096):  # the permission_denied error, then EOF
                    data += chunk
                code = 0 if b'"kind":"permission_denied"' in data and b'"result"' not in data else 3
            except (BrokenPipeError, ConnectionResetError):
                code = 0  # closed on us: refused
        except Exception:
            code = 2
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    os.chmod(daemon.state, 0o700)
    assert os.waitstatus_to_exitcode(status) == 0


def test_requests_on_one_connection_are_answered_out_of_order(daemon: Any, raw: Raw) -> None:
    cid = daemon.call("container.create", {"image": "busybox", "cmd": ["sleep", "1000"]})["id"]
    raw.send(
        json.dumps(
            {
                "jsonrpc": "2.0",
                "method": "container.wait",
                "params": {"id": cid, "condition": "next-exit"},
                "id": "wait",
            }
        ).encode()
        + b"\n"
    )
    raw.send(
        json.dumps(
            {"jsonrpc": "2.0", "method": "container.start", "params": {"id": cid}, "id": "start"}
        ).encode()
        + b"\n"
    )
    assert raw.recv()["id"] == "start"
    raw.send(
        json.dumps(
            {"jsonrpc": "2.0", "method": "container.kill", "params": {"id": cid}, "id": "kill"}
        ).encode()
        + b"\n"
    )
    got = {raw.recv()["id"], raw.recv()["id"]}
    assert got == {"kill", "wait"}
