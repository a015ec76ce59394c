"""Hostile input on tugd's JSON-RPC socket: fuzzed requests (Hypothesis), huge lines, deep
nesting, wrong types, unknown methods, half-closed and abandoned connections, thousands of idle
connections, more connections than tugd has file descriptors. tugd answers each correctly, never
crashes, never closes a connection over bad input, and its memory stays bounded.

``TUG_RELIABILITY_SCALE`` multiplies the number of fuzzed examples (300) and idle connections
(2000)."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ..conftest import needs_root, needs_runc
from ..waiting import wait_output, wait_until
from .conftest import scaled

pytestmark = [pytest.mark.reliability, pytest.mark.integration, needs_root, needs_runc]

KNOWN_CODES = {-32700, -32600, -32601, -32602, -32001, -32002, -32003, -32004, -32005, -32006, -32007}
INTERNAL = -32603
# Methods that answer at once (no stream, no host path written, no bridge or registry touched).
METHODS = [
    "system.info",
    "system.df",
    "container.create",
    "container.start",
    "container.list",
    "container.inspect",
    "container.kill",
    "container.stop",
    "container.delete",
    "container.pause",
    "container.unpause",
    "container.top",
    "container.stats",
    "container.update",
    "container.rename",
    "container.restart",
    "container.stat_path",
    "image.list",
    "image.inspect",
    "image.remove",
    "image.tag",
]
PARAM_KEYS = [
    "id",
    "name",
    "image",
    "cmd",
    "entrypoint",
    "env",
    "all",
    "force",
    "timeout",
    "signal",
    "ref",
    "source",
    "target",
    "path",
    "volumes",
    "memory",
    "cpus",
    "pids_limit",
    "restart",
    "tty",
    "stdin",
    "user",
    "workdir",
    "hostname",
    "new_name",
    "stream",
    "privileged",
    "cap_add",
    "cap_drop",
    "security_opt",
    "health_cmd",
    "log_max_size",
    "stop_signal",
]
NASTY = [
    "busybox",
    "",
    "/",
    "..",
    "../../etc/passwd",
    "a" * 300,
    "\x00",
    "SIGKILL",
    "ALL",
    "-1",
    "é☃\U0001f600",
]

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=24)
    | st.sampled_from(NASTY)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
params = st.dictionaries(st.sampled_from(PARAM_KEYS) | st.text(max_size=8), values, max_size=6) | values
requests = st.fixed_dictionaries(
    {
        "jsonrpc": st.just("2.0") | values,
        "method": st.sampled_from(METHODS) | st.text(max_size=30) | values,
    },
    optional={
        "id": st.integers(min_value=-(2**63), max_value=2**63) | st.text(max_size=12) | values,
        "params": params,
    },
)
# container.create with a valid image and command and random options: deep into validation.
creates = st.fixed_dictionaries(
    {"image": st.just("busybox"), "cmd": st.just(["true"])},
    optional={k: values for k in PARAM_KEYS if k not in ("image", "cmd")},
).map(lambda p: {"jsonrpc": "2.0", "id": 1, "method": "container.create", "params": p})
lines = st.one_of(
    requests.map(json.dumps),
    creates.map(json.dumps),
    st.lists(requests, min_size=1, max_size=4).map(json.dumps),
    values.map(json.dumps),
    st.binary(max_size=300).map(lambda b: b.replace(b"\n", b" ").decode("latin-1")),
)


class Conn:
    """A raw connection to tugd: lines out, lines in, with a deadline on every read."""

    def __init__(self, path: str, timeout: float = 30.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)

        def connected() -> bool:
            try:
                self.sock.connect(path)
            except BlockingIOError:  # the listen backlog is full: tugd is accepting, wait
                return False
            return True

        try:
            wait_until(connected, timeout, f"a place in tugd's listen backlog at {path}", interval=0.01)
        except BaseException:
            self.sock.close()
            raise
        self.buf = b""
        self.n = 0

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("tugd closed the connection")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line

    def call(self, method: str, params: Any = None) -> dict[str, Any]:
        self.n += 1
        rid = f"call-{self.n}"
        msg: dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "method": method}
        if params is not None:
            msg["params"] = params
        self.send(json.dumps(msg).encode() + b"\n")
        while True:
            got = json.loads(self.line())
            if isinstance(got, dict) and got.get("id") == rid:
                return got

    def close(self) -> None:
        self.sock.close()


def check_reply(raw: bytes, internal: list[str]) -> None:
    """One line from tugd: JSON, a response (or a batch of them), with a known error code."""
    msg = json.loads(raw)
    items = msg if isinstance(msg, list) else [msg]
    assert items, raw
    for item in items:
        assert isinstance(item, dict) and item.get("jsonrpc") == "2.0", raw
        if "method" in item:  # a notification of a stream: none of the fuzzed methods has one
            raise AssertionError(f"unexpected notification {raw!r}")
        assert ("result" in item) != ("error" in item), raw
        if "error" in item:
            code = item["error"]["code"]
            assert isinstance(item["error"]["message"], str)
            if code == INTERNAL:
                internal.append(item["error"]["message"])
            else:
                assert code in KNOWN_CODES, raw


def tugd_pid(d: Any) -> int:
    assert d.proc is not None
    return int(d.proc.pid)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.fixture
def conn(daemon: Any) -> Iterator[Conn]:
    c = Conn(daemon.socket)
    yield c
    c.close()


def test_fuzzed_requests_get_correct_answers(daemon: Any) -> None:
    """Hypothesis writes the lines; after each, a sentinel call on the same connection proves the
    connection is still sane; every line tugd sends is a well-formed response with a known code,
    never an internal error."""
    internal: list[str] = []
    c = Conn(daemon.socket)
    pid = tugd_pid(daemon)
    rss_before = rss_kib(pid)

    @settings(
        max_examples=scaled(300),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        database=None,
    )
    @given(line=lines)
    def one(line: str) -> None:
        c.send(line.encode("utf-8", "surrogatepass") + b"\n")
        c.n += 1
        sentinel = f"sentinel-{c.n}"
        c.send(json.dumps({"jsonrpc": "2.0", "id": sentinel, "method": "system.info"}).encode() + b"\n")
        while True:
            raw = c.line()
            msg = json.loads(raw)
            if isinstance(msg, dict) and msg.get("id") == sentinel:
                assert "result" in msg, msg
                return
            check_reply(raw, internal)

    try:
        one()
    finally:
        c.close()
    assert not internal, f"internal errors: {internal[:10]}"
    assert daemon.proc.poll() is None, daemon.read_log()[-3000:]
    # Bounded memory: whatever the fuzzer sent, tugd holds no more than a few MiB more after.
    assert rss_kib(pid) - rss_before < 32 * 1024
    # Containers the fuzzer managed to create are real and can be removed (the fixture does).
    assert isinstance(daemon.call("container.list", {"all": True}), list)


def test_malformed_requests_each_get_their_error(conn: Conn) -> None:
    cases: list[tuple[bytes, int]] = [
        (b"{", -32700),
        (b"\xff\xfe\x00garbage", -32700),
        (b"[" * 100_000, -32700),  # deep nesting: a parse error, not a crash
        (b'{"a":' * 50_000 + b"1" + b"}" * 50_000, -32700),
        (b"[]", -32600),
        (b"42", -32600),
        (b'"x"', -32600),
        (b'{"jsonrpc":"1.0","id":1,"method":"system.info"}', -32600),
        (b'{"jsonrpc":"2.0","id":1,"method":7}', -32600),
        (b'{"jsonrpc":"2.0","id":{"a":1},"method":"system.info"}', -32600),
        (b'{"jsonrpc":"2.0","id":true,"method":"system.info"}', -32600),
        (b'{"jsonrpc":"2.0","id":1,"method":"system.info","params":3}', -32600),
        (b'{"jsonrpc":"2.0","id":1,"method":"no.such.method"}', -32601),
        (b'{"jsonrpc":"2.0","id":1,"method":"container.inspect","params":{"id":["x"]}}', -32602),
        (b'{"jsonrpc":"2.0","id":1,"method":"container.list","params":{"all":"yes"}}', -32602),
        (b'{"jsonrpc":"2.0","id":1,"method":"container.stop","params":{"id":"x","timeout":1.5}}', -32602),
        (
            b'{"jsonrpc":"2.0","id":1,"method":"container.create","params":{"image":"busybox","cpus":NaN}}',
            -32602,
        ),
        (
            b'{"jsonrpc":"2.0","id":1,"method":"container.create","params":{"image":"busybox","cmd":[1]}}',
            -32602,
        ),
        (
            b'{"jsonrpc":"2.0","id":1,"method":"container.inspect","params":{"id":"' + b"9" * 5000 + b'"}}',
            -32001,
        ),
        (b'{"jsonrpc":"2.0","id":1' + b"0" * 5000 + b',"method":"system.info"}', -32700),  # an int too long
    ]
    for line, code in cases:
        conn.send(line + b"\n")
        reply = json.loads(conn.line())
        assert isinstance(reply, dict), (line[:80], reply)
        assert reply["error"]["code"] == code, (line[:80], reply)
    # A batch: each request answered, in one array; notifications inside it get no answer.
    batch = [
        {"jsonrpc": "2.0", "id": 1, "method": "system.info"},
        {"jsonrpc": "2.0", "method": "system.info"},
        {"jsonrpc": "2.0", "id": 2, "method": "nope"},
        5,
    ]
    conn.send(json.dumps(batch).encode() + b"\n")
    replies = json.loads(conn.line())
    assert sorted(str(r["id"]) for r in replies) == ["1", "2", "None"]
    # And the connection is as good as new.
    assert "result" in conn.call("system.info")


def test_huge_lines_are_refused_and_the_connection_kept(daemon: Any, conn: Conn) -> None:
    pid = tugd_pid(daemon)
    rss_before = rss_kib(pid)
    chunk = b"x" * (1 << 20)
    for size_mib in (2, 64):
        for _ in range(size_mib):
            conn.send(chunk)
        conn.send(b"\n")
        reply = json.loads(conn.line())
        assert reply["error"]["code"] == -32600
        assert "exceeds" in reply["error"]["message"]
        assert "result" in conn.call("system.info")
    # A request just under the limit is served (its params are a long string).
    big = "y" * ((1 << 20) - 200)
    assert conn.call("container.inspect", {"id": big})["error"]["code"] in (-32001, -32003)
    # Memory: the 64 MiB line was never held, only the bound of one line.
    assert rss_kib(pid) - rss_before < 16 * 1024


def test_half_closed_and_abandoned_connections(daemon: Any) -> None:
    # Half-closed: the request, then EOF from our side; the answer still comes, then EOF.
    c = Conn(daemon.socket)
    c.send(b'{"jsonrpc":"2.0","id":1,"method":"system.info"}\n')
    c.sock.shutdown(socket.SHUT_WR)
    assert json.loads(c.line())["id"] == 1
    assert c.sock.recv(1) == b""
    c.close()
    # A last line without its newline, then EOF: still a request, still answered.
    c = Conn(daemon.socket)
    c.send(b'{"jsonrpc":"2.0","id":2,"method":"system.info"}')
    c.sock.shutdown(socket.SHUT_WR)
    assert json.loads(c.line())["id"] == 2
    c.close()
    # Abandoned mid-line, mid-request and right after connecting, many times over.
    for i in range(200):
        c = Conn(daemon.socket)
        if i % 3 == 0:
            c.send(b'{"jsonrpc":"2.0","id":1,"meth')
        elif i % 3 == 1:
            c.send(b'{"jsonrpc":"2.0","id":1,"method":"container.list"}\n')
        c.close()
    # A client that sends and never reads: tugd's replies fill the socket, tugd is not stuck.
    c = Conn(daemon.socket)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    req = b'{"jsonrpc":"2.0","id":1,"method":"system.info"}\n'
    c.sock.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        for _ in range(20_000):
            c.sock.send(req)
    other = Conn(daemon.socket)
    assert "result" in other.call("system.info")
    assert "result" in other.call("container.list", {"all": True})
    other.close()
    c.close()
    assert daemon.proc.poll() is None


def test_thousands_of_idle_connections(make_daemon: Any, backend: str) -> None:
    """N idle connections, twice: tugd's fds grow by N and its memory by a bounded amount per
    connection; a normal call still answers; once they close the fds come back, and the second
    wave reuses the memory of the first (bounded, not a leak)."""
    daemon = make_daemon(backend=backend, image=False)
    # Both ends hold one fd per connection: stay under our own limit (tugd inherits it).
    n = min(scaled(2000), resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 500)
    pid = tugd_pid(daemon)
    probe = Conn(daemon.socket)
    assert "result" in probe.call("system.info")
    fds_before, rss_before = fds(pid), rss_kib(pid)
    peaks = []
    for _wave in range(2):
        idle: list[Conn] = []
        try:
            idle.extend(Conn(daemon.socket) for _ in range(n))
            # A normal call behind them all answers.
            assert "result" in probe.call("container.list", {"all": True})
            # accepting is tugd's business: a bounded wait for it to catch up
            wait_until(
                lambda: fds(pid) >= fds_before + n,
                60,
                f"tugd to accept {n} connections",
                interval=0.05,
                describe=lambda: fds(pid),
            )
            peaks.append(rss_kib(pid))
        finally:
            for c in idle:
                c.close()
        assert "result" in probe.call("system.info")
        wait_until(
            lambda: fds(pid) <= fds_before + 5,
            60,
            f"tugd's fds to drop back to {fds_before} + 5",
            interval=0.05,
            describe=lambda: fds(pid),
        )
    per_conn = (peaks[0] - rss_before) / n
    assert per_conn < 64, f"{per_conn:.1f} KiB per idle connection"
    assert peaks[1] - peaks[0] < 8 * 1024, f"second wave peaked at {peaks[1]} KiB, first {peaks[0]}"
    probe.close()
    assert daemon.proc.poll() is None


def test_more_connections_than_file_descriptors(make_daemon: Any, backend: str) -> None:
    """tugd limited to 256 fds, 400 connections held open: it runs out of descriptors while
    accepting (regression: anyio's listener raised, and tugd died); it must wait, keep running,
    and serve again once they go."""
    daemon = make_daemon(backend=backend, image=False)
    pid = tugd_pid(daemon)
    before = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (256, before[1]))
    conns: list[Conn] = []
    try:
        conns.extend(Conn(daemon.socket, timeout=5) for _ in range(400))  # the kernel's backlog takes them
        wait_until(
            lambda: "cannot accept a connection: Too many open files" in daemon.read_log(),
            60,
            "tugd to run out of fds",
            interval=0.05,
        )
        assert fds(pid) >= 250
        assert daemon.proc.poll() is None, daemon.read_log()[-3000:]
    finally:
        for c in conns:
            c.close()
    c = Conn(daemon.socket, timeout=30)
    assert "result" in c.call("system.info")
    c.close()
    resource.prlimit(pid, resource.RLIMIT_NOFILE, before)
    assert daemon.proc.poll() is None


# ----------------------------------------------------------- names, references and paths checked

BAD_NAMES = ["", "../x", "a/b", "/abs", ".hidden", "-dash", "a b", "x" * 129, "a\x00b", "é", "a\nb"]
BAD_REFS = ["", "../../etc", "UPPER/case", "a//b", "a/../b", "x:" + "t" * 200, "a:b:c", "/abs", "a b", "\x00"]


def test_names_and_references_are_checked(daemon: Any, busybox_tar: str) -> None:
    from tugwire import errors

    bad = (errors.InvalidArgument, errors.InvalidParams)
    for name in BAD_NAMES:
        with pytest.raises(bad, match="name"):
            daemon.call("container.create", {"image": "busybox", "cmd": ["true"], "name": name})
    cid = daemon.call("container.create", {"image": "busybox", "cmd": ["true"], "name": "ok.name_1-x"})["id"]
    for name in BAD_NAMES:
        with pytest.raises(bad, match="name"):
            daemon.call("container.rename", {"id": cid, "name": name})
    assert daemon.call("container.inspect", {"id": cid})["name"] == "ok.name_1-x"
    for ref in BAD_REFS:
        with pytest.raises(bad, match=r"reference|ref"):
            daemon.call("image.import", {"path": busybox_tar, "ref": ref})
        with pytest.raises((errors.InvalidArgument, errors.NotFound)):
            daemon.call("container.create", {"image": ref, "cmd": ["true"]})
    assert [c["id"] for c in daemon.call("container.list", {"all": True})] == [cid]
    assert len(daemon.call("image.list", {})) == 1  # busybox alone
    daemon.call("container.delete", {"id": cid})


def test_volume_paths_are_checked(daemon: Any, tmp_path: Any) -> None:
    from tugwire import errors

    host = str(tmp_path)
    bad = [
        ({"source": "relative/dir", "destination": "/x"}, "absolute host path"),
        ({"source": "/nonexistent/tugboat/dir", "destination": "/x"}, "does not exist"),
        ({"source": host, "destination": "relative"}, "absolute path without"),
        ({"source": host, "destination": "/a/../../etc"}, "absolute path without"),
        ({"source": host, "destination": "/proc"}, "cannot mount"),
        ({"source": host, "destination": "/"}, "cannot mount"),
        ({"source": host + "\x00x", "destination": "/x"}, "does not exist|absolute"),
        ({"source": ["x"], "destination": "/x"}, "absolute host path"),
    ]
    for vol, message in bad:
        with pytest.raises(errors.InvalidArgument, match=message):
            daemon.call("container.create", {"image": "busybox", "cmd": ["true"], "volumes": [vol]})
    with pytest.raises(errors.InvalidParams):
        daemon.call("container.create", {"image": "busybox", "cmd": ["true"], "volumes": "/x:/y"})
    assert daemon.call("container.list", {"all": True}) == []
    # The CLI: a relative host path is made absolute against the caller's cwd, never tugd's.
    res = daemon.tug("create", "-v", "nonexistent-rel:/x", "busybox", "true", check=False)
    assert res.returncode != 0 and b"does not exist" in res.stderr


def test_cp_cannot_escape_through_the_containers_links(daemon: Any, tmp_path: Any) -> None:
    """The container plants links to the host's paths; ``tug cp`` in both directions resolves
    them inside the container's root, never on the host."""
    from ..helpers import start

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("host secret\n")
    up = "../" * 30
    cid = start(
        daemon,
        [
            "sh",
            "-c",
            f"ln -s {outside} /abs; ln -s {up}{str(outside)[1:]} /rel; ln -s / /root-link;"
            f"mkdir -p {outside}; echo container > {outside}/secret; echo ready; sleep 1000",
        ],
    )
    wait_output(daemon, cid, b"ready")  # the links exist
    src = tmp_path / "payload"
    src.write_text("payload\n")
    for target in ("/abs/pwned", "/rel/pwned", f"/root-link{outside}/pwned"):
        daemon.tug("cp", str(src), f"{cid}:{target}")
        assert os.listdir(outside) == ["secret"], target  # nothing on the host
        inside = daemon.tug("exec", cid, "cat", f"{outside}/pwned").stdout  # in the container
        assert inside == b"payload\n"
        daemon.tug("exec", cid, "rm", f"{outside}/pwned")
    for source in ("/abs/secret", "/rel/secret", f"/root-link{outside}/secret"):
        dest = tmp_path / "got"
        daemon.tug("cp", f"{cid}:{source}", str(dest))
        assert dest.read_text() == "container\n", source  # the container's file, not the host's
        dest.unlink()
    # The copy methods take no host path; without a raw stream they are refused.
    from tugwire import errors

    with pytest.raises(errors.InvalidParams):
        daemon.call("container.archive_get", {"id": cid, "path": "/etc/passwd"})
    with pytest.raises(errors.InvalidParams):
        daemon.call("container.archive_put", {"id": cid, "path": "/tmp"})
    daemon.call("container.delete", {"id": cid, "force": True})
