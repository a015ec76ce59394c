"""tug-cri driven by the real crictl (cri-tools v1.37.0, Go, built from the Go module proxy by
scripts/install-cri-tools.sh into a cache outside the repo; the first run on a machine builds it,
which takes minutes: hence the long timeout). A real tugd, a real docker-registry on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from .conftest import needs_root, needs_runc
from .cri_helpers import TugCri, crictl, crictl_path, make_tug_cri
from .test_registry import Registry, needs_registry, running_registry

__all__ = ["crictl_path", "make_tug_cri"]  # fixtures, imported for this module's tests

pytestmark = [
    pytest.mark.integration,
    pytest.mark.registry,
    needs_root,
    needs_runc,
    needs_registry,
    pytest.mark.timeout(3600),  # the first run builds crictl
]


@pytest.fixture(scope="module")
def open_registry() -> Iterator[Registry]:
    with running_registry() as reg:
        yield reg


def test_crictl_version_info_images_pull_inspecti_rmi(
    make_daemon: Any, make_tug_cri: Any, crictl_path: str, open_registry: Registry
) -> None:
    d = make_daemon()
    cri: TugCri = make_tug_cri(d)
    bb = d.call("image.inspect", {"ref": "busybox"})

    def run(*args: str) -> str:
        return crictl(crictl_path, cri, *args).stdout.decode()

    tugd_version = d.call("system.info")["version"]
    assert run("version") == (
        f"Version:  0.1.0\nRuntimeName:  tugboat\nRuntimeVersion:  {tugd_version}\nRuntimeApiVersion:  v1\n"
    )

    info = json.loads(run("info"))
    conditions = {c["type"]: c for c in info["status"]["conditions"]}
    assert conditions["RuntimeReady"]["status"] is True
    assert conditions["NetworkReady"]["status"] is True
    assert info["config"] == {"listen": cri.socket, "tugd_socket": d.socket}
    assert info["tugd"]["root"] == d.root

    images = json.loads(run("images", "-o", "json"))["images"]
    assert [(i["id"], i["repoTags"]) for i in images] == [(bb["id"], ["docker.io/library/busybox:latest"])]
    assert run("images", "-q") == f"{bb['id']}\n"
    table = run("images").splitlines()
    assert table[0].split() == ["IMAGE", "TAG", "IMAGE", "ID", "SIZE"]
    assert table[1].split()[:3] == ["docker.io/library/busybox", "latest", bb["id"][7:20]]

    ref = f"{open_registry.host}/crictl/busybox:1"
    pushed = d.call("image.push", {"ref": "busybox", "dest": ref})
    assert run("pull", ref) == f"Image is up to date for {bb['id']}\n"
    status = json.loads(run("inspecti", "-o", "json", ref))
    assert status["status"]["id"] == bb["id"]
    assert sorted(status["status"]["repoTags"]) == sorted(["docker.io/library/busybox:latest", ref])
    assert status["status"]["repoDigests"] == [f"{open_registry.host}/crictl/busybox@{pushed['digest']}"]
    assert status["info"]["id"] == bb["id"]  # verbose: tugd's image.inspect (crictl unwraps "info")

    fs = json.loads(run("imagefsinfo", "-o", "json"))
    assert fs["status"]["imageFilesystems"][0]["fsId"]["mountpoint"] == d.root
    assert int(fs["status"]["imageFilesystems"][0]["usedBytes"]["value"]) > 0

    # No pod yet (pods: tests/test_cri_pods.py).
    assert run("pods", "-q") == ""

    # Bad input: crictl reports tug-cri's status; nothing changes.
    before = d.call("image.list")
    r = crictl(crictl_path, cri, "pull", "Not A Ref", check=False)
    assert r.returncode != 0 and b"invalid image reference" in r.stderr, r.stderr
    r = crictl(crictl_path, cri, "rmi", f"sha256:{'0' * 64}", check=False)
    assert r.returncode != 0 and b"no such image" in r.stderr, r.stderr
    assert d.call("image.list") == before

    # rmi by one name removes the image with every name.
    out = run("rmi", ref)
    assert out.startswith("Deleted: "), out
    assert run("images", "-q") == ""
    assert d.call("image.list") == []
    # And it comes back by a pull, by digest.
    by_digest = f"{open_registry.host}/crictl/busybox@{pushed['digest']}"
    assert run("pull", by_digest) == f"Image is up to date for {bb['id']}\n"
    assert run("images", "-q") == f"{bb['id']}\n"
