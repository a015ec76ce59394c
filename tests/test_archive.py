"""``tug save`` and ``tug load`` against the real tools: archives Tugboat writes are read by
``skopeo inspect`` and unpacked by ``umoci``; images skopeo writes (OCI layout, docker-archive)
load into a real tugd and run on real runc."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import tarfile
from typing import Any

import pytest

from .conftest import needs_root, needs_runc
from .test_image_store import Entry, Layout, layer_tar

pytestmark = [
    pytest.mark.integration,
    needs_root,
    needs_runc,
    pytest.mark.skipif(
        not (shutil.which("skopeo") and shutil.which("umoci")), reason="needs skopeo and umoci"
    ),
]


def skopeo(*args: str) -> str:
    r = subprocess.run(["skopeo", "--insecure-policy", *args], capture_output=True, timeout=120)
    assert r.returncode == 0, f"skopeo {' '.join(args)}: {r.stderr.decode()}"
    return r.stdout.decode()


def untar(path: str, into: str) -> str:
    os.makedirs(into)
    subprocess.run(["tar", "-xf", path, "-C", into], check=True, timeout=60)
    return into


@pytest.fixture
def configured(daemon: Any, busybox_tar: str, tmp_path: Any) -> dict[str, Any]:
    """busybox plus a layer with a file and a config, loaded into the daemon as ``app:1``."""
    lay = Layout(str(tmp_path / "src"))
    with open(busybox_tar, "rb") as f:
        base = f.read()
    extra = layer_tar(
        [Entry("srv/", type=tarfile.DIRTYPE, mode=0o755), Entry("srv/hello", b"hello from app\n")]
    )
    mbytes, mdigest = lay.image(
        [base, extra], config={"Cmd": ["cat", "/srv/hello"], "Env": ["PATH=/bin"], "WorkingDir": "/srv"}
    )
    lay.add(mbytes, mdigest, name="app:1")
    [loaded] = daemon.call("image.load", {"path": lay.tar(str(tmp_path / "src.tar"))})["images"]
    return {"digest": mdigest, "id": loaded["id"], "manifest": json.loads(mbytes)}


def test_oci_archive_is_read_by_skopeo_and_unpacked_by_umoci(
    daemon: Any, configured: dict[str, Any], tmp_path: Any
) -> None:
    out = str(tmp_path / "app-oci.tar")
    daemon.tug("save", "--format", "oci-archive", "-o", out, "app:1")
    info = json.loads(skopeo("inspect", f"oci-archive:{out}:1"))
    assert info["Digest"] == configured["digest"]
    assert info["Layers"] == [d["digest"] for d in configured["manifest"]["layers"]]
    assert info["Architecture"] == "amd64" and info["Os"] == "linux"
    layout = untar(out, str(tmp_path / "layout"))
    bundle = str(tmp_path / "bundle")
    r = subprocess.run(
        ["umoci", "unpack", "--image", f"{layout}:1", bundle], capture_output=True, timeout=120
    )
    assert r.returncode == 0, r.stderr.decode()
    with open(os.path.join(bundle, "rootfs", "srv", "hello"), "rb") as f:
        assert f.read() == b"hello from app\n"
    assert os.path.isfile(os.path.join(bundle, "rootfs", "bin", "busybox"))
    with open(os.path.join(bundle, "config.json")) as f:
        assert json.load(f)["process"]["args"] == ["cat", "/srv/hello"]


def test_docker_archive_is_read_by_skopeo(daemon: Any, configured: dict[str, Any], tmp_path: Any) -> None:
    out = str(tmp_path / "app-docker.tar")
    daemon.tug("save", "-o", out, "app:1", "busybox")
    with tarfile.open(out) as tf:
        manifest = json.load(tf.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert sorted(t for e in manifest for t in e["RepoTags"]) == ["app:1", "busybox:latest"]
    info = json.loads(skopeo("inspect", f"docker-archive:{out}:app:1"))
    inspect = daemon.call("image.inspect", {"ref": "app:1"})
    assert info["Env"] == ["PATH=/bin"]
    # docker-archive layers are uncompressed: what skopeo sees are the image's diff ids
    assert info["Layers"] == inspect["diff_ids"]
    # and skopeo copies it on into an OCI layout that umoci unpacks
    skopeo("copy", f"docker-archive:{out}:app:1", f"oci:{tmp_path / 'viaskopeo'}:v")
    bundle = str(tmp_path / "bundle")
    subprocess.run(
        ["umoci", "unpack", "--image", f"{tmp_path / 'viaskopeo'}:v", bundle], check=True, timeout=120
    )
    assert os.path.isfile(os.path.join(bundle, "rootfs", "srv", "hello"))


@pytest.mark.parametrize("fmt", ["oci-archive", "docker-archive"])
def test_save_rmi_load_round_trip_runs(
    daemon: Any, configured: dict[str, Any], tmp_path: Any, fmt: str
) -> None:
    out = str(tmp_path / "rt.tar")
    daemon.tug("save", "--format", fmt, "-o", out, "app:1")
    daemon.tug("rmi", "app:1")
    assert "app:1" not in [t for i in daemon.call("image.list") for t in i["repo_tags"]]
    r = daemon.tug("load", "-i", out)
    assert r.stdout == b"Loaded image: app:1\n"
    img = daemon.call("image.inspect", {"ref": "app:1"})
    assert img["id"] == configured["id"]  # the same config: the same image id
    if fmt == "oci-archive":
        assert img["digest"] == configured["digest"]  # the manifest travelled byte for byte
    assert daemon.tug("run", "--rm", "app:1").stdout == b"hello from app\n"


def test_images_written_by_skopeo_load_and_run(
    daemon: Any, configured: dict[str, Any], tmp_path: Any
) -> None:
    saved = str(tmp_path / "saved.tar")
    daemon.tug("save", "--format", "oci-archive", "-o", saved, "app:1")
    # skopeo rewrites it: an OCI layout (gzip layers as they were) tarred up, and a docker-archive
    layout = str(tmp_path / "sk-layout")
    skopeo("copy", f"oci-archive:{saved}:1", f"oci:{layout}:sk-oci")
    oci_tar = str(tmp_path / "sk-oci.tar")
    with tarfile.open(oci_tar, "w") as tf:
        for name in os.listdir(layout):
            tf.add(os.path.join(layout, name), arcname=name)
    docker_tar = str(tmp_path / "sk-docker.tar")
    skopeo("copy", f"oci-archive:{saved}:1", f"docker-archive:{docker_tar}:skopeo/app:docker")
    daemon.tug("rmi", "app:1")
    # the OCI layout's ref name is a bare tag: loaded untagged, then tagged
    [from_oci] = daemon.call("image.load", {"path": oci_tar})["images"]
    assert from_oci["repo_tags"] == []
    daemon.tug("tag", from_oci["id"], "from-oci:1")
    assert daemon.tug("run", "--rm", "from-oci:1").stdout == b"hello from app\n"
    r = daemon.tug("load", "-i", docker_tar)
    assert r.stdout == b"Loaded image: skopeo/app:docker\n"
    assert daemon.tug("run", "--rm", "skopeo/app:docker").stdout == b"hello from app\n"
    # a gzipped docker-archive (docker save | gzip) loads too
    gz = docker_tar + ".gz"
    with open(docker_tar, "rb") as src, gzip.open(gz, "wb") as dst:
        shutil.copyfileobj(src, dst)
    daemon.tug("rmi", "skopeo/app:docker")
    daemon.tug("load", "-i", gz)
    assert daemon.tug("run", "--rm", "skopeo/app:docker").stdout == b"hello from app\n"


def test_bad_archives_are_clear_errors_and_change_nothing(daemon: Any, tmp_path: Any) -> None:
    before = daemon.call("image.list")
    not_tar = str(tmp_path / "junk.tar")
    with open(not_tar, "wb") as f:
        f.write(b"junk" * 1000)
    r = daemon.tug("load", "-i", not_tar, check=False)
    assert r.returncode == 1 and b"not a tar archive" in r.stderr
    empty = str(tmp_path / "empty.tar")
    with tarfile.open(empty, "w") as tf:
        info = tarfile.TarInfo("hello.txt")
        tf.addfile(info)
    r = daemon.tug("load", "-i", empty, check=False)
    assert r.returncode == 1 and b"neither an OCI archive" in r.stderr
    r = daemon.tug("load", "-i", str(tmp_path / "missing.tar"), check=False)
    assert r.returncode == 1 and b"no such file" in r.stderr
    r = daemon.tug("save", "-o", str(tmp_path / "x.tar"), "nope:1", check=False)
    assert r.returncode == 1 and b"no such image" in r.stderr
    assert not os.path.exists(tmp_path / "x.tar")
    r = daemon.tug("save", "-o", str(tmp_path / "no" / "dir.tar"), "busybox", check=False)
    assert r.returncode == 1 and b"no such directory" in r.stderr
    assert daemon.call("image.list") == before
    assert [n for n in os.listdir(tmp_path) if n.startswith(".")] == []


def test_a_corrupt_blob_in_the_store_fails_save(daemon: Any, tmp_path: Any) -> None:
    img = daemon.call("image.inspect", {"ref": "busybox"})
    blob = os.path.join(daemon.root, "blobs", "sha256", img["layers"][0][7:])
    with open(blob, "r+b") as f:
        f.seek(1000)
        f.write(b"\xff\xfe")
    out = str(tmp_path / "c.tar")
    r = daemon.tug("save", "-o", out, "busybox", check=False)
    assert r.returncode == 1 and b"corrupt" in r.stderr
    assert not os.path.exists(out)
