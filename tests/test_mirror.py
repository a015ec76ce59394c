"""Registry mirrors of docker.io (``tugd --registry-mirror``) and pull on run (``tug run`` /
``tug create`` / ``docker run`` of an image that is not there pull it first), against real
``docker-registry`` processes on 127.0.0.1 standing in for docker.io's mirrors (issue 15).
Nothing here reaches the internet: every name pulled is found at a mirror."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from .conftest import free_port, needs_runc
from .docker_helpers import DockerApi, make_docker_api
from .test_registry import (
    Registry,
    integration,
    layout_digests,
    oci_image,
    open_registry,
    remote_digest,
    running_registry,
    skopeo_push,
)

__all__ = ["make_docker_api", "oci_image", "open_registry"]  # fixtures used by name


@pytest.fixture(scope="module")
def empty_registry() -> Iterator[Registry]:
    """A mirror that has nothing: every pull from it is ``manifest unknown``."""
    with running_registry() as reg:
        yield reg


@pytest.fixture(scope="module")
def mirror(open_registry: Registry, oci_image: tuple[str, str]) -> Registry:
    """A mirror of docker.io holding ``library/busybox:latest`` and ``someone/app:2``, as a
    mirror serves them: under its own host, without ``docker.io``."""
    skopeo_push(oci_image[0], f"{open_registry.host}/library/busybox:latest")
    skopeo_push(oci_image[0], f"{open_registry.host}/someone/app:2")
    return open_registry


@needs_runc
def test_registry_mirror_option_is_validated() -> None:
    from supervisor.config import Config, ConfigError

    cfg = Config(
        registry_mirrors=("https://Mirror.Example/", "http://127.0.0.1:5000", "https://mirror.example")
    ).validated()
    assert cfg.registry_mirrors == ("https://mirror.example", "http://127.0.0.1:5000")
    for bad in ("mirror.example", "ftp://mirror.example", "https://mirror.example/some/path", "https://"):
        with pytest.raises(ConfigError, match="--registry-mirror"):
            Config(registry_mirrors=(bad,)).validated()


@needs_runc
def test_registry_mirror_map_entries_are_validated() -> None:
    from supervisor.config import Config, ConfigError

    cfg = Config(
        registry_mirrors=(
            "registry.k8s.io=http://127.0.0.1:5000/",
            "GCR.io=http://127.0.0.1:5000",
            "index.docker.io=https://mirror.example",
            "registry.k8s.io=http://127.0.0.1:5000",  # twice: once
            "registry.k8s.io=https://other.example:8443",
        ),
        registry_mirror_map=(("k8s.gcr.io", "http://127.0.0.1:5001"),),
    ).validated()
    assert cfg.registry_mirrors == ("https://mirror.example",)
    assert cfg.registry_mirror_map == (
        ("registry.k8s.io", "http://127.0.0.1:5000"),
        ("gcr.io", "http://127.0.0.1:5000"),
        ("registry.k8s.io", "https://other.example:8443"),
        ("k8s.gcr.io", "http://127.0.0.1:5001"),
    )
    for bad in (
        "registry.k8s.io=",
        "=http://127.0.0.1:5000",
        "a/b=http://x",
        "http://x=http://y",
        "q=ftp://x",
    ):
        with pytest.raises(ConfigError, match="--registry-mirror"):
            Config(registry_mirrors=(bad,)).validated()


@integration
def test_a_mirror_map_serves_other_registries_names(
    make_daemon: Any,
    open_registry: Registry,
    empty_registry: Registry,
    oci_image: tuple[str, str],
    backend: str,
) -> None:
    """``--registry-mirror REGISTRY=URL``: names of registry.k8s.io and gcr.io (no network here)
    come from the local registry under the same repository path, and keep their names."""
    skopeo_push(oci_image[0], f"{open_registry.host}/e2e-test-images/busybox:1.29-2")
    skopeo_push(oci_image[0], f"{open_registry.host}/k8s-staging-cri-tools/test-image-latest:latest")
    dead = f"http://127.0.0.1:{free_port()}"
    d = make_daemon(
        backend=backend,
        image=False,
        extra=[
            "--registry-mirror",
            f"registry.k8s.io={dead}",
            "--registry-mirror",
            f"registry.k8s.io={open_registry.url}",
            "--registry-mirror",
            f"gcr.io={empty_registry.url}",
            "--registry-mirror",
            f"gcr.io={open_registry.url}",
        ],
    )
    info = d.call("system.info")
    assert info["registry_mirrors"] == []
    assert info["registry_mirror_map"] == {
        "registry.k8s.io": [dead, open_registry.url],
        "gcr.io": [empty_registry.url, open_registry.url],
    }
    r = d.tug("pull", "-q", "registry.k8s.io/e2e-test-images/busybox:1.29-2")
    assert r.stdout == b"registry.k8s.io/e2e-test-images/busybox:1.29-2\n"
    d.tug("pull", "-q", "gcr.io/k8s-staging-cri-tools/test-image-latest")
    assert d.tug("run", "--rm", "gcr.io/k8s-staging-cri-tools/test-image-latest").stdout == b"made by umoci\n"
    log = d.read_log()
    assert f"mirror {dead} failed" in log and f"mirror {empty_registry.url} failed" in log
    # A registry without a mirror is asked itself; so is docker.io.
    r = d.tug("pull", "k8s.gcr.io/pause:3.9", check=False)
    assert r.returncode == 1 and b"mirror" not in r.stderr
    assert sorted(t for i in d.call("image.list") for t in i["repo_tags"]) == [
        "gcr.io/k8s-staging-cri-tools/test-image-latest:latest",
        "registry.k8s.io/e2e-test-images/busybox:1.29-2",
    ]


@integration
def test_docker_io_names_pull_through_the_mirrors_in_order(
    make_daemon: Any, mirror: Registry, empty_registry: Registry, oci_image: tuple[str, str], backend: str
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    mirrors = [dead, empty_registry.url, mirror.url]
    d = make_daemon(
        backend=backend, image=False, extra=[a for m in mirrors for a in ("--registry-mirror", m)]
    )
    assert d.call("system.info")["registry_mirrors"] == mirrors
    digest = remote_digest(f"{mirror.host}/library/busybox:latest")
    assert digest == layout_digests(oci_image[1])["manifest"]

    out = d.tug("pull", "busybox").stdout.decode()
    assert out == f"Digest: {digest}\nStatus: pulled busybox:latest\nbusybox:latest\n"
    info = json.loads(d.tug("image", "inspect", "docker.io/library/busybox").stdout)
    assert info["digest"] == digest and info["repo_tags"] == ["busybox:latest"]
    # The first mirror does not answer, the second lacks it: their reasons are logged, the
    # third served it.
    log = d.read_log()
    assert f"mirror {dead} failed" in log and "cannot reach registry" in log
    assert f"mirror {empty_registry.url} failed" in log and "manifest unknown" in log
    assert f"from mirror {mirror.url}" in log
    # A user's repository, by its full name, from the mirror as well.
    assert d.tug("pull", "-q", "docker.io/someone/app:2").stdout == b"someone/app:2\n"
    assert d.tug("run", "--rm", "someone/app:2").stdout == b"made by umoci\n"
    # A name of another registry never goes to a mirror.
    r = d.tug("pull", f"{empty_registry.host}/library/busybox:latest", check=False)
    assert r.returncode == 1 and b"manifest unknown" in r.stderr
    assert sorted(t for i in d.call("image.list") for t in i["repo_tags"]) == [
        "busybox:latest",
        "someone/app:2",
    ]


@integration
def test_tug_run_and_create_pull_a_missing_image_first(
    make_daemon: Any, mirror: Registry, empty_registry: Registry
) -> None:
    d = make_daemon(image=False, extra=["--registry-mirror", mirror.url])
    r = d.tug("run", "--rm", "busybox", "echo", "hi")
    assert r.stdout == b"hi\n"
    err = r.stderr.decode()
    assert err.startswith("Unable to find image 'busybox:latest' locally\n"), err
    assert "Status: Downloaded newer image for busybox:latest\n" in err
    # Now it is there: no pull.
    r = d.tug("run", "--rm", "busybox", "echo", "again")
    assert (r.stdout, r.stderr) == (b"again\n", b"")
    # --pull always pulls even so; --pull never does not pull a missing one.
    r = d.tug("run", "--rm", "--pull", "always", "busybox", "true")
    assert "Unable to find" not in r.stderr.decode() and "Status: Downloaded newer image" in r.stderr.decode()
    r = d.tug("create", "--pull", "never", "docker.io/someone/app:2", check=False)
    assert r.returncode == 125 and b"no such image" in r.stderr and b"Unable to find" not in r.stderr
    cid = d.tug("create", "--name", "app", "docker.io/someone/app:2").stdout.decode().strip()
    assert len(cid) == 64
    assert "someone/app:2" in [t for i in d.call("image.list") for t in i["repo_tags"]]
    d.tug("rm", "app")
    # A pull that fails is the run's error: exit 125, nothing created, nothing stored.
    images = d.call("image.list")
    r = d.tug("run", "--rm", f"{empty_registry.host}/nothing/here:1", "true", check=False)
    assert r.returncode == 125
    assert r.stderr.startswith(
        f"Unable to find image '{empty_registry.host}/nothing/here:1' locally\n".encode()
    )
    assert b"manifest unknown" in r.stderr
    assert d.call("container.list", {"all": True}) == []
    assert d.call("image.list") == images


@integration
def test_docker_run_pulls_a_missing_image_through_the_mirror(make_docker_api: Any, mirror: Registry) -> None:
    api: DockerApi = make_docker_api(image=False, extra=["--registry-mirror", mirror.url])
    info = json.loads(api.docker("info", "--format", "{{json .RegistryConfig.Mirrors}}").stdout)
    assert info == [mirror.url + "/"]
    out = api.docker("run", "--rm", "busybox", "echo", "hi")
    assert out.stdout == "hi\n"
    assert out.stderr.startswith("Unable to find image 'busybox:latest' locally\n"), out.stderr
    assert "Status: Downloaded newer image for busybox:latest" in out.stderr
    assert api.docker("images", "--format", "{{.Repository}}:{{.Tag}}").stdout == "busybox:latest\n"
    assert api.ps_names("-a") == []
