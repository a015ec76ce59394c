"""tug-cri end to end through a gRPC client (issue 16): a real tugd, a real tug-cri on a temporary
socket, a real docker-registry on 127.0.0.1 for the pulls. Version, Status, RuntimeConfig,
UpdateRuntimeConfig and the ImageService; bad input gets the right status and changes nothing."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc
import pytest

from cri.gen import api_pb2
from tugwire.errors import InvalidArgument

from .conftest import needs_root, needs_runc
from .cri_helpers import TUG_CRI, TugCri, make_tug_cri
from .test_registry import (
    PASSWORD,
    USER,
    Registry,
    TokenServer,
    _htpasswd,
    needs_registry,
    running_registry,
    token_registry,
)

__all__ = ["make_tug_cri", "token_registry"]  # fixtures, imported for this module's tests

F = TypeVar("F", bound=Callable[..., Any])


def integration(fn: F) -> F:
    for mark in (pytest.mark.integration, needs_root, needs_runc):
        fn = mark(fn)
    return fn


def code_of(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    """The status code and message of a call that must fail."""
    with pytest.raises(grpc.RpcError) as info:
        call()
    err: Any = info.value
    return err.code(), err.details()


def spec(ref: str) -> api_pb2.ImageSpec:
    return api_pb2.ImageSpec(image=ref)


def status(cri: TugCri, ref: str, verbose: bool = False) -> api_pb2.ImageStatusResponse:
    resp: api_pb2.ImageStatusResponse = cri.images.ImageStatus(
        api_pb2.ImageStatusRequest(image=spec(ref), verbose=verbose)
    )
    return resp


def listed(cri: TugCri, ref: str = "") -> list[api_pb2.Image]:
    req = api_pb2.ListImagesRequest()
    if ref:
        req.filter.image.image = ref
    return list(cri.images.ListImages(req).images)


# ============================================================================ RuntimeService


@integration
def test_version_status_runtime_config_and_tugd_going_away(make_daemon: Any, make_tug_cri: Any) -> None:
    d = make_daemon(image=False)
    cri: TugCri = make_tug_cri(d)

    v = cri.runtime.Version(api_pb2.VersionRequest(version="v1"))
    assert (v.version, v.runtime_name, v.runtime_version, v.runtime_api_version) == (
        "0.1.0",
        "tugboat",
        d.call("system.info")["version"],
        "v1",
    )

    s = cri.runtime.Status(api_pb2.StatusRequest(verbose=True))
    conditions = {c.type: c for c in s.status.conditions}
    assert conditions["RuntimeReady"].status is True
    assert conditions["NetworkReady"].status is True  # the built-in pod network (docs/cri.md)
    assert json.loads(s.info["network"])["mode"] == "builtin"
    assert json.loads(s.info["tugd"])["root"] == d.root
    assert json.loads(s.info["config"]) == {"listen": cri.socket, "tugd_socket": d.socket}
    assert "tugd" not in cri.runtime.Status(api_pb2.StatusRequest()).info

    rc = cri.runtime.RuntimeConfig(api_pb2.RuntimeConfigRequest())
    assert rc.HasField("linux") and rc.linux.cgroup_driver == api_pb2.CgroupDriver.CGROUPFS

    update = api_pb2.UpdateRuntimeConfigRequest()
    update.runtime_config.network_config.pod_cidr = "10.88.0.0/16"
    cri.runtime.UpdateRuntimeConfig(update)
    assert d.call("pod.network_config")["pod_cidr"] == "10.88.0.0/16"  # kept by tugd

    # What is not there yet answers UNIMPLEMENTED, unary and streaming alike.
    code, message = code_of(lambda: cri.runtime.CheckpointContainer(api_pb2.CheckpointContainerRequest()))
    assert (code, message) == (
        grpc.StatusCode.UNIMPLEMENTED,
        "tug-cri does not implement RuntimeService.CheckpointContainer yet",
    )
    assert code_of(lambda: cri.runtime.CheckpointContainer(api_pb2.CheckpointContainerRequest()))[0] == (
        grpc.StatusCode.UNIMPLEMENTED
    )
    assert code_of(lambda: list(cri.images.StreamImages(api_pb2.StreamImagesRequest())))[0] == (
        grpc.StatusCode.UNIMPLEMENTED
    )
    assert "Traceback" not in cri.read_log()

    # tugd goes away: tug-cri stays up and says so; tugd comes back: nothing to re-establish.
    d.stop()
    s = cri.runtime.Status(api_pb2.StatusRequest())
    ready = {c.type: c for c in s.status.conditions}["RuntimeReady"]
    assert (ready.status, ready.reason) == (False, "TugdUnavailable")
    network = {c.type: c for c in s.status.conditions}["NetworkReady"]
    assert (network.status, network.reason) == (False, "NoPodNetwork")
    assert d.socket in ready.message
    assert code_of(lambda: cri.runtime.Version(api_pb2.VersionRequest()))[0] == grpc.StatusCode.UNAVAILABLE
    assert code_of(lambda: listed(cri))[0] == grpc.StatusCode.UNAVAILABLE
    d.start()
    s = cri.runtime.Status(api_pb2.StatusRequest())
    assert {c.type: c.status for c in s.status.conditions} == {"RuntimeReady": True, "NetworkReady": True}


@integration
def test_busy_socket_refused_stale_socket_replaced_after_a_kill_9(
    make_daemon: Any, make_tug_cri: Any
) -> None:
    d = make_daemon()
    cri: TugCri = make_tug_cri(d)
    r = subprocess.run(
        [TUG_CRI, "--listen", cri.socket, "--socket", d.socket], capture_output=True, timeout=60
    )
    assert r.returncode == 1
    assert b"another server is listening on it" in r.stderr
    assert cri.runtime.Version(api_pb2.VersionRequest()).version == "0.1.0"  # still served
    not_a_socket = os.path.join(d.base, "plain-file")
    with open(not_a_socket, "w") as f:
        f.write("mine\n")
    r = subprocess.run([TUG_CRI, "--listen", not_a_socket], capture_output=True, timeout=60)
    assert (r.returncode, b"is not a socket" in r.stderr) == (1, True)
    with open(not_a_socket) as f:
        assert f.read() == "mine\n"

    # kill -9: the socket file stays behind; a new tug-cri replaces it and answers as the old one
    # did (it had nothing of its own to lose).
    before = listed(cri)
    assert cri.proc is not None
    cri.proc.kill()
    cri.proc.wait()
    cri.proc = None
    assert os.path.exists(cri.socket)
    again: TugCri = make_tug_cri(d)
    assert again.socket == cri.socket
    assert listed(again) == before


# ============================================================================== ImageService


@integration
def test_list_status_and_remove_every_tag(
    make_daemon: Any, make_tug_cri: Any, busybox_tar: str, backend: str
) -> None:
    """On both of tugd's backends: tug-cri (asyncio) is only a client of its API."""
    d = make_daemon(backend=backend)
    cri: TugCri = make_tug_cri(d)
    bb = d.call("image.inspect", {"ref": "busybox"})
    d.call("image.tag", {"source": "busybox", "target": "example.com/team/tool:1"})
    d.call("image.tag", {"source": "busybox", "target": "cri-test:two"})
    d.call("image.import", {"path": busybox_tar, "ref": "named-user:1", "config": {"User": "www-data"}})
    d.call("image.import", {"path": busybox_tar, "ref": "uid-user:1", "config": {"User": "1002:1003"}})

    images = {i.id: i for i in listed(cri)}
    assert len(images) == 3
    image = images[bb["id"]]
    assert sorted(image.repo_tags) == [
        "docker.io/library/busybox:latest",
        "docker.io/library/cri-test:two",
        "example.com/team/tool:1",
    ]
    assert image.spec.image == bb["id"]
    assert image.size == bb["size"] > 0
    assert not image.HasField("uid") and image.username == ""
    named = next(i for i in images.values() if "docker.io/library/named-user:1" in i.repo_tags)
    assert (named.username, named.HasField("uid")) == ("www-data", False)
    by_uid = next(i for i in images.values() if "docker.io/library/uid-user:1" in i.repo_tags)
    assert (by_uid.uid.value, by_uid.username) == (1002, "")

    # ImageStatus and ListImages' filter: by any name, qualified or not, by id, by id prefix.
    for ref in (
        "busybox",
        "busybox:latest",
        "docker.io/library/busybox:latest",
        "example.com/team/tool:1",
        bb["id"],
        bb["id"].removeprefix("sha256:"),
        bb["id"][7:19],
    ):
        assert status(cri, ref).image == image, ref
        assert listed(cri, ref) == [image], ref
    verbose = status(cri, "cri-test:two", verbose=True)
    assert json.loads(verbose.info["info"])["id"] == bb["id"]
    # Absent: an empty answer, not an error (kubelet then pulls).
    for ref in ("nothing-here", "busybox:other", f"sha256:{'0' * 64}"):
        assert not status(cri, ref).HasField("image"), ref
        assert listed(cri, ref) == [], ref

    # RemoveImage by one of its names removes every name, and the image.
    before = d.call("image.list")
    cri.images.RemoveImage(api_pb2.RemoveImageRequest(image=spec("cri-test:two")))
    assert not status(cri, bb["id"]).HasField("image")
    assert len(d.call("image.list")) == len(before) - 1
    for ref in ("busybox", "example.com/team/tool:1", "cri-test:two"):
        assert not status(cri, ref).HasField("image"), ref
    # Idempotent: again, and for an id that never was.
    cri.images.RemoveImage(api_pb2.RemoveImageRequest(image=spec("cri-test:two")))
    cri.images.RemoveImage(api_pb2.RemoveImageRequest(image=spec(bb["id"])))
    cri.images.RemoveImage(api_pb2.RemoveImageRequest(image=spec(f"sha256:{'1' * 64}")))
    assert len(d.call("image.list")) == len(before) - 1

    fs = cri.images.ImageFsInfo(api_pb2.ImageFsInfoRequest())
    [usage] = fs.image_filesystems
    assert usage.fs_id.mountpoint == d.root
    assert usage.used_bytes.value == d.call("system.df")["images"]["size"] > 0
    assert usage.timestamp > 0 and not usage.HasField("inodes_used")
    assert list(fs.container_filesystems) == []


@integration
def test_bad_image_requests_get_their_status_and_change_nothing(make_daemon: Any, make_tug_cri: Any) -> None:
    d = make_daemon()
    cri: TugCri = make_tug_cri(d)
    before = d.call("image.list")

    calls: list[Callable[[str], Any]] = [
        lambda ref: status(cri, ref),
        lambda ref: listed(cri, ref),
        lambda ref: cri.images.RemoveImage(api_pb2.RemoveImageRequest(image=spec(ref))),
        lambda ref: cri.images.PullImage(api_pb2.PullImageRequest(image=spec(ref))),
    ]
    for bad in ("Not A Ref", "UPPER/case:1", "x:" + "t" * 200, "a@sha256:123", "../../etc/passwd"):
        for call in calls:
            code, message = code_of(lambda: call(bad))  # noqa: B023 (called at once)
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (bad, code, message)
            assert "invalid image reference" in message
    empty_calls: list[Callable[[], Any]] = [
        lambda: status(cri, ""),
        lambda: cri.images.RemoveImage(api_pb2.RemoveImageRequest()),
        lambda: cri.images.PullImage(api_pb2.PullImageRequest()),
    ]
    for empty in empty_calls:
        assert code_of(empty) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "no image given (ImageSpec.image is empty)",
        )

    # An image a container uses is not removed, and keeps every name.
    d.call("image.tag", {"source": "busybox", "target": "in-use:1"})
    d.call("container.create", {"image": "busybox", "name": "user-of-busybox", "cmd": ["true"]})
    code, message = code_of(
        lambda: cri.images.RemoveImage(api_pb2.RemoveImageRequest(image=spec("in-use:1")))
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION, message
    assert sorted(status(cri, "busybox").image.repo_tags) == [
        "docker.io/library/busybox:latest",
        "docker.io/library/in-use:1",
    ]
    d.call("container.delete", {"id": "user-of-busybox"})
    d.call("image.remove", {"ref": "in-use:1"})
    assert d.call("image.list") == before


# ========================================================================= pulls, registries


@pytest.fixture(scope="module")
def open_registry() -> Iterator[Registry]:
    with running_registry() as reg:
        yield reg


@pytest.fixture(scope="module")
def basic_registry() -> Iterator[Registry]:
    with running_registry(prep=_htpasswd) as reg:
        yield reg


@integration
@pytest.mark.registry
@needs_registry
def test_pull_from_a_local_registry(make_daemon: Any, make_tug_cri: Any, open_registry: Registry) -> None:
    source = make_daemon()
    bb = source.call("image.inspect", {"ref": "busybox"})
    ref = f"{open_registry.host}/cri/busybox:1"
    pushed = source.call("image.push", {"ref": "busybox", "dest": ref})

    d = make_daemon(image=False)
    cri: TugCri = make_tug_cri(d)
    assert not status(cri, ref).HasField("image")
    pulled = cri.images.PullImage(api_pb2.PullImageRequest(image=spec(ref)))
    assert pulled.image_ref == bb["id"]  # the image's id, as ImageStatus gives it
    image = status(cri, ref).image
    assert image.id == pulled.image_ref
    assert list(image.repo_tags) == [ref]
    assert list(image.repo_digests) == [f"{open_registry.host}/cri/busybox@{pushed['digest']}"]
    # Again: nothing new, the same answer.
    assert cri.images.PullImage(api_pb2.PullImageRequest(image=spec(ref))).image_ref == bb["id"]
    # By digest.
    by_digest = f"{open_registry.host}/cri/busybox@{pushed['digest']}"
    assert cri.images.PullImage(api_pb2.PullImageRequest(image=spec(by_digest))).image_ref == bb["id"]

    before = d.call("image.list")
    code, message = code_of(
        lambda: cri.images.PullImage(api_pb2.PullImageRequest(image=spec(f"{open_registry.host}/cri/none:1")))
    )
    assert code == grpc.StatusCode.NOT_FOUND, message
    assert "manifest unknown" in message
    assert d.call("image.list") == before


@integration
@pytest.mark.registry
@needs_registry
def test_pull_with_the_requests_own_credentials(
    make_daemon: Any, make_tug_cri: Any, basic_registry: Registry
) -> None:
    """PullImage's AuthConfig reaches tugd's image.pull as ``auth``: used for that pull, never
    saved, never logged; username and password or ``auth`` (base64); a refusal with wrong ones
    changes nothing."""
    host = basic_registry.host
    source = make_daemon()
    source.call("auth.login", {"registry": host, "username": USER, "password": PASSWORD})
    ref = f"{host}/private/busybox:1"
    source.call("image.push", {"ref": "busybox", "dest": ref})
    want = source.call("image.inspect", {"ref": "busybox"})["id"]

    d = make_daemon(image=False)
    cri: TugCri = make_tug_cri(d)

    def pull(auth: api_pb2.AuthConfig | None = None) -> Callable[[], Any]:
        req = api_pb2.PullImageRequest(image=spec(ref))
        if auth is not None:
            req.auth.CopyFrom(auth)
        return lambda: cri.images.PullImage(req)

    code, message = code_of(pull())
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "requires a login" in message
    wrong = api_pb2.AuthConfig(username=USER, password="not it", server_address=host)
    code, message = code_of(pull(wrong))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "check the credentials" in message, message
    assert d.call("image.list") == []
    mine = api_pb2.AuthConfig(username=USER, password=PASSWORD, server_address=host)
    assert pull(mine)().image_ref == want
    # Nothing saved: once the image is gone, a pull without credentials is refused again.
    d.call("image.remove", {"ref": ref})
    assert not os.path.exists(os.path.join(d.root, "auth.json"))
    assert code_of(pull())[0] == grpc.StatusCode.FAILED_PRECONDITION
    # ``auth``: base64 of username:password, as in a docker config.
    encoded = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    assert pull(api_pb2.AuthConfig(auth=encoded))().image_ref == want
    code, message = code_of(pull(api_pb2.AuthConfig(auth="%%% not base64")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "base64" in message
    for log in (cri.read_log(), d.read_log()):
        assert PASSWORD not in log and encoded not in log
    # The token kinds reach tugd too: a registry token is sent as it is (Basic wants none).
    code, message = code_of(pull(api_pb2.AuthConfig(registry_token="abc.def.ghi")))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "check the credentials" in message, message
    # tugd's own API: what it refuses.
    with pytest.raises(InvalidArgument, match="unknown key"):
        d.call("image.pull", {"ref": ref, "auth": {"user": USER}})
    with pytest.raises(InvalidArgument, match="password without a username"):
        d.call("image.pull", {"ref": ref, "auth": {"password": PASSWORD}})


def answer_refresh_tokens(tokens: TokenServer, refresh: str) -> list[dict[str, list[str]]]:
    """Make the test token server take OAuth2 refresh tokens (``POST`` with
    ``grant_type=refresh_token``): ``refresh`` gets a token for the scopes asked; the forms
    posted are returned (a list that grows)."""
    posts: list[dict[str, list[str]]] = []

    def do_post(handler: Any) -> None:
        length = int(handler.headers.get("Content-Length", "0"))
        form = urllib.parse.parse_qs(handler.rfile.read(length).decode())
        posts.append(form)
        if form.get("grant_type") != ["refresh_token"] or form.get("refresh_token") != [refresh]:
            handler.send_response(401)
            handler.end_headers()
            return
        access = []
        for scope in " ".join(form.get("scope", [])).split():
            kind, name, actions = scope.split(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        body = json.dumps({"access_token": tokens.sign(USER, form["service"][0], access)}).encode()
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    tokens.httpd.RequestHandlerClass.do_POST = do_post  # type: ignore[attr-defined]
    return posts


@integration
@pytest.mark.registry
@needs_registry
def test_pull_with_a_registry_token(
    make_daemon: Any, make_tug_cri: Any, token_registry: tuple[Registry, TokenServer]
) -> None:
    """A registry behind a token server: PullImage's ``registry_token`` is the bearer token the
    registry gets as it is (no token server asked); an ``identity_token`` is exchanged at the
    token server (OAuth2 refresh token, POST); a username and password go through the token
    server's GET."""
    reg, tokens = token_registry
    posts = answer_refresh_tokens(tokens, "refresh-me")
    source = make_daemon()
    source.call("auth.login", {"registry": reg.host, "username": USER, "password": PASSWORD})
    ref = f"{reg.host}/tok/busybox:1"
    source.call("image.push", {"ref": "busybox", "dest": ref})
    want = source.call("image.inspect", {"ref": "busybox"})["id"]
    d = make_daemon(image=False)
    cri: TugCri = make_tug_cri(d)
    token = tokens.sign(
        USER,
        "tugboat-test-registry",
        [{"type": "repository", "name": "tok/busybox", "actions": ["pull"]}],
    )
    asked = len(tokens.requests)
    req = api_pb2.PullImageRequest(image=spec(ref), auth=api_pb2.AuthConfig(registry_token=token))
    assert cri.images.PullImage(req).image_ref == want
    assert len(tokens.requests) == asked  # the token server was not asked
    d.call("image.remove", {"ref": ref})
    req = api_pb2.PullImageRequest(image=spec(ref), auth=api_pb2.AuthConfig(username=USER, password=PASSWORD))
    assert cri.images.PullImage(req).image_ref == want
    assert tokens.requests[-1]["user"] == USER
    d.call("image.remove", {"ref": ref})
    req = api_pb2.PullImageRequest(image=spec(ref), auth=api_pb2.AuthConfig(identity_token="not-mine"))
    code, message = code_of(lambda: cri.images.PullImage(req))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "token server refused" in message, message
    assert d.call("image.list") == []
    req = api_pb2.PullImageRequest(image=spec(ref), auth=api_pb2.AuthConfig(identity_token="refresh-me"))
    assert cri.images.PullImage(req).image_ref == want
    assert (
        posts[-1]["refresh_token"] == ["refresh-me"] and "repository:tok/busybox:pull" in posts[-1]["scope"]
    )
    for log in (cri.read_log(), d.read_log()):
        assert "refresh-me" not in log and token not in log
