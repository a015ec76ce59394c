"""The HTTP edge of ``tug-docker-api`` with raw requests (issue 15): versions, docker's error
bodies, the hijack's exact head, and hostile input (malformed JSON, wrong types, unknown routes,
huge headers and bodies, bad chunked encoding, request smuggling, disconnects mid-stream), each a
clear HTTP error that changes nothing. A Hypothesis test throws arbitrary requests at the parser."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import needs_root, needs_runc
from .docker_helpers import DockerApi, dapi, make_docker_api, wait_until

pytestmark = [pytest.mark.integration, needs_root, needs_runc]


def connect(api: DockerApi) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    s.connect(api.sock)
    return s


def read_all(s: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            data = s.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def exchange(api: DockerApi, raw: bytes, *, half_close: bool = True) -> bytes:
    """Send ``raw`` on a new connection, half-close, and read everything the server answers."""
    with connect(api) as s:
        s.sendall(raw)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        return read_all(s)


def request(
    api: DockerApi, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One request with ``Connection: close``; (status, headers, decoded body)."""
    data = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    head = f"{method} {path} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n"
    for k, v in (headers or {}).items():
        head += f"{k}: {v}\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
    return parse_response(exchange(api, head.encode() + b"\r\n" + data))


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if headers.get("transfer-encoding") == "chunked":
        out = b""
        while body:
            size_line, _, rest = body.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                break
            out += rest[:size]
            body = rest[size + 2 :]
        body = out
    return status, headers, body


def message(body: bytes) -> str:
    result: str = json.loads(body)["message"]
    return result


def n_containers(api: DockerApi) -> int:
    return len(api.daemon.call("container.list", {"all": True}))


def test_ping_and_versions(dapi: DockerApi) -> None:
    for method in ("GET", "HEAD"):
        status, headers, body = request(dapi, method, "/_ping")
        assert status == 200
        assert headers["api-version"] == "1.43"
        assert headers["ostype"] == "linux"
        assert body == (b"OK" if method == "GET" else b"")
    status, _, body = request(dapi, "GET", "/version")
    v = json.loads(body)
    assert (status, v["ApiVersion"], v["MinAPIVersion"], v["Os"]) == (200, "1.43", "1.24", "linux")
    for prefix in ("/v1.24", "/v1.41", "/v1.43", ""):
        assert request(dapi, "GET", f"{prefix}/containers/json")[0] == 200, prefix
    status, _, body = request(dapi, "GET", "/v1.50/containers/json")
    assert (status, message(body)) == (
        400,
        "client version 1.50 is too new. Maximum supported API version is 1.43",
    )
    status, _, body = request(dapi, "GET", "/v1.12/containers/json")
    assert status == 400
    assert message(body).startswith("client version 1.12 is too old. Minimum supported API version is 1.24")


def test_unknown_routes_and_probes_are_json_404(dapi: DockerApi) -> None:
    for path in ("/nosuch", "/v1.43/containers/x/nosuch", "/volumes/x", "/plugins/x/json", "/images/x/json"):
        status, headers, body = request(dapi, "GET", path)
        assert status == 404, path
        assert headers["content-type"] == "application/json"
        assert message(body)
    assert message(request(dapi, "GET", "/containers/x/json")[2]) == "No such container: x"
    assert message(request(dapi, "GET", "/networks/x")[2]) == "network x not found"
    status, _, body = request(dapi, "PUT", "/containers/json")
    assert status == 405


def test_bad_bodies_change_nothing(dapi: DockerApi) -> None:
    before = n_containers(dapi)
    cases: list[tuple[bytes, str]] = [
        (b"{not json", "invalid JSON body"),
        (b"[1, 2]", "must be a JSON object"),
        (json.dumps({"Image": "busybox", "Cmd": 5}).encode(), "Cmd"),
        (json.dumps({"Image": 7}).encode(), "Image"),
        (json.dumps({"Image": "busybox", "HostConfig": {"AutoRemove": "yes"}}).encode(), "AutoRemove"),
        (json.dumps({"Image": "busybox", "HostConfig": {"Binds": ["relative:/x"]}}).encode(), "volume"),
        (b"", "JSON body is required"),
    ]
    for body, fragment in cases:
        status, _, answer = request(dapi, "POST", "/containers/create", body)
        assert status == 400, (body, answer)
        assert fragment in message(answer), (body, answer)
    status, _, answer = request(dapi, "GET", "/containers/json?filters=%7Bnope")
    assert status == 400
    assert "filters" in message(answer)
    status, _, answer = request(dapi, "GET", "/containers/json?all=maybe")
    assert status == 400
    assert n_containers(dapi) == before


def test_huge_header_and_body(dapi: DockerApi) -> None:
    raw = b"GET /_ping HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (128 * 1024) + b"\r\n\r\n"
    status, _, body = parse_response(exchange(dapi, raw))
    assert status == 431
    big = b'{"Image": "busybox", "Env": ["' + b"a" * (9 << 20) + b'"]}'
    head = f"POST /containers/create HTTP/1.1\r\nHost: x\r\nContent-Length: {len(big)}\r\n\r\n".encode()
    with connect(dapi) as s:
        s.sendall(head)
        try:
            s.sendall(big)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before reading it all
        status, _, body = parse_response(read_all(s))
    assert status == 413
    assert "exceeds" in message(body)
    assert n_containers(dapi) == 0


def test_bad_chunked_and_smuggling(dapi: DockerApi) -> None:
    raw = (
        b"POST /containers/create HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\n{}\r\n0\r\n\r\n"
    )
    status, _, body = parse_response(exchange(dapi, raw))
    assert status == 400
    # Both framings: refused before the body is read, and the request hidden in it never runs.
    hidden = (
        b"POST /containers/create?name=smuggled HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\n"
        b'{"Image":"busybox"}'
    )
    raw = (
        b"POST /containers/create HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + hidden
    )
    status, _, body = parse_response(exchange(dapi, raw))
    assert status == 400
    assert "Content-Length and Transfer-Encoding" in message(body)
    raw = b"GET /_ping HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"
    assert parse_response(exchange(dapi, raw))[0] == 400
    assert n_containers(dapi) == 0


def test_hijack_head_and_frames(dapi: DockerApi) -> None:
    cid = json.loads(
        request(
            dapi,
            "POST",
            "/containers/create",
            {"Image": "busybox", "Cmd": ["sh", "-c", "echo o; echo e >&2"]},
        )[2]
    )["Id"]
    for version, ctype in (
        ("1.43", "application/vnd.docker.multiplexed-stream"),
        ("1.41", "application/vnd.docker.raw-stream"),
    ):
        with connect(dapi) as s:
            s.sendall(
                f"POST /v{version}/containers/{cid}/attach?stream=1&stdout=1&stderr=1 HTTP/1.1\r\n"
                "Host: x\r\nConnection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: 0\r\n\r\n".encode()
            )
            head = b""
            while b"\r\n\r\n" not in head:
                head += s.recv(1)
            want = (
                f"HTTP/1.1 101 UPGRADED\r\nContent-Type: {ctype}\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n"
            )
            assert head == want.encode() + b"\r\n"
            if version == "1.41":
                s.close()
                continue
            assert request(dapi, "POST", f"/containers/{cid}/start")[0] == 204
            data = read_all(s)
        frames = []
        while data:
            kind, size = struct.unpack(">BxxxI", data[:8])
            frames.append((kind, data[8 : 8 + size]))
            data = data[8 + size :]
        assert sorted(frames) == [(1, b"o\n"), (2, b"e\n")]


def test_disconnect_mid_stream_leaves_nothing(dapi: DockerApi) -> None:
    """Clients that drop a ``logs -f``, a ``wait``, an ``events`` stream and a hijacked attach of a
    quiet container: the front door closes its tugd connections for them (its open descriptors
    come back to where they were)."""
    assert dapi.proc is not None
    fd_dir = f"/proc/{dapi.proc.pid}/fd"
    cid = json.loads(
        request(dapi, "POST", "/containers/create", {"Image": "busybox", "Cmd": ["sleep", "300"]})[2]
    )["Id"]
    assert request(dapi, "POST", f"/containers/{cid}/start")[0] == 204
    baseline = len(os.listdir(fd_dir))
    upgrade = "Connection: Upgrade\r\nUpgrade: tcp\r\n"
    for path, method, extra in (
        (f"/containers/{cid}/logs?stdout=1&follow=1", "GET", ""),
        (f"/containers/{cid}/wait", "POST", ""),
        ("/events", "GET", ""),
        (f"/containers/{cid}/attach?stream=1&stdout=1&stderr=1", "POST", upgrade),
        (f"/containers/{cid}/attach?stream=1&stdin=1&stdout=1", "POST", upgrade),
    ):
        with connect(dapi) as s:
            s.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\n{extra}Content-Length: 0\r\n\r\n".encode())
            head = b""
            while b"\r\n\r\n" not in head:
                head += s.recv(1)
            assert head.startswith(b"HTTP/1.1 200 " if not extra else b"HTTP/1.1 101 UPGRADED"), head
            assert len(os.listdir(fd_dir)) > baseline  # the stream holds a tugd connection
        wait_until(lambda: len(os.listdir(fd_dir)) <= baseline, what=f"{path} to let go")
    assert request(dapi, "GET", "/_ping")[0] == 200


def test_peer_credentials_refuse_others(dapi: DockerApi) -> None:
    # The modes would stop them first; the credentials check must stop them too.
    os.chmod(dapi.daemon.base, 0o711)
    os.chmod(dapi.sock, 0o666)
    script = (
        "import os, socket\nos.setgid(65534); os.setgroups([]); os.setuid(65534)\n"
        f"s = socket.socket(socket.AF_UNIX); s.connect({dapi.sock!r})\n"
        "s.sendall(b'GET /_ping HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n'); s.shutdown(socket.SHUT_WR)\n"
        "out = b''\nwhile (d := s.recv(4096)): out += d\nprint(out.decode())\n"
    )
    out = subprocess.run(["python3", "-c", script], capture_output=True, text=True, timeout=30)
    assert out.stdout.startswith("HTTP/1.1 403 "), out
    assert "permission denied: only root" in out.stdout


_METHODS = st.sampled_from(["GET", "POST", "HEAD", "DELETE", "PUT", "G\x00T", "", "GET GET"])
_PATHS = st.sampled_from(
    [
        "/_ping",
        "/version",
        "/containers/json",
        "/containers/create",
        "/v1.43/info",
        "/v9.9/x",
        "/%ff",
        "*",
        "",
    ]
) | st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40).map(
    lambda t: "/" + t
)
_HEADERS = st.lists(
    st.tuples(
        st.sampled_from(
            ["Content-Length", "Transfer-Encoding", "Host", "Connection", "Upgrade", "X-A", "Bad Name"]
        ),
        st.sampled_from(["0", "5", "-1", "chunked", "close", "tcp", "x" * 10, "1, 2", "\x01"]),
    ),
    max_size=5,
)


@given(
    method=_METHODS,
    path=_PATHS,
    headers=_HEADERS,
    body=st.binary(max_size=64),
    junk=st.one_of(st.none(), st.binary(max_size=200)),
)
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_request_edge_fuzz(
    dapi: DockerApi, method: str, path: str, headers: list[tuple[str, str]], body: bytes, junk: bytes | None
) -> None:
    """Whatever arrives, the answer is an HTTP response that is not a 5xx (or a close), the
    server keeps serving, and nothing is created."""
    if junk is not None:
        raw = junk
    else:
        raw = (
            f"{method} {path} HTTP/1.1\r\n".encode("latin-1")
            + b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in headers)
            + b"\r\n"
            + body
        )
    answer = exchange(dapi, raw)
    if answer:
        assert answer.startswith(b"HTTP/1."), answer[:200]
        status = int(answer.split(b" ", 2)[1])
        # 501 is h11's (and RFC 9112's) answer to a transfer coding it does not implement
        assert status < 500 or status == 501, answer[:500]
    assert request(dapi, "GET", "/_ping")[0] == 200


def test_backend_trio_edge(make_docker_api: Any) -> None:
    api: DockerApi = make_docker_api(backend="trio")
    assert request(api, "GET", "/_ping")[0] == 200
    status = request(api, "POST", "/containers/create", b"{bad")[0]
    assert status == 400
    assert (
        parse_response(
            exchange(
                api, b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
        )[0]
        == 400
    )


def _tar(entries: list[tuple[str, str, bytes]]) -> bytes:
    """A tar of (name, kind, data or link target) entries, written as given (no sanitising)."""
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, kind, data in entries:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            elif kind == "sym":
                info.type = tarfile.SYMTYPE
                info.linkname = data.decode()
                tar.addfile(info)
            elif kind == "hard":
                info.type = tarfile.LNKTYPE
                info.linkname = data.decode()
                tar.addfile(info)
            elif kind == "dev":
                info.type = tarfile.CHRTYPE
                tar.addfile(info)
    return buf.getvalue()


def test_archive_put_refuses_escapes(dapi: DockerApi) -> None:
    cid = json.loads(
        request(dapi, "POST", "/containers/create", {"Image": "busybox", "Cmd": ["sleep", "300"]})[2]
    )["Id"]
    assert request(dapi, "POST", f"/containers/{cid}/start")[0] == 204
    marker = "/tmp/tug-docker-escape-marker"
    cases = [
        ([("../escaped", "file", b"x")], "escapes the destination"),
        ([("/abs", "file", b"x")], "escapes the destination"),
        ([("ok", "file", b"x"), ("a/../../b", "file", b"x")], "escapes the destination"),
        ([("l", "sym", b"/tmp"), ("l/tug-docker-escape-marker", "file", b"x")], "through a link"),
        ([("null", "dev", b"")], "unsupported type"),
        ([("ok", "file", b"x"), ("h", "hard", b"../../etc/passwd")], "hard link escapes"),
        ([("l", "sym", b"../../.."), ("l/etc/passwd", "file", b"x")], "through a link"),
    ]
    for entries, fragment in cases:
        status, _, body = request(
            dapi,
            "PUT",
            f"/containers/{cid}/archive?path=/tmp",
            _tar(entries),
            {"Content-Type": "application/x-tar"},
        )
        assert status == 400, (entries, body)
        assert fragment in message(body), (entries, body)
    assert not os.path.exists(marker)
    # nothing of any refused archive reached the container
    listing = dapi.docker("exec", cid, "ls", "-A", "/tmp").stdout
    assert listing == ""
    status, _, body = request(dapi, "PUT", f"/containers/{cid}/archive?path=/tmp", b"not a tar at all")
    assert status == 400
    # a good one goes in
    assert (
        request(dapi, "PUT", f"/containers/{cid}/archive?path=/tmp", _tar([("good", "file", b"ok\n")]))[0]
        == 200
    )
    assert dapi.docker("exec", cid, "cat", "/tmp/good").stdout == "ok\n"


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_archive_stat_and_an_upload_cut_short_leaves_nothing(make_docker_api: Any, backend: str) -> None:
    """``HEAD /archive`` is the path's stat alone; a client that leaves half-way through a
    ``PUT /archive`` body leaves nothing in the container and no stuck task."""
    import base64

    api: DockerApi = make_docker_api(backend=backend)
    cid = json.loads(
        request(api, "POST", "/containers/create", {"Image": "busybox", "Cmd": ["sleep", "300"]})[2]
    )["Id"]
    assert request(api, "POST", f"/containers/{cid}/start")[0] == 204
    api.docker("exec", cid, "sh", "-c", "mkdir /up && ln -s /etc/passwd /up/link")
    status, headers, body = request(api, "HEAD", f"/containers/{cid}/archive?path=/up/link")
    assert status == 200 and body == b""
    st = json.loads(base64.b64decode(headers["x-docker-container-path-stat"]))
    assert st["name"] == "link" and st["linkTarget"] == "/etc/passwd" and st["mode"] == (1 << 27) | 0o777
    status, headers, _ = request(api, "HEAD", f"/containers/{cid}/archive?path=/up")
    assert json.loads(base64.b64decode(headers["x-docker-container-path-stat"]))["mode"] == (1 << 31) | 0o755
    assert request(api, "HEAD", f"/containers/{cid}/archive?path=/nope")[0] == 404
    whole = _tar([("a", "file", b"a" * (4 << 20)), ("b", "file", b"b")])
    head = (
        f"PUT /containers/{cid}/archive?path=/up HTTP/1.1\r\nHost: docker\r\n"
        f"Content-Type: application/x-tar\r\nContent-Length: {len(whole)}\r\n\r\n"
    ).encode()
    with connect(api) as s:
        s.sendall(head + whole[: len(whole) // 2])
    wait_until(
        lambda: api.docker("exec", cid, "ls", "-A", "/up").stdout == "link\n",
        what="the cut upload to be gone",
    )
    assert request(api, "GET", "/_ping")[0] == 200
    assert request(api, "PUT", f"/containers/{cid}/archive?path=/up", whole)[0] == 200
    assert api.docker("exec", cid, "ls", "-A", "/up").stdout == "a\nb\nlink\n"
