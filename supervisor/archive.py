"""Image archives: ``tug save`` and ``tug load`` in OCI archive and docker-archive formats.

An OCI archive is a tar of an OCI image layout (``oci-layout``, ``index.json``,
``blobs/sha256/...``), the format ``skopeo copy ... oci-archive:FILE`` writes and ``umoci``
reads (once untarred). A docker-archive is what ``docker save`` (before docker 25) and
``skopeo copy ... docker-archive:FILE`` write: ``manifest.json`` naming, per image, a config file,
its repo tags and its layers as uncompressed tars.

Both are read in place: the archive is indexed once (member name -> offset and size) and every
blob is read at its offset, so nothing is unpacked to a temp dir (a compressed archive is first
decompressed to a temp file, as random access into gzip is not possible). Both are read through
:class:`~supervisor.images.ImageSource`, so :meth:`Images.ingest` verifies every digest.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

import anyio

from tugwire import imageref
from tugwire.errors import InvalidArgument, NotFound

from .images import (
    MEDIA_INDEX,
    MEDIA_LAYER_GZIP,
    MEDIA_LAYER_TAR,
    MEDIA_MANIFEST,
    BlobWriter,
    ExportedImage,
    Images,
    check_digest,
    sha256_digest,
)

FORMATS = ("docker-archive", "oci-archive")
REF_NAME = "org.opencontainers.image.ref.name"
IMAGE_NAME = "io.containerd.image.name"
_CHUNK = 1 << 20


# ------------------------------------------------------------------------------------ reading


@dataclass(frozen=True)
class _Member:
    offset: int
    size: int


class _TarIndex:
    """Regular files of a plain tar, by normalised name, read at their offsets."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.members: dict[str, _Member] = {}
        try:
            with tarfile.open(path, "r:") as tf:
                for m in tf:
                    if m.isreg() and not m.issparse():
                        self.members[os.path.normpath(m.name).lstrip("/")] = _Member(m.offset_data, m.size)
        except tarfile.TarError as exc:
            raise InvalidArgument(f"{path} is not a tar archive: {exc}", field="path") from exc

    def has(self, name: str) -> bool:
        return os.path.normpath(name).lstrip("/") in self.members

    def member(self, name: str) -> _Member:
        try:
            return self.members[os.path.normpath(name).lstrip("/")]
        except KeyError:
            raise NotFound(f"the archive has no {name}", field="path") from None

    def read(self, name: str, limit: int = 4 << 20) -> bytes:
        m = self.member(name)
        if m.size > limit:
            raise InvalidArgument(f"{name} in the archive is larger than {limit} bytes", field="path")
        with open(self.path, "rb") as f:
            f.seek(m.offset)
            return f.read(m.size)

    def chunks(self, name: str) -> Iterator[bytes]:
        m = self.member(name)
        with open(self.path, "rb") as f:
            f.seek(m.offset)
            left = m.size
            while left:
                chunk = f.read(min(_CHUNK, left))
                if not chunk:
                    raise InvalidArgument(f"{name} is truncated in the archive", field="path")
                left -= len(chunk)
                yield chunk

    def digest_and_size(self, name: str) -> tuple[str, int]:
        h = hashlib.sha256()
        size = 0
        for chunk in self.chunks(name):
            h.update(chunk)
            size += len(chunk)
        return "sha256:" + h.hexdigest(), size


async def _copy_member(index: _TarIndex, name: str, writer: BlobWriter) -> None:
    chunks = index.chunks(name)
    while True:
        chunk = await anyio.to_thread.run_sync(next, chunks, None)
        if chunk is None:
            return
        await writer.write(chunk)


class OciLayoutSource:
    """An OCI image layout in a (plain) tar: the ImageSource of ``tug load`` of an OCI archive."""

    def __init__(self, index: _TarIndex) -> None:
        self.index = index
        top = _json(index.read("index.json"), "index.json")
        manifests = top.get("manifests")
        if not isinstance(manifests, list):
            raise InvalidArgument("index.json has no manifests list", field="path")
        self.entries: list[dict[str, Any]] = [m for m in manifests if isinstance(m, dict)]

    def images(self) -> list[tuple[str, str | None]]:
        """(digest, name to record or None) for each image the layout's index names."""
        out: list[tuple[str, str | None]] = []
        for desc in self.entries:
            digest = check_digest(desc.get("digest"))
            ann = desc.get("annotations") or {}
            name = ann.get(IMAGE_NAME) or ann.get(REF_NAME)
            if isinstance(name, str) and (":" in name or "/" in name or "@" in name):
                try:
                    name = imageref.parse(name).familiar()
                except InvalidArgument:
                    name = None
            else:
                name = None  # a bare tag ("latest") names no repository
            out.append((digest, name))
        return out

    async def get_manifest(self, reference: str) -> tuple[bytes, str]:
        if not imageref.is_digest(reference):
            for desc in self.entries:
                if (desc.get("annotations") or {}).get(REF_NAME) == reference:
                    reference = check_digest(desc.get("digest"))
                    break
            else:
                raise NotFound(f"the OCI layout has no image named {reference!r}")
        blob = f"blobs/sha256/{reference[7:]}"
        data = await anyio.to_thread.run_sync(self.index.read, blob)
        media_type = next(
            (str(d.get("mediaType") or "") for d in self.entries if d.get("digest") == reference), ""
        )
        return data, media_type

    async def fetch_blob(self, desc: dict[str, Any], writer: BlobWriter) -> None:
        digest = check_digest(desc.get("digest"))
        await _copy_member(self.index, f"blobs/sha256/{digest[7:]}", writer)


class DockerArchiveSource:
    """A docker-archive: each ``manifest.json`` entry becomes an OCI manifest made here (as
    skopeo does: the archive holds none), its layers described by digest and size."""

    def __init__(self, index: _TarIndex) -> None:
        self.index = index
        entries = json.loads(index.read("manifest.json"))
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise InvalidArgument("manifest.json is not a list of images", field="path")
        self.entries: list[dict[str, Any]] = entries
        self.manifests: dict[str, bytes] = {}
        self.files: dict[str, str] = {}  # blob digest -> member name

    def _build(self, entry: dict[str, Any]) -> str:
        config_name = entry.get("Config")
        layers = entry.get("Layers")
        if not isinstance(config_name, str) or not isinstance(layers, list):
            raise InvalidArgument("manifest.json: an entry lacks Config or Layers", field="path")
        config_digest, config_size = self.index.digest_and_size(config_name)
        self.files[config_digest] = config_name
        descs = []
        for name in layers:
            if not isinstance(name, str):
                raise InvalidArgument("manifest.json: a layer name is not a string", field="path")
            digest, size = self.index.digest_and_size(name)
            self.files[digest] = name
            m = self.index.member(name)
            with open(self.index.path, "rb") as f:
                f.seek(m.offset)
                gz = f.read(2) == b"\x1f\x8b"
            descs.append(
                {"mediaType": MEDIA_LAYER_GZIP if gz else MEDIA_LAYER_TAR, "digest": digest, "size": size}
            )
        manifest = {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": config_size,
            },
            "layers": descs,
        }
        raw = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
        digest = sha256_digest(raw)
        self.manifests[digest] = raw
        return digest

    def images(self) -> list[tuple[str, list[str]]]:
        """(manifest digest, repo tags) per entry (builds the manifests: reads every blob once)."""
        out = []
        for entry in self.entries:
            tags = entry.get("RepoTags") or []
            if not isinstance(tags, list):
                tags = []
            out.append((self._build(entry), [t for t in tags if isinstance(t, str)]))
        return out

    async def get_manifest(self, reference: str) -> tuple[bytes, str]:
        try:
            return self.manifests[reference], MEDIA_MANIFEST
        except KeyError:
            raise NotFound(f"the docker-archive has no image {reference}") from None

    async def fetch_blob(self, desc: dict[str, Any], writer: BlobWriter) -> None:
        digest = check_digest(desc.get("digest"))
        try:
            name = self.files[digest]
        except KeyError:
            raise NotFound(f"the docker-archive has no blob {digest}") from None
        await _copy_member(self.index, name, writer)


def _json(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except ValueError as exc:
        raise InvalidArgument(f"{what} is not valid JSON: {exc}", field="path") from exc
    if not isinstance(obj, dict):
        raise InvalidArgument(f"{what} is not a JSON object", field="path")
    return obj


def _plain_tar(path: str, tmpdir: str) -> tuple[str, bool]:
    """The archive as a plain tar: itself, or decompressed (gzip) to a temp file."""
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic != b"\x1f\x8b":
        return path, False
    out = os.path.join(tmpdir, f".load-{os.getpid()}-{os.urandom(4).hex()}.tar")
    try:
        with gzip.open(path, "rb") as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst, _CHUNK)
    except (OSError, EOFError) as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(out)
        raise InvalidArgument(f"{path}: not a valid gzip stream: {exc}", field="path") from exc
    return out, True


async def load(images: Images, path: str, *, platform: str | None = None) -> list[dict[str, Any]]:
    """Load every image of the archive at ``path`` (OCI archive or docker-archive, plain or
    gzipped). Returns ``[{"id", "digest", "repo_tags"}]``, ``repo_tags`` being the names the
    archive gave (the image may have others). Errors: NotFound (no such file),
    InvalidArgument (not an image archive, a malformed one), CorruptBlob."""
    if not isinstance(path, str) or not os.path.isabs(path):
        raise InvalidArgument(f"the archive path must be absolute: {path!r}", field="path")
    if not os.path.isfile(path):
        raise NotFound(f"no such file: {path}", field="path")
    tmpdir = os.path.dirname(images.blobs.dir)
    plain, is_temp = await anyio.to_thread.run_sync(_plain_tar, path, tmpdir)
    try:
        index = await anyio.to_thread.run_sync(_TarIndex, plain)
        out: list[dict[str, Any]] = []
        if index.has("index.json") and index.has("oci-layout"):
            oci = OciLayoutSource(index)
            for digest, name in oci.images():
                rec = await images.ingest(oci, digest, name, platform=platform)
                tags = [t for t in [imageref.parse(name).tag_name() if name else None] if t]
                out.append({"id": rec.id, "digest": rec.digest, "repo_tags": tags})
        elif index.has("manifest.json"):
            docker = DockerArchiveSource(index)
            for digest, tags in await anyio.to_thread.run_sync(docker.images):
                rec = await images.ingest(docker, digest, tags[0] if tags else None, platform=platform)
                for tag in tags[1:]:
                    rec = images.tag(rec.id, tag)
                tags = [imageref.parse(t).familiar() for t in tags]
                out.append({"id": rec.id, "digest": rec.digest, "repo_tags": tags})
        else:
            raise InvalidArgument(
                f"{path} is neither an OCI archive (oci-layout, index.json) nor a docker-archive "
                "(manifest.json)",
                field="path",
            )
        return out
    finally:
        if is_temp:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(plain)


# ------------------------------------------------------------------------------------ writing


def _add_bytes(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tf.addfile(info, io.BytesIO(data))


def _add_dir(tf: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    tf.addfile(info)


def _add_file(tf: tarfile.TarFile, name: str, path: str) -> None:
    info = tarfile.TarInfo(name)
    info.size = os.path.getsize(path)
    info.mode = 0o644
    with open(path, "rb") as f:
        tf.addfile(info, f)


def _write_oci(out: IO[bytes], images: list[tuple[str, ExportedImage]]) -> None:
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tf:
        _add_bytes(tf, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        _add_dir(tf, "blobs")
        _add_dir(tf, "blobs/sha256")
        written: set[str] = set()
        manifests = []
        for name, exp in images:
            for desc in [exp.config, *exp.layers]:
                if desc["digest"] not in written:
                    written.add(desc["digest"])
                    _add_file(tf, f"blobs/sha256/{desc['digest'][7:]}", exp.blob_path(desc["digest"]))
            if exp.digest not in written:
                written.add(exp.digest)
                _add_bytes(tf, f"blobs/sha256/{exp.digest[7:]}", exp.manifest_bytes)
            entry: dict[str, Any] = {
                "mediaType": exp.media_type,
                "digest": exp.digest,
                "size": len(exp.manifest_bytes),
            }
            ref = imageref.parse(name, default_tag=None) if name else None
            if ref is not None and ref.tag:
                entry["annotations"] = {IMAGE_NAME: ref.string(), REF_NAME: ref.tag}
            manifests.append(entry)
        index = {"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": manifests}
        _add_bytes(tf, "index.json", json.dumps(index, separators=(",", ":")).encode())


def _write_docker(out: IO[bytes], images: list[tuple[str, ExportedImage]], tmpdir: str) -> None:
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tf:
        written: set[str] = set()
        entries: dict[str, dict[str, Any]] = {}
        repositories: dict[str, dict[str, str]] = {}
        for name, exp in images:
            config_name = f"{exp.config['digest'][7:]}.json"
            layer_names = []
            for desc, diff_id in zip(exp.layers, exp.diff_ids, strict=True):
                layer_name = f"{diff_id[7:]}.tar"
                layer_names.append(layer_name)
                if layer_name in written:
                    continue
                written.add(layer_name)
                blob = exp.blob_path(desc["digest"])
                with open(blob, "rb") as f:
                    gz = f.read(2) == b"\x1f\x8b"
                if not gz:
                    _add_file(tf, layer_name, blob)
                    continue
                # docker-archive layers are uncompressed tars, named by their diff id
                tmp = os.path.join(tmpdir, f".save-{os.getpid()}-{os.urandom(4).hex()}.tar")
                try:
                    with gzip.open(blob, "rb") as src, open(tmp, "wb") as dst:
                        shutil.copyfileobj(src, dst, _CHUNK)
                    _add_file(tf, layer_name, tmp)
                finally:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(tmp)
            if config_name not in written:
                written.add(config_name)
                _add_bytes(tf, config_name, exp.config_bytes)
            entry = entries.setdefault(
                exp.digest, {"Config": config_name, "RepoTags": [], "Layers": layer_names}
            )
            ref = imageref.parse(name, default_tag=None) if name else None
            if ref is not None and ref.tag:
                tag = ref.familiar()
                if tag not in entry["RepoTags"]:
                    entry["RepoTags"].append(tag)
                if exp.diff_ids:
                    repositories.setdefault(ref.familiar_repository, {})[ref.tag] = exp.diff_ids[-1][7:]
        _add_bytes(tf, "manifest.json", json.dumps(list(entries.values()), separators=(",", ":")).encode())
        if repositories:
            _add_bytes(tf, "repositories", json.dumps(repositories, separators=(",", ":")).encode())


async def save(images: Images, path: str, refs: list[str], *, fmt: str = "docker-archive") -> dict[str, Any]:
    """Write the images ``refs`` name to ``path`` (absolute; written to a temp file and renamed,
    so a failed save leaves nothing). ``fmt``: ``docker-archive`` (as ``docker save``) or
    ``oci-archive``. A name ref is recorded in the archive (docker: RepoTags; OCI: the
    ``io.containerd.image.name`` and ``org.opencontainers.image.ref.name`` annotations); an id
    ref is saved unnamed. Returns ``{"path", "format", "images": [ids], "size"}``."""
    if fmt not in FORMATS:
        raise InvalidArgument(
            f"unknown archive format {fmt!r}: want one of {', '.join(FORMATS)}", field="format"
        )
    if not isinstance(path, str) or not os.path.isabs(path):
        raise InvalidArgument(f"the archive path must be absolute: {path!r}", field="path")
    if not refs:
        raise InvalidArgument("name at least one image to save", field="refs")
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise NotFound(f"no such directory: {directory}", field="path")
    chosen: list[tuple[str, ExportedImage]] = []
    for ref in refs:
        resolved = images.resolve(ref)
        exp = images.export(ref)
        chosen.append((resolved.ref if resolved.ref in resolved.record.names else "", exp))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}")

    def write() -> int:
        try:
            for _, exp in chosen:  # a corrupt blob is never passed on
                for desc in [exp.config, *exp.layers]:
                    images.blobs.verify_file(desc["digest"])
            with open(tmp, "wb") as out:
                if fmt == "oci-archive":
                    _write_oci(out, chosen)
                else:
                    _write_docker(out, chosen, directory)
                out.flush()
                os.fsync(out.fileno())
            os.rename(tmp, path)
            return os.path.getsize(path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    with images.leases.hold() as lease:  # the blobs being written stay while they are
        for _, exp in chosen:
            for desc in [exp.config, *exp.layers]:
                lease.add(desc["digest"])
            lease.add(exp.digest)
        size = await anyio.to_thread.run_sync(write)
    return {"path": path, "format": fmt, "images": [exp.record.id for _, exp in chosen], "size": size}
