"""Registry pull and push, login and logout, against a real ``docker-registry`` (the Debian
package) on 127.0.0.1: once open, once behind htpasswd basic auth, once behind a bearer-token
server (a few lines here, signing JWTs with a key made by ``openssl`` that the registry trusts).
Images come from and go back to the real tools (umoci, skopeo), and the digests must agree."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.server
import json
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor import auth, registry
from tugwire.errors import InvalidArgument, Unavailable

from .conftest import TUG, free_port, http_ready, needs_root, needs_runc
from .waiting import wait_until

needs_registry = pytest.mark.skipif(
    shutil.which("docker-registry") is None
    or shutil.which("skopeo") is None
    or shutil.which("umoci") is None,
    reason="needs docker-registry, skopeo and umoci",
)


# =================================================================================== the servers


class Registry:
    """A real docker-registry on a free loopback port with its own storage; killed by its pid."""

    def __init__(self, base: str, extra: dict[str, Any] | None = None, ip: str = "127.0.0.1") -> None:
        self.base = base
        self.port = free_port()
        self.host = f"{ip}:{self.port}"
        self.url = f"http://{self.host}"
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": os.path.join(base, "data")},
                "delete": {"enabled": True},
            },
            "http": {"addr": self.host},
        }
        config.update(extra or {})
        self.config_path = os.path.join(base, "config.yml")
        with open(self.config_path, "w") as f:
            json.dump(config, f)  # JSON is YAML
        self.log_path = os.path.join(base, "registry.log")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                ["docker-registry", "serve", self.config_path],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )
        wait_until(  # the registry has no readiness notification: poll GET /v2/
            lambda: http_ready(self.proc, self.url + "/v2/", (200, 401), self.read_log),
            timeout,
            "docker-registry to be ready",
            interval=0.05,
            describe=self.read_log,
        )

    def read_log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()[-4000:]

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


@contextlib.contextmanager
def running_registry(
    extra: dict[str, Any] | None = None, prep: Any = None, ip: str = "127.0.0.1"
) -> Iterator[Registry]:
    base = tempfile.mkdtemp(prefix="reg", dir="/tmp")
    try:
        if prep is not None:
            extra = prep(base)
        reg = Registry(base, extra, ip)
        reg.start()
        try:
            yield reg
        finally:
            reg.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


USER, PASSWORD = "tugger", "s3cret pass"


def _htpasswd(base: str) -> dict[str, Any]:
    out = subprocess.run(["htpasswd", "-Bbn", USER, PASSWORD], check=True, capture_output=True).stdout
    path = os.path.join(base, "htpasswd")
    with open(path, "wb") as f:
        f.write(out)
    return {"auth": {"htpasswd": {"realm": "tugboat-test", "path": path}}}


class TokenServer:
    """The bearer-token flow's token server: checks basic auth (when a user is configured) and
    issues an RS256 JWT for the requested scopes, signed by ``openssl`` with a key whose
    self-signed certificate the registry trusts (``auth.token.rootcertbundle``)."""

    def __init__(self, base: str) -> None:
        self.key = os.path.join(base, "token.key")
        self.cert = os.path.join(base, "token.crt")
        req = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"]
        req += ["-keyout", self.key, "-out", self.cert, "-subj", "/CN=tugboat-token"]
        subprocess.run(req, check=True, capture_output=True)
        der = subprocess.run(
            ["openssl", "x509", "-in", self.cert, "-outform", "DER"], check=True, capture_output=True
        )
        self.x5c = base64.b64encode(der.stdout).decode()
        self.port = free_port()
        self.realm = f"http://127.0.0.1:{self.port}/token"
        self.requests: list[dict[str, Any]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                import urllib.parse

                q = urllib.parse.urlparse(self.path)
                params = urllib.parse.parse_qs(q.query)
                header = self.headers.get("Authorization", "")
                user = None
                if header.startswith("Basic "):
                    user, _, pw = base64.b64decode(header[6:]).decode().partition(":")
                    if (user, pw) != (USER, PASSWORD):
                        self.send_response(401)
                        self.end_headers()
                        return
                server.requests.append({"user": user, "scope": params.get("scope", [])})
                access = []
                for scope in params.get("scope", []):
                    kind, name, actions = scope.split(":")
                    allowed = actions.split(",") if user else [a for a in actions.split(",") if a == "pull"]
                    access.append({"type": kind, "name": name, "actions": allowed})
                body = json.dumps({"token": server.sign(user or "", params["service"][0], access)}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def sign(self, subject: str, service: str, access: list[dict[str, Any]]) -> str:
        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]}
        claims = {
            "iss": "tugboat-test-issuer",
            "sub": subject,
            "aud": service,
            "exp": now + 600,
            "nbf": now - 10,
            "iat": now,
            "jti": os.urandom(8).hex(),
            "access": access,
        }
        signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
        sig = subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", self.key],
            input=signing_input.encode(),
            check=True,
            capture_output=True,
        ).stdout
        return f"{signing_input}.{b64(sig)}"

    def registry_config(self) -> dict[str, Any]:
        return {
            "auth": {
                "token": {
                    "realm": self.realm,
                    "service": "tugboat-test-registry",
                    "issuer": "tugboat-test-issuer",
                    "rootcertbundle": self.cert,
                }
            }
        }

    def __enter__(self) -> TokenServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture(scope="module")
def open_registry() -> Iterator[Registry]:
    with running_registry() as reg:
        yield reg


@pytest.fixture(scope="module")
def basic_registry() -> Iterator[Registry]:
    with running_registry(prep=_htpasswd) as reg:
        yield reg


@pytest.fixture(scope="module")
def token_registry() -> Iterator[tuple[Registry, TokenServer]]:
    base = tempfile.mkdtemp(prefix="tok", dir="/tmp")
    try:
        with TokenServer(base) as tokens, running_registry(tokens.registry_config()) as reg:
            yield reg, tokens
    finally:
        shutil.rmtree(base, ignore_errors=True)


# ==================================================================================== images


def make_oci_image(rootfs_tar: str, out_dir: str, marker: str) -> str:
    """An OCI layout ``out_dir:t`` made by umoci from a rootfs tar, with a file ``/marker`` so
    that every image made here has its own layer digests; returns the ``oci:DIR:t`` reference."""
    rootfs = os.path.join(out_dir + ".rootfs")
    os.makedirs(rootfs)
    subprocess.run(["tar", "-xf", rootfs_tar, "-C", rootfs], check=True)
    with open(os.path.join(rootfs, "marker"), "w") as f:
        f.write(marker + "\n")
    for argv in (
        ["umoci", "init", "--layout", out_dir],
        ["umoci", "new", "--image", f"{out_dir}:t"],
        ["umoci", "insert", "--image", f"{out_dir}:t", rootfs, "/"],
        ["umoci", "config", "--image", f"{out_dir}:t", "--config.cmd", "cat", "--config.cmd", "/marker"],
    ):
        subprocess.run(argv, check=True, capture_output=True)
    shutil.rmtree(rootfs)
    return f"oci:{out_dir}:t"


def skopeo(*args: str) -> bytes:
    return subprocess.run(["skopeo", *args], check=True, capture_output=True, timeout=120).stdout


def skopeo_push(src: str, dest: str, *, creds: str | None = None) -> None:
    args = ["copy", "--dest-tls-verify=false"]
    if creds:
        args += ["--dest-creds", creds]
    skopeo(*args, src, f"docker://{dest}")


def remote_digest(ref: str, *, creds: str | None = None) -> str:
    args = ["inspect", "--tls-verify=false"]
    if creds:
        args += ["--creds", creds]
    return str(json.loads(skopeo(*args, f"docker://{ref}"))["Digest"])


def layout_digests(layout_dir: str) -> dict[str, Any]:
    """Manifest, config and layer digests of the one image in an OCI layout."""
    with open(os.path.join(layout_dir, "index.json")) as f:
        [desc] = json.load(f)["manifests"]
    with open(os.path.join(layout_dir, "blobs", "sha256", desc["digest"][7:]), "rb") as f:
        manifest = json.loads(f.read())
    return {
        "manifest": desc["digest"],
        "config": manifest["config"]["digest"],
        "layers": [layer["digest"] for layer in manifest["layers"]],
    }


@pytest.fixture(scope="module")
def oci_image(busybox_tar: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(``oci:DIR:t`` reference, layout dir) of a busybox image made with umoci."""
    out = str(tmp_path_factory.mktemp("oci") / "layout")
    return make_oci_image(busybox_tar, out, "made by umoci"), out


# ================================================================================= unit tests


def test_challenge_parsing_of_what_registries_send() -> None:
    [c] = auth.parse_challenges(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/busybox:pull"'
    )
    assert c == auth.Challenge(
        "bearer",
        {
            "realm": "https://auth.docker.io/token",
            "service": "registry.docker.io",
            "scope": "repository:library/busybox:pull",
        },
    )
    assert auth.parse_challenges('Basic realm="Registry Realm"') == [
        auth.Challenge("basic", {"realm": "Registry Realm"})
    ]
    two = auth.parse_challenges('Basic realm="a, b", Bearer realm="x\\"y",error=invalid_token')
    assert two == [
        auth.Challenge("basic", {"realm": "a, b"}),
        auth.Challenge("bearer", {"realm": 'x"y', "error": "invalid_token"}),
    ]
    assert auth.parse_challenges("") == []
    assert auth.parse_challenges("Negotiate") == [auth.Challenge("negotiate", {})]


_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.", min_size=1)


@given(
    scheme=st.sampled_from(["Bearer", "Basic", "bearer"]),
    params=st.dictionaries(
        _token, st.text(st.characters(codec="ascii", exclude_categories=["Cc"])), max_size=4
    ),
)
def test_challenge_parsing_round_trips_any_quoted_values(scheme: str, params: dict[str, str]) -> None:
    def quote(v: str) -> str:
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'

    header = scheme + " " + ",".join(f"{k}={quote(v)}" for k, v in params.items())
    [c] = auth.parse_challenges(header)
    assert c.scheme == scheme.lower()
    assert c.params == {k.lower(): v for k, v in reversed(params.items())} or c.params == {
        k.lower(): v for k, v in params.items()
    }


def test_transport_policy_plain_http_only_for_loopback_and_marked_registries() -> None:
    policy = auth.TransportPolicy.from_list(["registry.lan:5000", "10.1.2.3"])
    assert policy.scheme("localhost:5000") == "http"
    assert policy.scheme("127.0.0.1:5000") == "http"
    assert policy.scheme("127.1.2.3") == "http"
    assert policy.scheme("[::1]:5000") == "http"
    assert policy.scheme("registry.lan:5000") == "http"
    assert policy.scheme("10.1.2.3:443") == "http"
    assert policy.scheme("registry.lan") == "https"
    assert policy.scheme("docker.io") == "https"
    assert policy.scheme("quay.io") == "https"
    assert auth.check_host("https://index.docker.io/v1/") == "docker.io"
    for bad in ("", "a/b", "http://x/y", "x y"):
        with pytest.raises(InvalidArgument):
            auth.check_host(bad)


def test_auth_store_is_root_only_and_atomic(tmp_path: Any) -> None:
    path = str(tmp_path / "root" / "auth.json")
    store = auth.AuthStore(path)
    assert store.get("r.example") is None
    assert not store.remove("r.example")
    store.set("r.example", auth.Credentials("me", "p:w"))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert store.get("r.example") == auth.Credentials("me", "p:w")
    assert "p:w" not in repr(store.get("r.example"))
    assert [n for n in os.listdir(tmp_path / "root") if n != "auth.json"] == []  # no temp file left
    os.chmod(path, 0o644)  # loosened behind our back: tightened before it is read
    assert store.get("r.example") == auth.Credentials("me", "p:w")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert store.remove("r.example")
    assert store.get("r.example") is None
    with open(path) as f:
        assert json.load(f) == {"auths": {}}


def test_backoff_doubles_up_to_a_ceiling() -> None:
    policy = registry.RetryPolicy(attempts=5, base_delay=0.2, max_delay=1.0)
    assert [policy.delay(i) for i in range(5)] == [0.2, 0.4, 0.8, 1.0, 1.0]


# ============================================================ the client alone, on a real registry


class _Sink:
    def __init__(self) -> None:
        self.h = hashlib.sha256()
        self.size = 0

    async def write(self, data: bytes) -> None:
        self.h.update(data)
        self.size += len(data)


P = TypeVar("P", bound="FlakyProxy")


class FlakyProxy:
    """A reverse proxy in front of a real registry that fails on purpose: the first try of each
    request whose path contains ``fail_on`` gets ``status`` (or, with ``cut``, the first half of
    the real answer and then a closed connection); GETs whose path contains one of ``corrupt``
    get their last byte changed. Records what it did."""

    def __init__(
        self,
        upstream: str,
        fail_on: tuple[str, ...],
        status: int = 503,
        cut: bool = False,
        corrupt: tuple[str, ...] = (),
    ) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.failed: list[str] = []
        proxy = self
        seen: set[tuple[str, str]] = set()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _relay(self) -> None:
                import http.client

                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                key = (self.command, self.path.split("?")[0])
                first = key not in seen and any(f in self.path for f in fail_on)
                seen.add(key)
                if first and not cut:
                    proxy.failed.append(f"{self.command} {self.path}")
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                conn = http.client.HTTPConnection(proxy.upstream, timeout=30)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                finally:
                    conn.close()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if first and cut and self.command == "GET" and len(data) > 2:
                    proxy.failed.append(f"cut {self.command} {self.path}")
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                if self.command == "GET" and data and any(c in self.path for c in corrupt):
                    proxy.failed.append(f"corrupted {self.path}")
                    data = data[:-1] + bytes([data[-1] ^ 0x20])  # same size, other content
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _relay

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self: P) -> P:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


async def _pull_and_check(host: str, repo: str, tag: str) -> str:
    async with registry.make_http_client() as http:
        session = registry.Session(http, host, scheme="http", retry=registry.RetryPolicy(base_delay=0.01))
        src = registry.RegistrySource(session, repo)
        body, _media = await src.get_manifest(tag)
        manifest = json.loads(body)
        for desc in [manifest["config"], *manifest["layers"]]:
            sink = _Sink()
            await src.fetch_blob(desc, sink)
            assert "sha256:" + sink.h.hexdigest() == desc["digest"]
            assert sink.size == desc["size"]
        return registry.sha256_digest(body)


@pytest.mark.registry
@needs_registry
@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
def test_client_retries_5xx_and_resumes_a_broken_download(
    open_registry: Registry, oci_image: tuple[str, str], anyio_backend: str
) -> None:
    skopeo_push(oci_image[0], f"{open_registry.host}/flaky/bb:1")
    expected = remote_digest(f"{open_registry.host}/flaky/bb:1")
    with FlakyProxy(open_registry.host, ("/manifests/", "/blobs/sha256:"), status=503) as proxy:
        got = anyio.run(_pull_and_check, proxy.host, "flaky/bb", "1", backend=anyio_backend)
    assert got == expected
    assert any("/manifests/1" in f for f in proxy.failed)
    assert sum("/blobs/" in f for f in proxy.failed) == 2  # config and layer, each retried once
    with FlakyProxy(open_registry.host, ("/blobs/sha256:",), cut=True) as proxy:
        got = anyio.run(_pull_and_check, proxy.host, "flaky/bb", "1", backend=anyio_backend)
    assert got == expected
    assert sum(f.startswith("cut GET") for f in proxy.failed) == 2  # resumed with Range


@pytest.mark.registry
@needs_registry
def test_client_gives_up_after_its_attempts_with_a_clear_error(open_registry: Registry) -> None:
    async def main() -> None:
        async with registry.make_http_client() as http:
            port = free_port()  # nobody listens there
            session = registry.Session(
                http,
                f"127.0.0.1:{port}",
                scheme="http",
                retry=registry.RetryPolicy(attempts=3, base_delay=0.01),
            )
            with pytest.raises(Unavailable, match="cannot reach registry"):
                await registry.RegistrySource(session, "x").get_manifest("latest")

    anyio.run(main)


# ============================================================== tugd: pull, push, digests, auth

F = TypeVar("F", bound=Callable[..., Any])


def integration(fn: F) -> F:
    """Marks of a test that runs tugd, runc and the registry."""
    for mark in (pytest.mark.integration, pytest.mark.registry, needs_root, needs_runc, needs_registry):
        fn = mark(fn)
    return fn


def _inspect(d: Any, ref: str) -> dict[str, Any]:
    return dict(json.loads(d.tug("image", "inspect", ref).stdout))


@integration
def test_pull_what_skopeo_pushed_then_push_what_skopeo_pulls(
    make_daemon: Any, open_registry: Registry, oci_image: tuple[str, str], backend: str, tmp_path: Any
) -> None:
    d = make_daemon(backend=backend, image=False)
    src = f"{open_registry.host}/skopeo/bb-{backend}:1"
    skopeo_push(oci_image[0], src)
    pushed_digest = remote_digest(src)
    original = layout_digests(oci_image[1])
    assert pushed_digest == original["manifest"]

    out = d.tug("pull", src).stdout.decode()  # not a terminal: no progress bars, only the result
    assert out == f"Digest: {pushed_digest}\nStatus: pulled {src}\n{src}\n"
    info = _inspect(d, src)
    assert info["digest"] == pushed_digest
    assert info["id"] == original["config"]
    assert info["layers"] == original["layers"]
    assert f"{open_registry.host}/skopeo/bb-{backend}@{pushed_digest}" in info["repo_digests"]
    r = d.tug("run", "--rm", src)  # the pulled image runs: its Cmd prints the marker
    assert r.stdout == b"made by umoci\n"

    dest = f"{open_registry.host}/tug/bb-{backend}:1"
    out = d.tug("push", src, dest).stdout.decode()
    assert out == f"{dest}: digest: {pushed_digest} (0 uploaded, 0 already there, 2 mounted)\n"
    assert remote_digest(dest) == pushed_digest
    copy_dir = str(tmp_path / "copy")
    skopeo("copy", "--preserve-digests", "--src-tls-verify=false", f"docker://{dest}", f"oci:{copy_dir}:t")
    assert layout_digests(copy_dir) == original
    # Pushed again: the registry has every blob, nothing is sent twice.
    out = d.tug("push", src, dest).stdout.decode()
    assert "(0 uploaded, 2 already there, 0 mounted)" in out


@integration
def test_push_of_a_local_image_in_chunks_and_pull_into_another_tugd(
    make_daemon: Any, open_registry: Registry, tmp_path: Any
) -> None:
    d = make_daemon()  # busybox imported from a rootfs tar
    local = _inspect(d, "busybox")
    dest = f"{open_registry.host}/chunked/busybox:1"
    result = d.call("image.push", {"ref": "busybox", "dest": dest, "chunk_size": 65536})
    assert result["digest"] == local["digest"]
    assert sorted(result["uploaded"]) == sorted([local["id"], *local["layers"]])
    assert remote_digest(dest) == local["digest"]
    assert f"{open_registry.host}/chunked/busybox@{local['digest']}" in _inspect(d, "busybox")["repo_digests"]
    copy_dir = str(tmp_path / "copy")
    skopeo("copy", "--preserve-digests", "--src-tls-verify=false", f"docker://{dest}", f"oci:{copy_dir}:t")
    assert layout_digests(copy_dir) == {
        "manifest": local["digest"],
        "config": local["id"],
        "layers": local["layers"],
    }

    other = make_daemon(image=False)
    assert other.tug("pull", "-q", dest).stdout.decode() == f"{dest}\n"
    assert _inspect(other, dest)["digest"] == local["digest"]
    assert other.tug("run", "--rm", dest, "echo", "pulled").stdout == b"pulled\n"
    # By digest too: the same image, named by its repo digest.
    by_digest = f"{open_registry.host}/chunked/busybox@{local['digest']}"
    assert other.call("image.pull", {"ref": by_digest})["digest"] == local["digest"]


@integration
def test_bad_pulls_and_pushes_are_clear_errors_that_change_nothing(
    make_daemon: Any, open_registry: Registry
) -> None:
    d = make_daemon()
    before = d.tug("images", "--format", "json").stdout
    r = d.tug("pull", "Not A Ref", check=False)
    assert r.returncode == 1
    assert b"invalid image reference" in r.stderr
    r = d.tug("pull", f"{open_registry.host}/nothing/here:1", check=False)
    assert r.returncode == 1
    assert b"manifest unknown" in r.stderr
    r = d.tug("push", "no-such-image", f"{open_registry.host}/x:1", check=False)
    assert r.returncode == 1
    assert b"no such image" in r.stderr
    r = d.tug("push", "busybox", f"{open_registry.host}/x@sha256:{'0' * 64}", check=False)
    assert r.returncode == 1
    assert b"needs a tag" in r.stderr
    r = d.tug("pull", f"127.0.0.1:{free_port()}/x:1", check=False)
    assert r.returncode == 1
    assert b"cannot reach registry" in r.stderr
    assert d.tug("images", "--format", "json").stdout == before


@integration
def test_login_basic_auth_then_push_pull_then_logout(
    make_daemon: Any, basic_registry: Registry, oci_image: tuple[str, str]
) -> None:
    d = make_daemon()
    host = basic_registry.host
    auth_file = os.path.join(d.root, "auth.json")
    r = d.tug("push", "busybox", f"{host}/private/bb:1", check=False)
    assert r.returncode == 1
    assert f"requires a login: run `tug login {host}`".encode() in r.stderr
    r = d.tug("login", "-u", USER, "--password-stdin", host, input=b"wrong\n", check=False)
    assert r.returncode == 1
    assert b"unauthorized" in r.stderr
    assert not os.path.exists(auth_file)  # nothing saved
    r = d.tug("login", "-u", USER, "--password-stdin", host, input=PASSWORD.encode() + b"\n")
    assert r.stdout == b"Login Succeeded\n"
    st_ = os.stat(auth_file)
    assert (stat.S_IMODE(st_.st_mode), st_.st_uid) == (0o600, 0)
    with open(auth_file) as f:
        assert list(json.load(f)["auths"]) == [host]

    digest = d.call("image.push", {"ref": "busybox", "dest": f"{host}/private/bb:1"})["digest"]
    assert remote_digest(f"{host}/private/bb:1", creds=f"{USER}:{PASSWORD}") == digest
    skopeo_push(oci_image[0], f"{host}/private/umoci:1", creds=f"{USER}:{PASSWORD}")
    d.tug("pull", f"{host}/private/umoci:1")
    assert _inspect(d, f"{host}/private/umoci:1")["digest"] == layout_digests(oci_image[1])["manifest"]

    assert d.tug("logout", host).stdout == f"Removing login credentials for {host}\n".encode()
    assert d.tug("logout", host).stdout == f"Not logged in to {host}\n".encode()
    assert d.tug("logout").stdout == b"Not logged in to docker.io\n"  # docker's default registry
    r = d.tug("pull", f"{host}/private/umoci:1", check=False)
    assert r.returncode == 1
    assert b"requires a login" in r.stderr


@integration
def test_bearer_token_flow_with_a_real_token_server(
    make_daemon: Any, token_registry: tuple[Registry, TokenServer], oci_image: tuple[str, str]
) -> None:
    reg, tokens = token_registry
    d = make_daemon()
    # Anonymous: the token server grants pull only, so a push is refused by the registry.
    r = d.tug("push", "busybox", f"{reg.host}/tok/bb:1", check=False)
    assert r.returncode == 1
    assert b"unauthorized" in r.stderr or b"denied" in r.stderr
    d.tug("login", "-u", USER, "--password-stdin", reg.host, input=PASSWORD.encode())
    digest = d.call("image.push", {"ref": "busybox", "dest": f"{reg.host}/tok/bb:1"})["digest"]
    assert any(q["user"] == USER and "repository:tok/bb:pull,push" in q["scope"] for q in tokens.requests)
    d.tug("logout", reg.host)
    # Anonymous pull of what was pushed: a token with pull access only.
    other = make_daemon(image=False)
    other.tug("pull", f"{reg.host}/tok/bb:1")
    assert _inspect(other, f"{reg.host}/tok/bb:1")["digest"] == digest
    assert any(q["user"] is None and q["scope"] == ["repository:tok/bb:pull"] for q in tokens.requests)


@integration
def test_progress_bars_on_a_terminal(make_daemon: Any, open_registry: Registry) -> None:
    import pexpect

    d = make_daemon()
    dest = f"{open_registry.host}/tty/busybox:1"
    child = pexpect.spawn(TUG, ["--socket", d.socket, "push", "busybox", dest], timeout=60)
    child.expect(pexpect.EOF)
    out = child.before.decode()
    assert "Pushed" in out
    assert "\x1b[" in out  # redrawn in place
    other = make_daemon(image=False)
    child = pexpect.spawn(TUG, ["--socket", other.socket, "pull", dest], timeout=60)
    child.expect(pexpect.EOF)
    out = child.before.decode()
    assert "Verified" in out or "Download complete" in out
    assert out.rstrip().endswith(dest)


def test_progress_bars_redraw_each_layer_in_place() -> None:
    import io

    from supervisor.cli.pull import ProgressBars

    out = io.StringIO()
    bars = ProgressBars(out)
    bars.update({"id": "aaa", "action": "downloading", "current": 0, "total": 100})
    bars.update({"id": "bbb", "action": "exists", "current": 5, "total": 5})
    bars.update({"id": "aaa", "action": "downloading", "current": 50, "total": 100})
    lines = out.getvalue()
    assert lines.startswith("aaa: Downloading [>")
    assert "bbb: Already exists\n" in lines
    # the second update of aaa goes two lines up, clears the line, and comes back down
    assert "\x1b[2A\r\x1b[2Kaaa: Downloading [===============>" in lines
    assert lines.endswith("\x1b[2B\r")
    assert ProgressBars.render({"id": "c", "action": "pushed"}) == "c: Pushed"


@needs_runc
def test_insecure_registry_option_is_validated() -> None:
    from supervisor.config import Config, ConfigError

    cfg = Config(insecure_registries=("registry.lan:5000", "http://10.0.0.2/")).validated()
    assert cfg.insecure_registries == ("registry.lan:5000", "10.0.0.2")
    with pytest.raises(ConfigError, match="--insecure-registry"):
        Config(insecure_registries=("not a host",)).validated()


class CountingProxy(FlakyProxy):
    """A FlakyProxy that fails nothing but holds each blob upload (``PUT`` into an upload
    session) until one more than ``bound`` are in flight or a second has passed, and records the
    most it saw at once: with the bound respected that is exactly ``bound``."""

    def __init__(self, upstream: str, bound: int) -> None:
        super().__init__(upstream, fail_on=())
        self.bound = bound
        self.in_flight = 0
        self.most = 0
        self.cond = threading.Condition()
        relay = self.httpd.RequestHandlerClass.do_PUT  # type: ignore[attr-defined]
        proxy = self

        def do_put(handler: Any) -> None:
            if "/blobs/uploads/" not in handler.path:
                relay(handler)
                return
            with proxy.cond:
                proxy.in_flight += 1
                proxy.most = max(proxy.most, proxy.in_flight)
                proxy.cond.notify_all()
                proxy.cond.wait_for(lambda: proxy.in_flight > proxy.bound, timeout=1.0)
            try:
                relay(handler)
            finally:
                with proxy.cond:
                    proxy.in_flight -= 1

        self.httpd.RequestHandlerClass.do_PUT = do_put  # type: ignore[attr-defined]


@pytest.mark.registry
@needs_registry
@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
def test_push_runs_blob_uploads_concurrently_within_the_bound(
    open_registry: Registry, tmp_path: Any, anyio_backend: str
) -> None:
    blobs = []
    for i in range(4):
        data = json.dumps({"architecture": "amd64", "os": "linux"}).encode() if i == 0 else os.urandom(4096)
        path = str(tmp_path / f"blob{i}")
        with open(path, "wb") as f:
            f.write(data)
        blobs.append(registry.PushBlob(registry.sha256_digest(data), len(data), path))
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": registry.MEDIA_OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": blobs[0].digest,
                "size": blobs[0].size,
            },
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": b.digest, "size": b.size}
                for b in blobs[1:]
            ],
        }
    ).encode()

    async def push(host: str) -> registry.PushResult:
        async with registry.make_http_client() as http:
            session = registry.Session(http, host, scheme="http")
            target = registry.RegistryTarget(session, f"bound/{anyio_backend}")
            return await target.push("1", manifest, registry.MEDIA_OCI_MANIFEST, blobs, concurrency=2)

    with CountingProxy(open_registry.host, bound=2) as proxy:
        result = anyio.run(push, proxy.host, backend=anyio_backend)
    assert proxy.most == 2
    assert sorted(result.uploaded) == sorted(b.digest for b in blobs)
    assert remote_digest(f"{open_registry.host}/bound/{anyio_backend}:1") == registry.sha256_digest(manifest)


def _non_loopback_ipv4() -> str | None:
    """An IPv4 address of this host that is not loopback (where the routing table says a packet
    to a public address would leave from), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: UDP connect only picks a route
        except OSError:
            return None
        ip = str(s.getsockname()[0])
    return None if ip.startswith("127.") or ip == "0.0.0.0" else ip


@integration
def test_plain_http_only_for_registries_marked_insecure(make_daemon: Any, oci_image: tuple[str, str]) -> None:
    ip = _non_loopback_ipv4()
    if ip is None:
        pytest.skip("this host has no non-loopback IPv4 address")
    with running_registry(ip=ip) as reg:
        ref = f"{reg.host}/plain/bb:1"
        skopeo_push(oci_image[0], ref)
        strict = make_daemon(image=False)  # not loopback, not marked: HTTPS, which fails
        r = strict.tug("pull", ref, check=False)
        assert r.returncode == 1
        assert b"over HTTPS" in r.stderr
        assert f"--insecure-registry {reg.host}".encode() in r.stderr
        assert strict.call("image.list") == []
        marked = make_daemon(extra=["--insecure-registry", reg.host], image=False)
        marked.tug("pull", ref)
        assert _inspect(marked, ref)["digest"] == remote_digest(ref)


@integration
def test_content_that_does_not_match_its_digest_is_refused_and_nothing_stored(
    make_daemon: Any, open_registry: Registry, oci_image: tuple[str, str]
) -> None:
    skopeo_push(oci_image[0], f"{open_registry.host}/corrupt/bb:1")
    layer = layout_digests(oci_image[1])["layers"][0]
    d = make_daemon(image=False)
    blobs_dir = os.path.join(d.root, "blobs", "sha256")
    for what, expected in ((f"/blobs/{layer}", b"corrupt"), ("/manifests/", b"digest")):
        with FlakyProxy(open_registry.host, (), corrupt=(what,)) as proxy:
            r = d.tug("pull", f"{proxy.host}/corrupt/bb:1", check=False)
        assert r.returncode == 1
        assert expected in r.stderr, r.stderr
        assert any(f.startswith("corrupted") for f in proxy.failed)
        assert d.call("image.list") == []
        assert (
            not os.path.isdir(blobs_dir)
            or [n for n in os.listdir(blobs_dir) if n == layer[7:] or n.startswith(".")] == []
        )
