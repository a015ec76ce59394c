"""tug-cri's streaming server (issue 16): Exec, Attach and PortForward URLs.

The SPDY/3.1 codec (cri/spdy.py) byte for byte and against malformed frames; the tokens (single
use, expiring: a fake clock); then a real tugd, real runc, a real tug-cri driven by the real
crictl (cri-tools v1.37.0, Go: SPDY/3.1 as kubelet speaks it) for exec (with stdin; with a
terminal, its size and an exit code), attach and port-forward, and by a WebSocket
``v5.channel.k8s.io`` client written with wsproto.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
import urllib.parse
import zlib
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
import h11
import pexpect
import pytest
import wsproto.events as wse
from wsproto import ConnectionType, WSConnection

from cri import portforward, spdy
from cri.gen import api_pb2
from cri.streaming import StreamRequest, Tokens, exit_status, json_values
from tugwire.errors import MethodNotFound

from .conftest import needs_root, needs_runc
from .cri_helpers import TugCri, crictl, crictl_path, make_tug_cri
from .waiting import wait_until

__all__ = ["crictl_path", "make_tug_cri"]  # fixtures, imported for this module's tests

F = TypeVar("F", bound=Callable[..., Any])


def integration(fn: F) -> F:
    """Real tugd, runc and tug-cri (and crictl, built on first use: hence the long timeout)."""
    for mark in (pytest.mark.integration, needs_root, needs_runc, pytest.mark.timeout(3600)):
        fn = mark(fn)
    return fn


# -- the SPDY codec ---------------------------------------------------------------------------


def test_dictionary_is_the_spdy3_one() -> None:
    # zlib names a preset dictionary by its Adler-32 in each stream: this is the SPDY/3 one.
    assert len(spdy.DICTIONARY) == 1423
    assert zlib.adler32(spdy.DICTIONARY) == 0xE3C6A7C2
    assert spdy.DICTIONARY.startswith(b"\x00\x00\x00\x07options\x00\x00\x00\x04head")
    assert spdy.DICTIONARY.endswith(b",utf-,*,enq=0.")


def test_frames_round_trip_through_two_codecs() -> None:
    client, server = spdy.Codec(), spdy.Codec()
    frames: list[spdy.Frame] = [
        spdy.SynStream(1, {"streamtype": ["error"]}),
        spdy.SynStream(3, {"streamtype": ["stdin"], "port": ["80"]}, priority=2, fin=True),
        spdy.SynStream(5, {"x": ["a", "b"]}, associated_to=1, unidirectional=True),
        spdy.SynReply(1, {}),
        spdy.HeadersFrame(1, {"k": ["v"]}, fin=True),
        spdy.Data(1, b"hello"),
        spdy.Data(3, b"", fin=True),
        spdy.RstStream(5, spdy.CANCEL),
        spdy.Settings([(0, 7, 65536), (1, 4, 100)], clear=True),
        spdy.Ping(7),
        spdy.GoAway(5, 1),
        spdy.WindowUpdate(3, 1000),
    ]
    wire = b"".join(client.encode(f) for f in frames)
    # Fed byte by byte: a frame is returned once whole, never before.
    got: list[spdy.Frame] = []
    for i in range(len(wire)):
        got += server.feed(wire[i : i + 1])
    assert got == frames


def test_known_bytes() -> None:
    c = spdy.Codec()
    assert c.encode(spdy.Data(1, b"ab", fin=True)) == b"\x00\x00\x00\x01\x01\x00\x00\x02ab"
    assert c.encode(spdy.Ping(1)) == b"\x80\x03\x00\x06\x00\x00\x00\x04\x00\x00\x00\x01"
    assert (
        c.encode(spdy.RstStream(3, 5)) == b"\x80\x03\x00\x03\x00\x00\x00\x08\x00\x00\x00\x03\x00\x00\x00\x05"
    )
    assert c.encode(spdy.WindowUpdate(0, 9)) == b"\x80\x03\x00\x09\x00\x00\x00\x08" + b"\0\0\0\0\0\0\0\x09"
    # A SYN_STREAM's header block: zlib with the SPDY dictionary (FDICT set, its Adler-32).
    syn = c.encode(spdy.SynStream(1, {"streamtype": ["error"]}))
    assert syn[:4] == b"\x80\x03\x00\x01"
    block = syn[18:]
    assert block[1] & 0x20 and struct.unpack(">I", block[2:6])[0] == zlib.adler32(spdy.DICTIONARY)
    inflate = zlib.decompressobj(zdict=spdy.DICTIONARY)
    assert inflate.decompress(block) == spdy.encode_header_block({"streamtype": ["error"]})


def _control(kind: int, payload: bytes, flags: int = 0, version: int = 3) -> bytes:
    return struct.pack(">HHI", 0x8000 | version, kind, flags << 24 | len(payload)) + payload


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (_control(spdy.PING, b"\0\0\0\1", version=2), "version 2"),
        (_control(5, b""), "unknown control frame type 5"),
        (_control(spdy.PING, b"\0\0\1"), "wrong length"),
        (_control(spdy.RST_STREAM, b"\0\0\0\1\0\0\0\0"), "status 0"),
        (_control(spdy.RST_STREAM, b"\0\0\0\0\0\0\0\1"), "stream 0"),
        (_control(spdy.WINDOW_UPDATE, b"\0\0\0\1\0\0\0\0"), "WINDOW_UPDATE of 0"),
        (_control(spdy.SETTINGS, b"\0\0\0\2\0\0\0\1\0\0\0\1"), "SETTINGS of 2 entries"),
        (_control(spdy.GOAWAY, b"\0\0\0\1"), "wrong length"),
        (_control(spdy.SYN_STREAM, b"\0\0\0\1\0\0"), "wrong length"),
        (_control(spdy.SYN_STREAM, b"\0\0\0\1\0\0\0\0\0\0" + b"not zlib"), "does not inflate"),
        (b"\0\0\0\0\0\0\0\1x", "DATA frame on stream 0"),
    ],
)
def test_malformed_frames_are_protocol_errors(wire: bytes, message: str) -> None:
    with pytest.raises(spdy.ProtocolError, match=message):
        spdy.Codec().feed(wire)


def _syn_with_block(raw_block: bytes) -> bytes:
    deflate = zlib.compressobj(zdict=spdy.DICTIONARY)
    block = deflate.compress(raw_block) + deflate.flush(zlib.Z_SYNC_FLUSH)
    return _control(spdy.SYN_STREAM, b"\0\0\0\1\0\0\0\0\0\0" + block)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\0\0\0\1\0\0\0\x05ab", "runs past its end"),
        (b"\0\0\0\1\0\0\0\1A\0\0\0\0", "not lower case"),
        (b"\0\0\0\2\0\0\0\1a\0\0\0\0\0\0\0\1a\0\0\0\0", "given twice"),
        (b"\0\0\0\0junk", "bytes after"),
        (b"\0\0", "truncated"),
    ],
)
def test_malformed_header_blocks(raw: bytes, message: str) -> None:
    with pytest.raises(spdy.ProtocolError, match=message):
        spdy.Codec().feed(_syn_with_block(raw))


def test_header_bomb_is_refused() -> None:
    raw = spdy.encode_header_block({"a": ["x" * (spdy.MAX_HEADER_BLOCK + 10)]})
    with pytest.raises(spdy.ProtocolError, match="larger than"):
        spdy.Codec().feed(_syn_with_block(raw))


# -- tokens, statuses ---------------------------------------------------------------------------


def test_tokens_are_single_use_and_expire() -> None:
    now = [100.0]
    tokens = Tokens(ttl=60, clock=lambda: now[0])
    req = StreamRequest("exec", container_id="c", cmd=["true"], stdout=True)
    a, b = tokens.issue(req), tokens.issue(req)
    assert a != b and len(a) >= 11
    assert tokens.consume(a) is req
    assert tokens.consume(a) is None  # single use
    now[0] += 59.9
    assert tokens.consume(b) is req
    c = tokens.issue(req)
    now[0] += 60
    assert tokens.consume(c) is None  # expired
    assert tokens.consume("nonsense") is None


def test_exit_status_shapes() -> None:
    class P:
        exit_code: int | None = 0
        error: str | None = None

    p: Any = P()
    assert exit_status(p, None) == ({"metadata": {}, "status": "Success"}, None)
    p.exit_code = 3
    status, message = exit_status(p, None)
    assert status["reason"] == "NonZeroExitCode"
    assert status["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]
    assert message and "exit status 3" in message
    assert exit_status(p, "boom")[0]["message"] == "boom"
    assert json_values(b'{"Width":1,"Height":2}\n{"Width":3,"Height":4}') == [
        {"Width": 1, "Height": 2},
        {"Width": 3, "Height": 4},
    ]


# -- with tugd, runc, tug-cri and crictl --------------------------------------------------------


def _running(d: Any, name: str = "s", **params: Any) -> str:
    cid: str = d.call(
        "container.create",
        {"image": "busybox", "pod_id": "f00d" * 16, "name": f"k8s_{name}_f00d_1", **params},
    )["id"]
    d.call("container.start", {"id": cid})
    return cid


def _crictl_run(path: str, cri: TugCri, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    crictl(path, cri, "version")  # writes the config file
    config = os.path.join(cri.base, "crictl.yaml")
    return subprocess.run([path, "--config", config, *args], input=stdin, capture_output=True, timeout=120)


@integration
def test_crictl_exec_with_stdin_exit_code_and_bad_requests(
    make_daemon: Any, make_tug_cri: Any, crictl_path: str, backend: str
) -> None:
    d = make_daemon(backend)
    cri: TugCri = make_tug_cri(d)
    cid = _running(d, cmd=["sleep", "600"])
    r = _crictl_run(
        crictl_path, cri, "exec", "-i", cid, "sh", "-c", "cat; echo err >&2; exit 3", stdin=b"hello\n"
    )
    # crictl reads the exit code from the error stream's status and reports it (and exits 1).
    assert (r.stdout, r.returncode) == (b"hello\n", 1), (r.stderr, cri.read_log()[-2000:])
    assert r.stderr.startswith(b"err\n")
    assert b"command terminated with exit code 3" in r.stderr
    assert "over SPDY/3.1, v5.channel.k8s.io" in cri.read_log()  # client-go offers v5 first
    r = _crictl_run(crictl_path, cri, "exec", cid, "sh", "-c", "echo fine")
    assert (r.stdout, r.returncode) == (b"fine\n", 0)
    # Megabytes both ways (DATA frames of 32 KiB out; whatever crictl sends in).
    blob = os.urandom(3 << 20)
    r = _crictl_run(crictl_path, cri, "exec", "-i", cid, "cat", stdin=blob)
    assert (len(r.stdout), r.stdout == blob, r.returncode) == (len(blob), True, 0), r.stderr
    # A command that cannot run: crictl reports it, exit code 127 as the status carries it.
    r = _crictl_run(crictl_path, cri, "exec", cid, "/no/such")
    assert r.returncode != 0
    rt = cri.runtime

    def code(call: Any, req: Any) -> grpc.StatusCode:
        with pytest.raises(grpc.RpcError) as info:
            call(req)
        c: grpc.StatusCode = info.value.code()
        return c

    ex = api_pb2.ExecRequest
    assert code(rt.Exec, ex(container_id="nope", cmd=["true"], stdout=True)) == grpc.StatusCode.NOT_FOUND
    assert code(rt.Exec, ex(container_id=cid, cmd=[], stdout=True)) == grpc.StatusCode.INVALID_ARGUMENT
    assert code(rt.Exec, ex(container_id=cid, cmd=["true"])) == grpc.StatusCode.INVALID_ARGUMENT
    bad = ex(container_id=cid, cmd=["true"], tty=True, stdout=True, stderr=True)
    assert code(rt.Exec, bad) == grpc.StatusCode.INVALID_ARGUMENT
    att = api_pb2.AttachRequest
    assert code(rt.Attach, att(container_id="nope", stdout=True)) == grpc.StatusCode.NOT_FOUND
    pf = api_pb2.PortForwardRequest(pod_sandbox_id="nope")
    assert code(rt.PortForward, pf) in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNIMPLEMENTED)
    # An exited container: FAILED_PRECONDITION.
    d.call("container.stop", {"id": cid, "timeout": 0})
    assert (
        code(rt.Exec, ex(container_id=cid, cmd=["true"], stdout=True)) == grpc.StatusCode.FAILED_PRECONDITION
    )


@integration
def test_crictl_exec_tty_size_and_exit_code(make_daemon: Any, make_tug_cri: Any, crictl_path: str) -> None:
    d = make_daemon()
    cri: TugCri = make_tug_cri(d)
    cid = _running(d, cmd=["sleep", "600"])
    crictl(crictl_path, cri, "version")
    config = os.path.join(cri.base, "crictl.yaml")
    child = pexpect.spawn(
        crictl_path, ["--config", config, "exec", "-i", "-t", cid, "sh"], dimensions=(33, 101), timeout=60
    )
    try:
        child.sendline("stty size; echo sum-$((40+2))")
        child.expect("33 101")
        child.expect("sum-42")
        child.setwinsize(20, 70)  # SIGWINCH: crictl sends the new size on the resize stream
        child.sendline("stty size")
        child.expect("20 70")
        child.sendline("exit 5")
        child.expect("command terminated with exit code 5")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 1, (child.before, cri.read_log()[-2000:])


@integration
def test_crictl_attach(make_daemon: Any, make_tug_cri: Any, crictl_path: str, backend: str) -> None:
    d = make_daemon(backend)
    cri: TugCri = make_tug_cri(d)
    cid = _running(d, stdin=True, cmd=["sh", "-c", "read line; echo got:$line; echo bye >&2"])
    r = _crictl_run(crictl_path, cri, "attach", "-i", cid, stdin=b"hi\n")
    assert r.returncode == 0, (r.stderr, cri.read_log()[-2000:])
    assert r.stdout == b"got:hi\n"
    assert r.stderr == b"bye\n"


def _spdy_upgrade(
    url: str, protocols: list[str]
) -> tuple[socket.socket, h11.Response | h11.InformationalResponse]:
    u = urllib.parse.urlsplit(url)
    s = socket.create_connection((u.hostname, u.port), timeout=30)
    conn = h11.Connection(h11.CLIENT)
    headers = [("Host", u.netloc), ("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")]
    headers += [("X-Stream-Protocol-Version", p) for p in protocols]
    s.sendall(conn.send(h11.Request(method="POST", target=u.path, headers=headers)))
    s.sendall(conn.send(h11.EndOfMessage()))
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(s.recv(65536))
        elif isinstance(event, (h11.Response, h11.InformationalResponse)):
            return s, event


@integration
def test_urls_single_use_protocols_and_garbage(make_daemon: Any, make_tug_cri: Any) -> None:
    d = make_daemon()
    cri: TugCri = make_tug_cri(d)
    cid = _running(d, cmd=["sleep", "600"])
    rt = cri.runtime
    req = api_pb2.ExecRequest(container_id=cid, cmd=["true"], stdout=True)
    url = rt.Exec(req).url
    assert url.startswith("http://127.0.0.1:") and "/exec/" in url
    # No protocol in common: 403 naming ours.
    s, resp = _spdy_upgrade(url, ["v9.channel.k8s.io"])
    s.close()
    assert resp.status_code == 403
    assert (
        b"x-accepted-stream-protocol-versions",
        b"v5.channel.k8s.io, v4.channel.k8s.io, v3.channel.k8s.io, v2.channel.k8s.io, channel.k8s.io",
    ) in list(resp.headers)
    # The token was used by that request: a second use is 404.
    s, resp = _spdy_upgrade(url, ["v4.channel.k8s.io"])
    s.close()
    assert resp.status_code == 404
    # A fresh URL; a garbage frame after the upgrade: GOAWAY (protocol error), then the end.
    s, resp = _spdy_upgrade(rt.Exec(req).url, ["v4.channel.k8s.io"])
    assert resp.status_code == 101
    assert dict(resp.headers)[b"x-stream-protocol-version"] == b"v4.channel.k8s.io"
    s.sendall(_control(spdy.PING, b"\0\0\1"))
    got = b""
    while chunk := s.recv(65536):
        got += chunk
    s.close()
    frames = spdy.Codec().feed(got)
    assert frames == [spdy.GoAway(0, 1)]
    # Another URL kind for an exec token is 404 too; a URL of nothing is 404.
    u = urllib.parse.urlsplit(rt.Exec(req).url)
    s, resp = _spdy_upgrade(f"http://{u.netloc}/attach/{u.path.rsplit('/', 1)[1]}", ["v4.channel.k8s.io"])
    s.close()
    assert resp.status_code == 404


class WsClient:
    """A WebSocket client of the streaming server, written with wsproto."""

    def __init__(self, url: str, protocols: list[str]) -> None:
        u = urllib.parse.urlsplit(url)
        self.sock = socket.create_connection((u.hostname, u.port), timeout=30)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.sock.sendall(self.ws.send(wse.Request(host=u.netloc, target=u.path, subprotocols=protocols)))
        self.events: list[Any] = []
        accepted = self._next()
        assert isinstance(accepted, wse.AcceptConnection), accepted
        self.protocol = accepted.subprotocol

    def _next(self) -> Any:
        while not self.events:
            data = self.sock.recv(65536)
            self.ws.receive_data(data or None)
            self.events += list(self.ws.events())
        return self.events.pop(0)

    def send(self, channel: int, data: bytes) -> None:
        self.sock.sendall(self.ws.send(wse.BytesMessage(data=bytes([channel]) + data)))

    def read_all(self) -> dict[int, bytes]:
        """Every channel's bytes until the server closes."""
        out: dict[int, bytes] = {}
        while True:
            event = self._next()
            if isinstance(event, wse.BytesMessage):
                out[event.data[0]] = out.get(event.data[0], b"") + bytes(event.data[1:])
            elif isinstance(event, wse.CloseConnection):
                self.sock.sendall(self.ws.send(event.response()))
                self.sock.close()
                return out


@integration
def test_websocket_v5_exec_stdin_close_resize_exit_code(
    make_daemon: Any, make_tug_cri: Any, backend: str
) -> None:
    d = make_daemon(backend)
    cri: TugCri = make_tug_cri(d)
    cid = _running(d, cmd=["sleep", "600"])
    rt = cri.runtime
    url = rt.Exec(
        api_pb2.ExecRequest(container_id=cid, cmd=["cat"], stdin=True, stdout=True, stderr=True)
    ).url
    c = WsClient(url, ["v5.channel.k8s.io", "v4.channel.k8s.io"])
    assert c.protocol == "v5.channel.k8s.io"
    c.send(0, b"one ")
    c.send(0, b"two\n")
    c.send(255, b"\0")  # v5: stdin closed, cat ends
    out = c.read_all()
    assert out[1] == b"one two\n"
    assert json.loads(out[3]) == {"metadata": {}, "status": "Success"}

    url = rt.Exec(api_pb2.ExecRequest(container_id=cid, cmd=["sh", "-c", "exit 7"], stdout=True)).url
    out = WsClient(url, ["v4.channel.k8s.io"]).read_all()
    status = json.loads(out[3])
    assert (status["status"], status["reason"]) == ("Failure", "NonZeroExitCode")
    assert status["details"]["causes"] == [{"reason": "ExitCode", "message": "7"}]

    req = api_pb2.ExecRequest(container_id=cid, cmd=["sh"], stdin=True, stdout=True, tty=True)
    c = WsClient(rt.Exec(req).url, ["v5.channel.k8s.io"])
    c.send(4, b'{"Width":88,"Height":11}')
    c.send(0, b"stty size; exit 2\n")
    out = c.read_all()
    assert b"11 88" in out[1]
    assert json.loads(out[3])["details"]["causes"][0]["message"] == "2"

    # Attach over WebSocket: input once the output is followed, the end when PID 1 exits.
    pid1 = _running(d, "attached", stdin=True, cmd=["sh", "-c", "read l; echo at:$l"])
    url = rt.Attach(api_pb2.AttachRequest(container_id=pid1, stdin=True, stdout=True)).url
    c = WsClient(url, ["v5.channel.k8s.io"])
    c.send(0, b"x\n")
    out = c.read_all()
    assert (out[1], json.loads(out[3])["status"]) == (b"at:x\n", "Success")


def _has_pods(d: Any) -> bool:
    try:
        d.call("pod.list")
    except MethodNotFound:
        return False
    return True


@integration
def test_dial_in_a_network_namespace() -> None:
    """PortForward's socket is made inside the pod's network namespace: here one the test makes
    (``unshare --net=FILE``), with a listener on its loopback that the host's cannot reach."""
    here = os.readlink("/proc/thread-self/ns/net")
    base = tempfile.mkdtemp(prefix="tbpf", dir="/tmp")
    nsfile = os.path.join(base, "netns")
    open(nsfile, "w").close()
    try:
        subprocess.run(["unshare", f"--net={nsfile}", "true"], check=True)
        subprocess.run(["nsenter", f"--net={nsfile}", "ip", "link", "set", "lo", "up"], check=True)
        box: dict[str, Any] = {}

        def listen() -> None:  # a listener made inside the namespace, as dial_in makes its socket
            fd = os.open(nsfile, os.O_RDONLY)
            portforward._setns(fd)
            os.close(fd)
            box["listener"] = socket.create_server(("127.0.0.1", 0))

        t = threading.Thread(target=listen)
        t.start()
        t.join()
        listener: socket.socket = box["listener"]
        port = listener.getsockname()[1]
        with listener:
            conn = portforward.dial_in(nsfile, port)
            peer, _ = listener.accept()
            with conn, peer:
                conn.sendall(b"ping")
                assert peer.recv(4) == b"ping"
            # The thread that dialled has ended; this one is still in the host's namespace.
            assert os.readlink("/proc/thread-self/ns/net") == here
            with pytest.raises(OSError, match="refused"):
                portforward.dial_in(nsfile, port + 1 if port < 65535 else port - 1)
    finally:
        subprocess.run(["umount", nsfile], check=False)
        shutil.rmtree(base, ignore_errors=True)


@integration
def test_crictl_port_forward(make_daemon: Any, make_tug_cri: Any, crictl_path: str) -> None:
    d = make_daemon(netns=True)  # the pod's network is made in a namespace of the test's
    if not _has_pods(d):
        pytest.skip(
            "tugd has no pod.create on this branch (the pods helper adds pods): port-forward needs a pod"
        )
    cri: TugCri = make_tug_cri(d)
    rt = cri.runtime
    logdir = tempfile.mkdtemp(prefix="tbpflog", dir="/tmp")
    pod_id = d.call(
        "pod.create", {"name": "pf", "namespace": "default", "uid": "u2", "log_directory": logdir}
    )["id"]
    proc: subprocess.Popen[bytes] | None = None
    try:
        config = api_pb2.ContainerConfig(
            metadata=api_pb2.ContainerMetadata(name="web"),
            image=api_pb2.ImageSpec(image=d.call("image.inspect", {"ref": "busybox"})["id"]),
            command=["sh", "-c", "echo served > /tmp/index.html; exec httpd -f -p 8080 -h /tmp"],
        )
        cid = rt.CreateContainer(
            api_pb2.CreateContainerRequest(pod_sandbox_id=pod_id, config=config)
        ).container_id
        rt.StartContainer(api_pb2.StartContainerRequest(container_id=cid))
        # httpd serves once wget (an exec in the container) gets the page.
        wait_until(
            lambda: (
                rt.ExecSync(
                    api_pb2.ExecSyncRequest(
                        container_id=cid,
                        cmd=["wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/index.html"],
                    )
                ).exit_code
                == 0
            ),
            20,
            "httpd in the pod",
        )
        crictl(crictl_path, cri, "version")
        config_file = os.path.join(cri.base, "crictl.yaml")
        proc = subprocess.Popen(
            [crictl_path, "--config", config_file, "port-forward", pod_id, "0:8080"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert line.startswith("Forwarding from 127.0.0.1:"), line
        local = int(line.split("127.0.0.1:")[1].split()[0])
        for _ in range(2):  # two connections, each a pair of streams
            with socket.create_connection(("127.0.0.1", local), timeout=30) as s:
                s.sendall(b"GET /index.html HTTP/1.0\r\n\r\n")
                got = b""
                while chunk := s.recv(65536):
                    got += chunk
            assert got.startswith(b"HTTP/1.") and got.endswith(b"served\n"), got
        rt.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=cid))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
            if proc.stdout is not None:
                proc.stdout.close()
        d.call("pod.remove", {"id": pod_id})
        shutil.rmtree(logdir, ignore_errors=True)


class SpdyClient:
    """A minimal SPDY client of our own codec, for the older channel protocols crictl does not
    choose (it offers v5 first)."""

    def __init__(self, url: str, protocol: str) -> None:
        self.sock, resp = _spdy_upgrade(url, [protocol])
        assert resp.status_code == 101, resp
        self.codec = spdy.Codec()
        self.next_id = 1

    def open(self, kind: str) -> int:
        sid, self.next_id = self.next_id, self.next_id + 2
        self.sock.sendall(self.codec.encode(spdy.SynStream(sid, {"streamtype": [kind]})))
        return sid

    def read_all(self, names: dict[int, str]) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        while chunk := self.sock.recv(65536):
            for frame in self.codec.feed(chunk):
                if isinstance(frame, spdy.Data):
                    out[names[frame.stream_id]] = out.get(names[frame.stream_id], b"") + frame.data
                elif isinstance(frame, spdy.GoAway):
                    self.sock.sendall(self.codec.encode(spdy.GoAway(0)))
                    self.sock.close()
                    return out
        return out


@integration
@pytest.mark.parametrize("protocol", ["v4.channel.k8s.io", "v3.channel.k8s.io", "channel.k8s.io"])
def test_older_channel_protocols(make_daemon: Any, make_tug_cri: Any, protocol: str) -> None:
    d = make_daemon()
    cri: TugCri = make_tug_cri(d)
    cid = _running(d, cmd=["sleep", "600"])
    req = api_pb2.ExecRequest(
        container_id=cid, cmd=["sh", "-c", "echo o; echo e >&2; exit 4"], stdout=True, stderr=True
    )
    c = SpdyClient(cri.runtime.Exec(req).url, protocol)
    names = {c.open("error"): "error", c.open("stdout"): "stdout", c.open("stderr"): "stderr"}
    out = c.read_all(names)
    assert (out["stdout"], out["stderr"]) == (b"o\n", b"e\n")
    if protocol.startswith("v4."):
        status = json.loads(out["error"])
        assert status["details"]["causes"] == [{"reason": "ExitCode", "message": "4"}]
    else:  # before v4 the error stream carries the message as text
        assert out["error"] == b"command terminated with non-zero exit code: exit status 4"
    # Success says nothing before v4.
    ok = api_pb2.ExecRequest(container_id=cid, cmd=["true"], stdout=True)
    c = SpdyClient(cri.runtime.Exec(ok).url, protocol)
    names = {c.open("error"): "error", c.open("stdout"): "stdout"}
    out = c.read_all(names)
    assert out.get("error", b"") == (
        b'{"metadata": {}, "status": "Success"}' if protocol.startswith("v4.") else b""
    )


@integration
def test_url_expires(make_daemon: Any, make_tug_cri: Any) -> None:
    """``--stream-token-ttl``: a URL not used in time is 404 (the fake clock above covers the
    default minute; this is the real server's clock)."""
    d = make_daemon()
    cri: TugCri = make_tug_cri(d, "--stream-token-ttl", "1")
    cid = _running(d, cmd=["sleep", "600"])
    req = api_pb2.ExecRequest(container_id=cid, cmd=["true"], stdout=True)
    late, fresh = cri.runtime.Exec(req).url, cri.runtime.Exec(req).url
    s, resp = _spdy_upgrade(fresh, ["v4.channel.k8s.io"])
    s.close()
    assert resp.status_code == 101
    time.sleep(1.5)  # the token's lifetime itself is what is tested: no event to wait for
    s, resp = _spdy_upgrade(late, ["v4.channel.k8s.io"])
    s.close()
    assert resp.status_code == 404
