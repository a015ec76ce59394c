"""docker-py (the PyPI package ``docker``) against ``tug-docker-api`` in front of a real tugd
(issue 15): the calls its users make, with the shapes its model objects read."""

from __future__ import annotations

import io
import os
import time
from collections.abc import Iterator
from typing import Any

import docker  # the test extras install it: a missing one fails, never skips
import pytest

from .conftest import needs_root, needs_runc
from .docker_helpers import DockerApi, dapi, make_docker_api, wait_until

pytestmark = [
    pytest.mark.integration,
    needs_root,
    needs_runc,
    # docker-py leaves the sockets of its streamed responses to the garbage collector: its own,
    # not the server's (the server side is checked in test_docker_http.py).
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]


@pytest.fixture
def client(dapi: DockerApi) -> Iterator[Any]:
    c = docker.DockerClient(base_url=f"unix://{dapi.sock}", version="auto", timeout=60)
    try:
        yield c
    finally:
        c.close()


def test_ping_version_info(client: Any) -> None:
    assert client.ping() is True
    v = client.version()
    assert (v["ApiVersion"], v["MinAPIVersion"]) == ("1.43", "1.24")
    assert client.api.api_version == "1.43"
    info = client.info()
    assert (info["Images"], info["Containers"]) == (1, 0)


def test_containers_run_logs_wait_remove(client: Any) -> None:
    out = client.containers.run("busybox", ["sh", "-c", "echo out; echo err >&2"], remove=True)
    assert out == b"out\n"  # stdout only, as docker-py's default
    out = client.containers.run("busybox", ["sh", "-c", "echo out; echo err >&2"], stderr=True, remove=True)
    assert sorted(out.splitlines()) == [b"err", b"out"]
    assert client.containers.list(all=True) == []
    with pytest.raises(docker.errors.ContainerError) as err:
        client.containers.run("busybox", ["sh", "-c", "exit 3"], remove=True)
    assert err.value.exit_status == 3
    c = client.containers.run("busybox", ["sleep", "300"], detach=True, name="py1", environment={"A": "b"})
    c.reload()
    assert (c.name, c.status, c.attrs["Config"]["Env"]) == ("py1", "running", ["A=b"])
    assert [x.name for x in client.containers.list()] == ["py1"]
    assert [x.name for x in client.containers.list(filters={"name": "py"})] == ["py1"]
    assert client.containers.get("py1").id == c.id
    result = c.exec_run(["sh", "-c", "echo from-exec; exit 4"])
    assert (result.exit_code, result.output) == (4, b"from-exec\n")
    result = c.exec_run(["sh", "-c", "echo a; echo b >&2"], demux=True)
    assert result.output == (b"a\n", b"b\n")
    c.stop(timeout=1)
    assert c.wait() == {"StatusCode": 137, "Error": None}
    c.reload()
    assert c.status == "exited"
    c.remove()
    with pytest.raises(docker.errors.NotFound):
        client.containers.get("py1")


def test_containers_create_start_logs_stats(client: Any) -> None:
    c = client.containers.create("busybox", ["sh", "-c", "for i in 1 2 3; do echo $i; done; sleep 300"])
    assert c.status == "created"
    c.start()
    stream = c.logs(stream=True, follow=True)
    got = b""
    for chunk in stream:
        got += chunk
        if got == b"1\n2\n3\n":
            break
    stream.close()
    assert got == b"1\n2\n3\n"
    assert c.logs(tail=1) == b"3\n"
    s = c.stats(stream=False)
    assert s["id"] == c.id
    assert s["memory_stats"]["usage"] > 0
    assert s["pids_stats"]["current"] >= 1
    c.kill()
    assert c.wait()["StatusCode"] == 137
    c.remove(force=True)


def test_images_list_get_tag_save_load_remove(client: Any, dapi: DockerApi) -> None:
    images = client.images.list()
    assert [i.tags for i in images] == [["busybox:latest"]]
    img = client.images.get("busybox")
    assert img.id.startswith("sha256:")
    assert img.attrs["Os"] == "linux"
    assert img.tag("py/bb", "2") is True
    assert sorted(client.images.get("py/bb:2").tags) == ["busybox:latest", "py/bb:2"]
    client.images.remove("py/bb:2")
    data = b"".join(img.save(named=True))
    assert len(data) > 100_000
    client.images.remove("busybox")
    assert client.images.list() == []
    loaded = client.images.load(io.BytesIO(data))
    assert [i.tags for i in loaded] == [["busybox:latest"]]
    with pytest.raises(docker.errors.ImageNotFound):
        client.images.get("nosuch:1")


def test_events_generator(client: Any) -> None:
    import time

    since = int(time.time()) - 1
    client.containers.run("busybox", ["true"], name="evpy", remove=True)
    until = int(time.time()) + 2
    events = list(client.events(since=since, until=until, decode=True, filters={"type": "container"}))
    actions = [e["Action"] for e in events if e["Actor"]["Attributes"].get("name") == "evpy"]
    assert actions[:1] == ["create"]
    assert "die" in actions and actions[-1] == "destroy"
    die = next(e for e in events if e["Action"] == "die")
    assert die["Actor"]["Attributes"]["exitCode"] == "0"


def test_networks(make_docker_api: Any) -> None:
    api: DockerApi = make_docker_api(netns=True)
    client = docker.DockerClient(base_url=f"unix://{api.sock}", version="auto", timeout=60)
    try:
        names = sorted(n.name for n in client.networks.list())
        assert names == ["bridge", "host", "none"]
        net = client.networks.create("pynet", driver="bridge")
        assert client.networks.get("pynet").id == net.id
        c = client.containers.run("busybox", ["sleep", "300"], detach=True, name="pyc", network="pynet")
        net.reload()
        assert list(net.attrs["Containers"]) == [c.id]
        with pytest.raises(docker.errors.APIError) as err:
            net.remove()
        assert err.value.status_code == 403
        net.disconnect(c)
        net.reload()
        assert net.attrs["Containers"] == {}
        net.connect(c)
        c.reload()
        assert "pynet" in c.attrs["NetworkSettings"]["Networks"]
        c.remove(force=True)
        net.remove()
        with pytest.raises(docker.errors.NotFound):
            client.networks.get("pynet")
    finally:
        client.close()


def test_docker_py_is_installed_by_the_project() -> None:
    """docker-py comes from the project's test extras, not from the machine."""
    with open(os.path.join(os.path.dirname(os.path.dirname(__file__)), "pyproject.toml")) as f:
        assert '"docker>=' in f.read()


@pytest.mark.registry
def test_build_push_pull(client: Any, tmp_path: Any) -> None:
    from .test_registry import running_registry

    (tmp_path / "Dockerfile").write_text('FROM busybox\nRUN echo built > /b\nCMD ["cat", "/b"]\n')
    image, logs = client.images.build(path=str(tmp_path), tag="pyb:1", rm=True)
    assert "pyb:1" in image.tags
    assert any("Step 2/3 : RUN echo built > /b" in line.get("stream", "") for line in logs)
    assert client.containers.run("pyb:1", remove=True) == b"built\n"
    (tmp_path / "Dockerfile").write_text("FROM busybox\nRUN exit 3\n")
    with pytest.raises(docker.errors.BuildError):
        client.images.build(path=str(tmp_path), tag="pyb:bad")
    with running_registry() as reg:
        ref = f"{reg.host}/py/b"
        assert image.tag(ref, "1") is True
        out = client.images.push(ref, tag="1", stream=True, decode=True)
        lines = list(out)
        assert not [x for x in lines if "error" in x], lines
        assert lines[-1]["aux"]["Tag"] == "1"
        client.images.remove(f"{ref}:1")
        pulled = client.images.pull(ref, tag="1")
        assert f"{ref}:1" in pulled.tags
        assert pulled.id == image.id


def test_exec_records_are_tugd_s(dapi: DockerApi) -> None:
    """An exec created through the door is tugd's record: it outlives a restart of
    ``tug-docker-api``, and a detached exec's exit code is known (docker's ``exec_inspect``);
    docker's exec events carry ``execID`` and ``exitCode``."""
    api = docker.APIClient(base_url=f"unix://{dapi.sock}", version="auto", timeout=60)
    since = int(time.time())
    c = api.create_container("busybox", ["sleep", "300"], name="ex1")
    api.start(c)
    made = api.exec_create(c, ["sh", "-c", "exit 6"])["Id"]
    dapi.stop()
    dapi.start()
    api = docker.APIClient(base_url=f"unix://{dapi.sock}", version="auto", timeout=60)
    info = api.exec_inspect(made)
    assert (info["Running"], info["ExitCode"], info["Pid"], info["ContainerID"]) == (False, None, 0, c["Id"])
    assert info["ProcessConfig"]["entrypoint"] == "sh"
    assert api.exec_start(made, detach=True) == ""  # docker-py decodes a detached start's body
    wait_until(lambda: api.exec_inspect(made)["ExitCode"] == 6, what="the detached exec's exit code")
    assert api.exec_inspect(made)["Pid"] > 0
    with pytest.raises(docker.errors.APIError) as again:
        api.exec_start(made)
    assert again.value.status_code == 409
    with pytest.raises(docker.errors.NotFound, match="No such exec instance: nope"):
        api.exec_inspect("nope")
    until = int(time.time()) + 1
    events = [
        (e["Action"], e["Actor"]["Attributes"].get("execID"), e["Actor"]["Attributes"].get("exitCode"))
        for e in api.events(since=since, until=until, decode=True, filters={"container": "ex1"})
        if e["Action"].startswith("exec_")
    ]
    assert events == [
        ("exec_create: sh -c exit 6", made, None),
        ("exec_start: sh -c exit 6", made, None),
        ("exec_die", made, "6"),
    ]
    api.remove_container(c, force=True)
    api.close()
