"""The image store: references, verified blobs, manifests and indexes, unpacking into overlay
snapshots (whiteouts, links, modes, xattrs, hostile entries), config to spec, inspect, rmi/prune/GC.

In-process tests drive :class:`supervisor.images.Images` over a real SQLite store and real files;
integration tests load hand-made OCI layouts into a real tugd and run real containers over them.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.config import Config
from supervisor.images import (
    MEDIA_INDEX,
    MEDIA_LAYER_GZIP,
    MEDIA_LAYER_TAR,
    MEDIA_MANIFEST,
    BlobWriter,
    CorruptBlob,
    Images,
    UnsafeLayer,
    unpack_tar,
)
from supervisor.store import Store
from tugwire import imageref
from tugwire.errors import InvalidArgument, NotFound

from .conftest import needs_root, needs_runc

# ------------------------------------------------------------------------- image construction


@dataclass
class Entry:
    """One tar member of a hand-made layer."""

    name: str
    data: bytes = b""
    type: bytes = tarfile.REGTYPE
    mode: int = 0o644
    linkname: str = ""
    uid: int = 0
    gid: int = 0
    xattrs: dict[str, str] = field(default_factory=dict)


def layer_tar(entries: list[Entry]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.type = e.type
            info.mode = e.mode
            info.uid, info.gid = e.uid, e.gid
            info.linkname = e.linkname
            info.mtime = 1_600_000_000
            if e.xattrs:
                info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in e.xattrs.items()}
            if e.type == tarfile.REGTYPE:
                info.size = len(e.data)
                tf.addfile(info, io.BytesIO(e.data))
            else:
                tf.addfile(info)
    return buf.getvalue()


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Layout:
    """An OCI image layout being written by hand (real blobs, real digests)."""

    def __init__(self, path: str) -> None:
        self.path = path
        os.makedirs(os.path.join(path, "blobs", "sha256"), exist_ok=True)
        self.manifests: list[dict[str, Any]] = []

    def blob(self, data: bytes) -> str:
        d = digest_of(data)
        with open(os.path.join(self.path, "blobs", "sha256", d[7:]), "wb") as f:
            f.write(data)
        return d

    def image(
        self,
        layers: list[bytes],
        config: dict[str, Any] | None = None,
        *,
        gzipped: bool = True,
        arch: str = "amd64",
        variant: str = "",
    ) -> tuple[bytes, str]:
        """Write config, layers and manifest; returns (manifest bytes, digest)."""
        descs = []
        for raw in layers:
            data = gzip.compress(raw, mtime=0) if gzipped else raw
            descs.append(
                {
                    "mediaType": MEDIA_LAYER_GZIP if gzipped else MEDIA_LAYER_TAR,
                    "digest": self.blob(data),
                    "size": len(data),
                }
            )
        cfg: dict[str, Any] = {
            "architecture": arch,
            "os": "linux",
            "created": "2024-01-02T03:04:05Z",
            "config": config if config is not None else {"Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": [digest_of(raw) for raw in layers]},
        }
        if variant:
            cfg["variant"] = variant
        cfg_bytes = json.dumps(cfg).encode()
        manifest = {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": self.blob(cfg_bytes),
                "size": len(cfg_bytes),
            },
            "layers": descs,
        }
        mbytes = json.dumps(manifest).encode()
        return mbytes, self.blob(mbytes)

    def add(
        self, mbytes: bytes, digest: str, *, name: str | None = None, media_type: str = MEDIA_MANIFEST
    ) -> None:
        entry: dict[str, Any] = {"mediaType": media_type, "digest": digest, "size": len(mbytes)}
        if name:
            ref = imageref.parse(name)
            entry["annotations"] = {
                "io.containerd.image.name": ref.string(),
                "org.opencontainers.image.ref.name": ref.tag,
            }
        self.manifests.append(entry)

    def index(self, platforms: list[tuple[bytes, str, str]]) -> tuple[bytes, str]:
        """A multi-platform index over (manifest bytes, digest, 'os/arch[/variant]')."""
        entries = []
        for mbytes, digest, plat in platforms:
            os_, arch, *variant = plat.split("/")
            p = {"os": os_, "architecture": arch, **({"variant": variant[0]} if variant else {})}
            entries.append(
                {"mediaType": MEDIA_MANIFEST, "digest": digest, "size": len(mbytes), "platform": p}
            )
        raw = json.dumps({"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": entries}).encode()
        return raw, self.blob(raw)

    def finish(self) -> str:
        with open(os.path.join(self.path, "oci-layout"), "w") as f:
            f.write('{"imageLayoutVersion":"1.0.0"}')
        with open(os.path.join(self.path, "index.json"), "w") as f:
            json.dump({"schemaVersion": 2, "manifests": self.manifests}, f)
        return self.path

    def tar(self, out: str) -> str:
        self.finish()
        with tarfile.open(out, "w") as tf:
            for name in sorted(os.listdir(self.path)):
                tf.add(os.path.join(self.path, name), arcname=name)
        return out


class DirSource:
    """An ImageSource over an OCI layout directory, with an optional gate before each blob."""

    def __init__(
        self, path: str, gate: anyio.Event | None = None, started: anyio.Event | None = None
    ) -> None:
        self.path = path
        self.gate = gate
        self.started = started
        self.fetched: list[str] = []

    async def get_manifest(self, reference: str) -> tuple[bytes, str]:
        if not reference.startswith("sha256:"):
            with open(os.path.join(self.path, "index.json")) as f:
                index = json.load(f)
            for m in index["manifests"]:
                if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == reference:
                    reference = m["digest"]
                    break
            else:
                raise NotFound(reference)
        with open(os.path.join(self.path, "blobs", "sha256", reference[7:]), "rb") as f:
            return f.read(), ""

    async def fetch_blob(self, desc: dict[str, Any], writer: BlobWriter) -> None:
        if self.started is not None:
            self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        self.fetched.append(desc["digest"])
        with open(os.path.join(self.path, "blobs", "sha256", desc["digest"][7:]), "rb") as f:
            while chunk := f.read(4096):
                await writer.write(chunk)


BASE_FILES = [
    Entry("etc/", type=tarfile.DIRTYPE, mode=0o755),
    Entry("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nweb:x:1234:2345::/home/web:/bin/sh\n"),
    Entry("etc/group", b"root:x:0:\nwebgrp:x:2345:\nextra:x:3456:web\n"),
    Entry("keep/", type=tarfile.DIRTYPE, mode=0o755),
    Entry("keep/a", b"a\n"),
    Entry("gone", b"gone\n"),
    Entry("opaque/", type=tarfile.DIRTYPE, mode=0o755),
    Entry("opaque/old", b"old\n"),
    Entry("shared", b"shared data\n", mode=0o640, uid=7, gid=8),
]


# ----------------------------------------------------------------------------------- fixtures


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def images(tmp_path: Any) -> Iterator[Images]:
    root = str(tmp_path / "root")
    os.makedirs(root)
    store = Store(os.path.join(root, "tugboat.db"))
    try:
        yield Images(Config(root=root, state=str(tmp_path / "state")), store)
    finally:
        store.close()


def leftovers(imgs: Images) -> list[str]:
    """Temp files and dirs in the store (there must be none once an operation is over)."""
    out = []
    for d in (imgs.blobs.dir, imgs.cfg.snapshots_dir):
        out += [os.path.join(d, n) for n in os.listdir(d) if n.startswith(".")]
    return out


# ------------------------------------------------------------------------------- references


@pytest.mark.parametrize(
    ("ref", "full", "familiar"),
    [
        ("busybox", "docker.io/library/busybox:latest", "busybox:latest"),
        ("busybox:1.36", "docker.io/library/busybox:1.36", "busybox:1.36"),
        ("docker.io/library/busybox", "docker.io/library/busybox:latest", "busybox:latest"),
        ("index.docker.io/library/busybox", "docker.io/library/busybox:latest", "busybox:latest"),
        ("me/app:v1", "docker.io/me/app:v1", "me/app:v1"),
        ("localhost:5000/x/y:t", "localhost:5000/x/y:t", "localhost:5000/x/y:t"),
        ("localhost/x", "localhost/x:latest", "localhost/x:latest"),
        ("quay.io/a/b", "quay.io/a/b:latest", "quay.io/a/b:latest"),
        (
            "Registry.Example.COM:443/a",
            "Registry.Example.COM:443/a:latest",
            "Registry.Example.COM:443/a:latest",
        ),
        (
            "busybox@sha256:" + "a" * 64,
            "docker.io/library/busybox@sha256:" + "a" * 64,
            "busybox@sha256:" + "a" * 64,
        ),
        (
            "localhost:5000/x:t@sha256:" + "b" * 64,
            "localhost:5000/x:t@sha256:" + "b" * 64,
            "localhost:5000/x:t@sha256:" + "b" * 64,
        ),
    ],
)
def test_reference_normalisation(ref: str, full: str, familiar: str) -> None:
    parsed = imageref.parse(ref)
    assert parsed.string() == full
    assert parsed.familiar() == familiar
    assert imageref.parse(parsed.string()) == parsed  # normal forms are fixed points


def test_reference_parts() -> None:
    r = imageref.parse("localhost:5000/x/y:t")
    assert (r.domain, r.path, r.tag, r.digest, r.repository) == (
        "localhost:5000",
        "x/y",
        "t",
        None,
        "localhost:5000/x/y",
    )
    d = imageref.parse("busybox@sha256:" + "c" * 64)
    assert (d.tag, d.object, d.tag_name()) == (None, "sha256:" + "c" * 64, None)
    assert imageref.parse("busybox").object == "latest"


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "Busybox",
        "busybox:",
        "busybox:-x",
        "a//b",
        "/busybox",
        "busybox@sha256:abc",
        "busybox@md5:" + "a" * 32,
        "bad host!/x",
        "x:" + "t" * 129,
        "../etc",
        "a/../b",
    ],
)
def test_reference_rejects(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        imageref.parse(bad)


# ------------------------------------------------------------------------------- blob store


@pytest.mark.anyio
async def test_blob_writer_verifies_digest_and_size(images: Images) -> None:
    data = b"hello blob"
    good: dict[str, Any] = {"digest": digest_of(data), "size": len(data)}
    w = images.blobs.writer(good)
    await w.write(data)
    assert w.commit() == good["digest"]
    assert images.blobs.read_verified(good["digest"]) == data

    other: dict[str, Any] = {"digest": digest_of(b"something else"), "size": len(data)}
    w = images.blobs.writer(other)
    await w.write(data)
    with pytest.raises(CorruptBlob, match="hashes to"):
        w.commit()
    assert not images.blobs.has(other["digest"])

    w = images.blobs.writer({"digest": digest_of(data), "size": 3})
    with pytest.raises(CorruptBlob, match="larger"):
        await w.write(data)
    assert leftovers(images) == []


def test_a_corrupt_stored_blob_is_never_used(images: Images) -> None:
    d = images.blobs.put_bytes(b"original")
    with open(images.blobs.path(d), "wb") as f:
        f.write(b"tampered")
    with pytest.raises(CorruptBlob):
        images.blobs.read_verified(d)
    with pytest.raises(CorruptBlob):
        images.blobs.verify_file(d)


# ------------------------------------------------------------------------------------ ingest


@needs_root
@pytest.mark.anyio
async def test_ingest_unpacks_whiteouts_opaque_links_modes_xattrs(images: Images, tmp_path: Any) -> None:
    lay = Layout(str(tmp_path / "oci"))
    base = layer_tar([*BASE_FILES, Entry("big", b"x" * 100_000, mode=0o4755, xattrs={"user.note": "kept"})])
    top = layer_tar(
        [
            Entry(".wh.gone"),
            Entry("opaque/", type=tarfile.DIRTYPE, mode=0o700),
            Entry("opaque/.wh..wh..opq"),
            Entry("opaque/new", b"new\n"),
            Entry("link-up", type=tarfile.LNKTYPE, linkname="shared"),  # to a file of the layer below
            Entry("here", b"here\n"),
            Entry("link-here", type=tarfile.LNKTYPE, linkname="here"),
            Entry("sym", type=tarfile.SYMTYPE, linkname="/etc/passwd"),
            Entry("fifo", type=tarfile.FIFOTYPE, mode=0o600),
        ]
    )
    mbytes, mdigest = lay.image([base, top], gzipped=True)
    lay.add(mbytes, mdigest, name="test/whiteouts:1")
    events: list[dict[str, Any]] = []
    rec = await images.ingest(DirSource(lay.finish()), "1", "test/whiteouts:1", progress=events.append)
    assert rec.digest == mdigest and rec.names == ["test/whiteouts:1"]
    assert rec.repo_digests == [f"test/whiteouts@{mdigest}"]
    assert [e["status"] for e in events][-2:] == ["unpacking", "done"]
    top_dir, base_dir = images.snapshot_dirs(rec)
    st = os.lstat(os.path.join(top_dir, "gone"))
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0  # overlayfs' whiteout
    assert os.getxattr(os.path.join(top_dir, "opaque"), "trusted.overlay.opaque") == b"y"
    assert sorted(os.listdir(os.path.join(top_dir, "opaque"))) == ["new"]
    assert stat.S_IMODE(os.stat(os.path.join(top_dir, "opaque")).st_mode) == 0o700
    assert not os.path.exists(os.path.join(top_dir, ".wh.gone"))
    up = os.stat(os.path.join(top_dir, "link-up"))
    assert (up.st_uid, up.st_gid, stat.S_IMODE(up.st_mode)) == (7, 8, 0o640)
    with open(os.path.join(top_dir, "link-up"), "rb") as f:
        assert f.read() == b"shared data\n"
    assert os.stat(os.path.join(top_dir, "here")).st_ino == os.stat(os.path.join(top_dir, "link-here")).st_ino
    assert os.readlink(os.path.join(top_dir, "sym")) == "/etc/passwd"
    assert stat.S_ISFIFO(os.lstat(os.path.join(top_dir, "fifo")).st_mode)
    big = os.stat(os.path.join(base_dir, "big"))
    assert stat.S_IMODE(big.st_mode) == 0o4755 and big.st_mtime == 1_600_000_000
    assert os.getxattr(os.path.join(base_dir, "big"), "user.note") == b"kept"
    assert leftovers(images) == []

    # A second image sharing the base layer reuses its blob and its snapshot.
    lay2 = Layout(str(tmp_path / "oci2"))
    m2, d2 = lay2.image([base, layer_tar([Entry("other", b"o")])], config={"Cmd": ["true"]})
    lay2.add(m2, d2, name="test/other:1")
    src2 = DirSource(lay2.finish())
    rec2 = await images.ingest(src2, d2, "test/other")
    assert rec2.names == ["test/other:latest"]
    assert images.snapshot_dirs(rec2)[1] == base_dir
    assert rec.manifest["layers"][0]["digest"] not in src2.fetched  # present: not fetched again


@needs_root
@pytest.mark.anyio
async def test_multi_platform_index_chooses_host_or_asked_platform(images: Images, tmp_path: Any) -> None:
    lay = Layout(str(tmp_path / "oci"))
    amd = lay.image([layer_tar([Entry("arch", b"amd64\n")])], arch="amd64")
    arm = lay.image([layer_tar([Entry("arch", b"arm64\n")])], arch="arm64", variant="v8")
    iraw, idigest = lay.index([(*arm, "linux/arm64/v8"), (*amd, "linux/amd64")])
    lay.add(iraw, idigest, name="multi:1", media_type=MEDIA_INDEX)
    src = DirSource(lay.finish())
    rec = await images.ingest(src, "1", "multi:1")  # the host (this suite runs on amd64)
    assert (rec.digest, rec.config["architecture"]) == (amd[1], "amd64")
    assert rec.repo_digests == [f"multi@{idigest}"]  # the digest a registry knows it by
    rec_arm = await images.ingest(src, idigest, "multi:arm", platform="linux/arm64")
    assert (rec_arm.digest, rec_arm.config["architecture"]) == (arm[1], "arm64")
    with open(os.path.join(images.snapshot_dirs(rec_arm)[0], "arch"), "rb") as f:
        assert f.read() == b"arm64\n"
    with pytest.raises(NotFound, match=r"s390x.*it has: linux/arm64/v8, linux/amd64"):
        await images.ingest(src, idigest, "multi:s390x", platform="linux/s390x")
    assert images.describe(images.resolve("multi:arm").record)["platform"] == "linux/arm64/v8"


@needs_root
@pytest.mark.anyio
async def test_corrupt_blobs_are_refused_and_nothing_is_stored(images: Images, tmp_path: Any) -> None:
    lay = Layout(str(tmp_path / "oci"))
    mbytes, mdigest = lay.image([layer_tar([Entry("f", b"data")])])
    lay.add(mbytes, mdigest, name="bad:1")
    layer = json.loads(mbytes)["layers"][0]["digest"]
    path = os.path.join(lay.path, "blobs", "sha256", layer[7:])
    with open(path, "r+b") as f:  # same size, different bytes
        data = bytearray(f.read())
        data[-1] ^= 0xFF
        f.seek(0)
        f.write(data)
    before = set(os.listdir(images.blobs.dir))
    with pytest.raises(CorruptBlob):
        await images.ingest(DirSource(lay.finish()), "1", "bad:1")
    assert not images.blobs.has(layer)
    assert images.store.list_images() == []
    assert os.listdir(images.cfg.snapshots_dir) == []
    images.collect()
    assert set(os.listdir(images.blobs.dir)) <= before
    # A manifest asked for by digest that does not hash to it.
    with open(os.path.join(lay.path, "blobs", "sha256", "0" * 64), "wb") as f:
        f.write(mbytes)
    with pytest.raises(CorruptBlob):
        await images.ingest(DirSource(lay.path), "sha256:" + "0" * 64, None)


@needs_root
@pytest.mark.anyio
async def test_layer_whose_content_differs_from_its_diff_id_is_refused(images: Images, tmp_path: Any) -> None:
    lay = Layout(str(tmp_path / "oci"))
    real = layer_tar([Entry("f", b"data")])
    mbytes, _ = lay.image([real])
    manifest = json.loads(mbytes)
    with open(os.path.join(lay.path, "blobs", "sha256", manifest["config"]["digest"][7:]), "rb") as f:
        cfg = json.load(f)
    cfg["rootfs"]["diff_ids"] = [digest_of(b"not the layer")]
    cfg_bytes = json.dumps(cfg).encode()
    manifest["config"] = {**manifest["config"], "digest": lay.blob(cfg_bytes), "size": len(cfg_bytes)}
    mb = json.dumps(manifest).encode()
    lay.add(mb, lay.blob(mb), name="liar:1")
    with pytest.raises(CorruptBlob, match="image config says"):
        await images.ingest(DirSource(lay.finish()), "1", "liar:1")
    assert os.listdir(images.cfg.snapshots_dir) == [] and images.store.list_images() == []


HOSTILE = {
    "dotdot": [Entry("../escaped", b"x")],
    "dotdot-inside": [Entry("a/../../escaped", b"x")],
    "absolute": [Entry("/etc/escaped", b"x")],
    "symlink-dir": [Entry("out", type=tarfile.SYMTYPE, linkname="/tmp"), Entry("out/escaped", b"x")],
    "symlink-relative": [
        Entry("d/", type=tarfile.DIRTYPE, mode=0o755),
        Entry("d/up", type=tarfile.SYMTYPE, linkname="../.."),
        Entry("d/up/escaped", b"x"),
    ],
    "hardlink-outside": [Entry("h", type=tarfile.LNKTYPE, linkname="../../../etc/passwd")],
    "hardlink-absolute": [Entry("h", type=tarfile.LNKTYPE, linkname="/etc/passwd")],
    "hardlink-through-symlink": [
        Entry("s", type=tarfile.SYMTYPE, linkname="/etc"),
        Entry("h", type=tarfile.LNKTYPE, linkname="s/passwd"),
    ],
    "hardlink-missing": [Entry("h", type=tarfile.LNKTYPE, linkname="nowhere")],
}


@needs_root
@pytest.mark.anyio
@pytest.mark.parametrize("case", sorted(HOSTILE))
async def test_hostile_layers_are_refused_leaving_nothing(images: Images, tmp_path: Any, case: str) -> None:
    lay = Layout(str(tmp_path / "oci"))
    good = layer_tar([Entry("ok", b"fine"), Entry("more", b"x" * 5000)])
    mbytes, mdigest = lay.image([good, layer_tar([Entry("first", b"written first"), *HOSTILE[case]])])
    lay.add(mbytes, mdigest, name="evil:1")
    with pytest.raises(UnsafeLayer):
        await images.ingest(DirSource(lay.finish()), "1", "evil:1")
    assert not os.path.exists("/tmp/escaped") and not os.path.exists(str(tmp_path / "escaped"))
    # the good layer's snapshot may stay until GC; the bad one left nothing half-written
    assert leftovers(images) == []
    assert images.store.list_images() == []
    for entry in os.listdir(images.cfg.snapshots_dir):
        assert sorted(os.listdir(os.path.join(images.cfg.snapshots_dir, entry, "fs"))) == ["more", "ok"]
    images.collect()
    assert os.listdir(images.cfg.snapshots_dir) == []
    assert images.blobs.digests() == []


def test_unpack_tar_refuses_a_non_tar(tmp_path: Any) -> None:
    with pytest.raises(InvalidArgument):
        unpack_tar(io.BytesIO(b"not a tar at all" * 100), str(tmp_path))


@needs_root
@pytest.mark.anyio
async def test_gc_leaves_an_ingest_in_flight_alone(images: Images, tmp_path: Any) -> None:
    """A prune while an ingest is fetching its layers (the manifest and config already in the
    store, the first layer on its way) frees neither; the ingest completes with a usable image."""
    lay = Layout(str(tmp_path / "oci"))
    base = layer_tar([Entry("etc/", type=tarfile.DIRTYPE, mode=0o755), Entry("etc/hostname", b"a\n")])
    mbytes, mdigest = lay.image([base, layer_tar([Entry("top", b"t")])])
    lay.add(mbytes, mdigest, name="slow:1")
    # an older image with the same base: its blobs and snapshot are what a prune would take
    lay_old = Layout(str(tmp_path / "old"))
    m_old, d_old = lay_old.image([base])
    lay_old.add(m_old, d_old, name="old:1")
    await images.ingest(DirSource(lay_old.finish()), "1", "old:1")
    images.remove("old:1", force=False)  # gone, and its base layer collected
    assert images.blobs.digests() == []
    await images.ingest(DirSource(lay_old.path), "1", "old:1")

    gate, started = anyio.Event(), anyio.Event()
    src = DirSource(lay.finish(), gate=gate, started=started)
    result: dict[str, Any] = {}

    async def pull() -> None:
        result["rec"] = await images.ingest(src, "1", "slow:1", concurrency=1)

    async with anyio.create_task_group() as tg:
        tg.start_soon(pull)
        await started.wait()
        images.remove("old:1", force=False)  # the old image goes; the shared base is leased
        pruned = images.prune(all_images=True)
        assert pruned["deleted"] == []
        base_digest = json.loads(mbytes)["layers"][0]["digest"]
        assert images.blobs.has(base_digest)
        gate.set()
    rec = result["rec"]
    dirs = await images.ensure_unpacked(rec)
    assert all(os.path.isdir(d) for d in dirs)
    assert images.prune()["deleted"] == []  # tagged: kept
    pruned = images.prune(all_images=True)
    assert pruned["deleted"] == [rec.id] and pruned["untagged"] == ["slow:1"]
    assert images.blobs.digests() == [] and os.listdir(images.cfg.snapshots_dir) == []


@needs_root
@pytest.mark.anyio
async def test_commit_image_adds_layers_on_a_base(images: Images, tmp_path: Any) -> None:
    lay = Layout(str(tmp_path / "oci"))
    mbytes, mdigest = lay.image([layer_tar(BASE_FILES)], config={"Env": ["A=1"], "Cmd": ["sh"]})
    lay.add(mbytes, mdigest, name="base:1")
    base = await images.ingest(DirSource(lay.finish()), "1", "base:1")
    tar_path = str(tmp_path / "new.tar")
    with open(tar_path, "wb") as f:
        f.write(layer_tar([Entry(".wh.gone"), Entry("added", b"added\n")]))
    rec = await images.commit_image(
        base,
        [tar_path],
        {"Env": ["A=2"], "Cmd": ["cat", "/added"]},
        "built:1",
        history=[{"created_by": "RUN add"}],
    )
    assert rec.names == ["built:1"]
    assert rec.config["rootfs"]["diff_ids"][:1] == base.config["rootfs"]["diff_ids"]
    assert len(rec.manifest["layers"]) == 2 and rec.config["history"][-1] == {"created_by": "RUN add"}
    assert images.resolve("built:1").config == {"Env": ["A=2"], "Cmd": ["cat", "/added"]}
    top = images.snapshot_dirs(rec)[0]
    assert stat.S_ISCHR(os.lstat(os.path.join(top, "gone")).st_mode)
    exp = images.export("built:1")
    assert digest_of(exp.manifest_bytes) == exp.digest == rec.digest
    assert [d["digest"] for d in exp.layers] == [d["digest"] for d in rec.manifest["layers"]]
    assert os.path.isfile(exp.blob_path(exp.config["digest"]))
    with pytest.raises(InvalidArgument):
        await images.commit_image(base, ["relative.tar"], {}, None)


@pytest.mark.anyio
async def test_bad_manifests_are_clear_errors(images: Images, tmp_path: Any) -> None:
    class Fixed:
        def __init__(self, raw: bytes, mt: str = "") -> None:
            self.raw, self.mt = raw, mt

        async def get_manifest(self, reference: str) -> tuple[bytes, str]:
            return self.raw, self.mt

        async def fetch_blob(self, desc: dict[str, Any], writer: BlobWriter) -> None:
            raise AssertionError("no blob should be fetched")

    with pytest.raises(InvalidArgument, match="schema 1"):
        await images.ingest(Fixed(b'{"schemaVersion": 1, "fsLayers": []}'), "latest", None)
    with pytest.raises(InvalidArgument, match="not valid JSON"):
        await images.ingest(Fixed(b"<html>"), "latest", None)
    zstd = {
        "schemaVersion": 2,
        "config": {"mediaType": "x", "digest": "sha256:" + "1" * 64, "size": 2},
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+zstd",
                "digest": "sha256:" + "2" * 64,
                "size": 1,
            }
        ],
    }
    with pytest.raises(InvalidArgument, match="zstd"):
        await images.ingest(Fixed(json.dumps(zstd).encode()), "latest", None)
    bad_digest = {**zstd, "layers": [{"mediaType": MEDIA_LAYER_TAR, "digest": "sha256:../../x", "size": 1}]}
    with pytest.raises(InvalidArgument, match="invalid digest"):
        await images.ingest(Fixed(json.dumps(bad_digest).encode()), "latest", None)
    assert images.store.list_images() == [] and leftovers(images) == []


# ------------------------------------------------------------------------- with a real tugd


def load_layout(daemon: Any, lay: Layout, tmp_path: Any, name: str = "img.tar") -> list[dict[str, Any]]:
    path = lay.tar(str(tmp_path / name))
    result = daemon.call("image.load", {"path": path})
    return list(result["images"])


@pytest.mark.integration
@needs_root
@needs_runc
def test_whiteouts_and_opaque_dirs_hide_lower_files_in_a_container(
    daemon: Any, busybox_tar: str, tmp_path: Any
) -> None:
    with open(busybox_tar, "rb") as f:
        busybox_layer = f.read()
    lay = Layout(str(tmp_path / "oci"))
    mid = layer_tar(BASE_FILES[3:])
    top = layer_tar(
        [
            Entry(".wh.gone"),
            Entry("opaque/", type=tarfile.DIRTYPE, mode=0o755),
            Entry("opaque/.wh..wh..opq"),
            Entry("opaque/new", b"new\n"),
            Entry("keep/.wh.a"),
            Entry("keep/b", b"b\n"),
            Entry("hl", type=tarfile.LNKTYPE, linkname="shared"),
        ]
    )
    mbytes, mdigest = lay.image([busybox_layer, mid, top], config={"Cmd": ["sh"]})
    lay.add(mbytes, mdigest, name="layered:1")
    [loaded] = load_layout(daemon, lay, tmp_path)
    assert loaded["repo_tags"] == ["layered:1"] and loaded["digest"] == mdigest
    r = daemon.tug(
        "run",
        "--rm",
        "layered:1",
        "sh",
        "-c",
        "ls /opaque; ls /keep; test -e /gone || echo no-gone; cat /hl; stat -c %a:%u:%g /hl",
    )
    assert r.stdout.decode().split("\n") == ["new", "b", "no-gone", "shared data", "640:7:8", ""]


@pytest.mark.integration
@needs_root
@needs_runc
def test_image_config_becomes_the_container_spec(daemon: Any, busybox_tar: str, tmp_path: Any) -> None:
    with open(busybox_tar, "rb") as f:
        busybox_layer = f.read()
    lay = Layout(str(tmp_path / "oci"))
    extra = layer_tar(
        [
            Entry("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nweb:x:1234:2345::/home/web:/bin/sh\n"),
            Entry("etc/group", b"root:x:0:\nwebgrp:x:2345:\nextra:x:3456:web\n"),
            Entry("srv/", type=tarfile.DIRTYPE, mode=0o755),
        ]
    )
    config = {
        "Entrypoint": ["sh", "-c"],
        "Cmd": ['echo "$GREETING $(id -u):$(id -g):$(id -G) $(pwd)"'],
        "Env": ["PATH=/bin:/usr/bin", "GREETING=hello"],
        "WorkingDir": "/srv",
        "User": "web",
        "ExposedPorts": {"80/tcp": {}},
        "Labels": {"org.example.team": "images"},
        "StopSignal": "SIGUSR1",
    }
    mbytes, mdigest = lay.image([busybox_layer, extra], config=config)
    lay.add(mbytes, mdigest, name="configured:1")
    load_layout(daemon, lay, tmp_path)
    r = daemon.tug("run", "--rm", "configured:1")
    assert r.stdout == b"hello 1234:2345:2345 3456 /srv\n"
    r = daemon.tug("run", "--rm", "--user", "0", "configured:1", "id -u; pwd")
    assert r.stdout == b"0\n/srv\n"
    obj = json.loads(daemon.tug("image", "inspect", "configured:1").stdout)
    assert isinstance(obj, dict)  # one object, not a list
    assert obj["config"]["ExposedPorts"] == {"80/tcp": {}}
    assert obj["config"]["Labels"] == {"org.example.team": "images"}
    cid = daemon.tug("create", "configured:1").stdout.decode().strip()
    assert daemon.call("container.inspect", {"id": cid})["config"]["stop_signal"] == "SIGUSR1"
    with open(os.path.join(daemon.root, "containers", cid, "config.json")) as f:
        oci = json.load(f)
    assert oci["annotations"] == {"org.example.team": "images"}  # Labels: the spec's annotations
    assert oci["process"]["user"] == {"uid": 1234, "gid": 2345, "additionalGids": [3456]}
    assert oci["process"]["cwd"] == "/srv" and "GREETING=hello" in oci["process"]["env"]


@pytest.mark.integration
@needs_root
@needs_runc
def test_images_json_inspect_rmi_prune(daemon: Any, busybox_tar: str, tmp_path: Any) -> None:
    lay = Layout(str(tmp_path / "oci"))
    with open(busybox_tar, "rb") as f:
        mbytes, mdigest = lay.image([f.read()], config={"Cmd": ["sh"]})
    lay.add(mbytes, mdigest, name="docker.io/library/loaded:2")
    [loaded] = load_layout(daemon, lay, tmp_path)
    assert loaded["repo_tags"] == ["loaded:2"]  # docker.io/library/ is the familiar short name
    rows = [json.loads(line) for line in daemon.tug("images", "--format", "json").stdout.splitlines()]
    row = next(r for r in rows if r["repo_tags"] == ["loaded:2"])
    assert row["digest"] == mdigest and row["repo_digests"] == [f"loaded@{mdigest}"]
    assert row["id"] == json.loads(mbytes)["config"]["digest"] and row["platform"] == "linux/amd64"
    assert row["config"] == {"Cmd": ["sh"]}  # the image config in the list as well
    obj = json.loads(daemon.tug("image", "inspect", "docker.io/library/loaded:2").stdout)
    for key in ("id", "digest", "repo_tags", "repo_digests", "size", "created", "platform", "config"):
        assert key in obj, key
    assert obj["created"] == "2024-01-02T03:04:05Z" and obj["config"] == {"Cmd": ["sh"]}
    assert daemon.call("image.inspect", {"ref": f"loaded@{mdigest}"})["id"] == obj["id"]

    daemon.tug("tag", "loaded:2", "localhost:5000/team/loaded:v9")
    assert sorted(daemon.call("image.inspect", {"ref": obj["id"]})["repo_tags"]) == [
        "loaded:2",
        "localhost:5000/team/loaded:v9",
    ]
    cid = daemon.tug("create", "--name", "user", "loaded:2", "true").stdout.decode().strip()
    r = daemon.tug("rmi", obj["id"], check=False)
    assert r.returncode == 1 and b"in use by container(s) user" in r.stderr
    root = daemon.root
    blobs_before = set(os.listdir(os.path.join(root, "blobs", "sha256")))
    daemon.tug("rmi", "-f", "loaded:2", "localhost:5000/team/loaded:v9")
    assert obj["id"] in [i["id"] for i in daemon.call("image.list")]  # kept for its container
    daemon.tug("rm", cid)
    assert obj["id"] not in [i["id"] for i in daemon.call("image.list")]
    blobs_after = set(os.listdir(os.path.join(root, "blobs", "sha256")))
    assert mdigest[7:] in blobs_before and mdigest[7:] not in blobs_after
    # prune: an untagged image goes, the tagged busybox stays
    lay2 = Layout(str(tmp_path / "oci2"))
    m2, d2 = lay2.image([layer_tar([Entry("x", b"x")])])
    lay2.add(m2, d2)  # no name: loaded untagged
    [untagged] = load_layout(daemon, lay2, tmp_path, "untagged.tar")
    assert untagged["repo_tags"] == []
    out = json.loads(daemon.tug("image", "prune", "-f", "--format", "json").stdout)
    assert out["deleted"] == [untagged["id"]] and out["snapshots"] >= 1
    assert [i["repo_tags"] for i in daemon.call("image.list")] == [["busybox:latest"]]
    r = daemon.tug("image", "inspect", "nope:1", check=False)
    assert r.returncode != 0 and b"no such image" in r.stderr


# --------------------------------------------------------------------------- property tests

_component = st.from_regex(r"[a-z0-9]{1,8}(?:[._-][a-z0-9]{1,8})?", fullmatch=True)
_host = st.one_of(
    st.just(""),
    st.sampled_from(
        ["docker.io/", "index.docker.io/", "localhost/", "localhost:5000/", "quay.io/", "r.example:443/"]
    ),
)


@given(
    host=_host,
    path=st.lists(_component, min_size=1, max_size=3),
    tag=st.one_of(st.none(), st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True)),
    digest=st.one_of(st.none(), st.from_regex(r"[0-9a-f]{64}", fullmatch=True)),
)
@settings(max_examples=200, deadline=None)
def test_reference_forms_agree(host: str, path: list[str], tag: str | None, digest: str | None) -> None:
    ref = host + "/".join(path) + (f":{tag}" if tag else "") + (f"@sha256:{digest}" if digest else "")
    parsed = imageref.parse(ref)
    # the full form, the familiar form and the original all name the same thing
    assert imageref.parse(parsed.string()) == parsed
    assert imageref.parse(parsed.familiar()) == parsed
    assert parsed.familiar() == imageref.parse(parsed.familiar()).familiar()
    assert (parsed.tag or None) == (tag or (None if digest else "latest"))
    assert ".." not in parsed.repository
    if parsed.domain == "docker.io":
        assert "/" in parsed.path  # library/ for official images


@needs_root
@pytest.mark.anyio
async def test_user_names_come_from_the_images_own_files_whiteouts_included(
    images: Images, tmp_path: Any
) -> None:
    from supervisor.spec import resolve_user

    lay = Layout(str(tmp_path / "oci"))
    mbytes, mdigest = lay.image([layer_tar(BASE_FILES), layer_tar([Entry("etc/.wh.group")])])
    lay.add(mbytes, mdigest, name="users:1")
    rec = await images.ingest(DirSource(lay.finish()), "1", "users:1")
    dirs = images.snapshot_dirs(rec)
    assert resolve_user("web", dirs) == (1234, 2345, [])  # /etc/group is whited out: no extra groups
    assert resolve_user("web", dirs[1:]) == (1234, 2345, [3456])
    with pytest.raises(InvalidArgument, match="unable to find group webgrp"):
        resolve_user("web:webgrp", dirs)


@needs_root
@pytest.mark.anyio
async def test_docker_schema2_manifest_list_is_ingested(images: Images, tmp_path: Any) -> None:
    """Docker's media types (manifest list, schema 2 manifest, rootfs.diff.tar.gzip layers)."""
    lay = Layout(str(tmp_path / "oci"))
    raw = layer_tar([Entry("docker", b"schema2\n")])
    gz = gzip.compress(raw, mtime=0)
    cfg = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": [digest_of(raw)]},
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "digest": lay.blob(cfg),
                "size": len(cfg),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    "digest": lay.blob(gz),
                    "size": len(gz),
                }
            ],
        }
    ).encode()
    mdigest = lay.blob(manifest)
    mlist = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
            "manifests": [
                {
                    "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                    "digest": mdigest,
                    "size": len(manifest),
                    "platform": {"architecture": "amd64", "os": "linux"},
                },
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": "sha256:" + "e" * 64,
                    "size": 10,
                    "platform": {"architecture": "unknown", "os": "unknown"},
                },
            ],
        }
    ).encode()
    ldigest = lay.blob(mlist)
    lay.finish()
    rec = await images.ingest(DirSource(lay.path), ldigest, "docker/list:1")
    assert rec.digest == mdigest and rec.repo_digests == [f"docker/list@{ldigest}"]
    exp = images.export("docker/list:1")
    assert exp.media_type == "application/vnd.docker.distribution.manifest.v2+json"
    assert exp.manifest_bytes == manifest  # byte for byte: the digest a registry knows holds
    with open(os.path.join(images.snapshot_dirs(rec)[0], "docker"), "rb") as f:
        assert f.read() == b"schema2\n"
    assert images.resolve(f"docker/list@{ldigest}").record.id == rec.id
    assert images.resolve(f"docker.io/docker/list@{mdigest}").record.id == rec.id


def test_inflater_reads_multi_member_gzip_padding_and_refuses_truncated() -> None:
    from supervisor.images import Inflater as _Inflater

    data = os.urandom(3 << 20)
    blob = gzip.compress(data[: 1 << 20]) + gzip.compress(data[1 << 20 :]) + b"\0" * 1024
    inflater = _Inflater(io.BytesIO(blob), digest_of(blob))
    try:
        got = b"".join(iter(lambda: inflater.read(10240), b""))
    finally:
        inflater.close()
    assert got == data
    assert (inflater.raw_digest(), inflater.diff_digest()) == (digest_of(blob), digest_of(data))
    for bad in (blob[: len(blob) // 2], b"\x1f\x8b" + b"junk" * 100):
        inflater = _Inflater(io.BytesIO(bad), digest_of(bad))
        try:
            with pytest.raises(CorruptBlob):
                inflater.drain()
        finally:
            inflater.close()
    plain = _Inflater(io.BytesIO(data), digest_of(data))
    try:
        assert plain.read() == data and plain.diff_digest() == plain.raw_digest() == digest_of(data)
    finally:
        plain.close()
