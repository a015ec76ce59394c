"""Images: a content-addressed blob store, OCI and Docker manifests, indexes and configs, layers
unpacked into snapshots that overlayfs stacks under each container.

Blobs are ``blobs/sha256/<hex>``, verified on write (a :class:`BlobWriter` checks size and digest
before the blob gets its name) and on read (a corrupt blob is :class:`CorruptBlob`, never used).
An image is a manifest + config in the store and a row in the metadata store; each layer is
unpacked once into ``snapshots/<chain id>/fs``, shared by every image and container that uses it.
Images come in through :meth:`Images.ingest` from any :class:`ImageSource` (an OCI layout, a
docker-archive, a registry) and go out through :meth:`Images.export` (push, save).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import itertools
import json
import logging
import os
import shutil
import stat
import tarfile
import time
import zlib
from collections import Counter
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

import anyio

from tugwire import fsutil
from tugwire.errors import FailedPrecondition, InvalidArgument, NotFound, TugError

from . import imageref
from .config import Config
from .failpoints import failpoint
from .store import ImageRecord, Store

log = logging.getLogger(__name__)

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
DOCKER_SCHEMA1 = (
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)
MANIFEST_TYPES = (MEDIA_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (MEDIA_INDEX, DOCKER_LIST)
_CHUNK = 1 << 20
_MAX_MANIFEST = 4 << 20  # as containerd: a manifest or config larger than this is refused
_WHITEOUT = ".wh."
_OPAQUE = ".wh..wh..opq"
# Tar bombs: what one layer may unpack to (its files' bytes, its entries); above, it is refused.
MAX_LAYER_BYTES = 64 << 30
MAX_LAYER_ENTRIES = 2_000_000


def now_rfc3339() -> str:
    ns = time.time_ns()
    sec, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{frac:09d}Z"


class CorruptBlob(InvalidArgument):
    """A blob whose bytes do not match its digest (or size): never stored, never used."""


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check_digest(digest: object) -> str:
    """``sha256:<64 hex>`` or InvalidArgument (a digest reaches a path)."""
    if not isinstance(digest, str) or not imageref.is_digest(digest):
        raise InvalidArgument(f"invalid digest {digest!r}", field="digest")
    return digest


_tmp_counter = itertools.count()


def _tmp_name(directory: str, prefix: str) -> str:
    return os.path.join(directory, f"{prefix}{os.getpid()}-{next(_tmp_counter)}-{time.monotonic_ns()}")


class BlobWriter:
    """One blob on its way into the store (from :meth:`ContentStore.writer`): bytes go to a hidden
    temp file, hashed as they come; :meth:`commit` checks size and digest and only then gives the
    blob its name. A mismatch is :class:`CorruptBlob` and leaves nothing behind."""

    def __init__(self, store: ContentStore, desc: dict[str, Any]) -> None:
        self.digest = check_digest(desc.get("digest"))
        size = desc.get("size")
        self.expected_size: int | None = size if isinstance(size, int) and size >= 0 else None
        self._store = store
        self._hash = hashlib.sha256()
        self.written = 0
        self._tmp = _tmp_name(store.dir, ".in-")
        self._file: IO[bytes] | None = open(self._tmp, "wb")  # noqa: SIM115 - closed by commit/abort

    async def write(self, data: bytes) -> None:
        """Append ``data`` (a write to the page cache: no thread hop, measured cheaper)."""
        if self._file is None:
            raise FailedPrecondition(f"blob writer for {self.digest} is closed")
        self.written += len(data)
        if self.expected_size is not None and self.written > self.expected_size:
            self.abort()
            raise CorruptBlob(
                f"blob {self.digest} is larger than its descriptor's {self.expected_size} bytes"
            )
        self._hash.update(data)
        self._file.write(data)

    def commit(self) -> str:
        """Verify and name the blob; returns its digest."""
        if self._file is None:
            raise FailedPrecondition(f"blob writer for {self.digest} is closed")
        try:
            if self.expected_size is not None and self.written != self.expected_size:
                raise CorruptBlob(
                    f"blob {self.digest} has {self.written} bytes, its descriptor says {self.expected_size}"
                )
            got = "sha256:" + self._hash.hexdigest()
            if got != self.digest:
                raise CorruptBlob(f"blob {self.digest} is corrupt: its content hashes to {got}")
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
            os.rename(self._tmp, self._store.path(self.digest))
            return self.digest
        finally:
            self.abort()

    def abort(self) -> None:
        """Drop whatever was written (idempotent)."""
        if self._file is not None:
            with contextlib.suppress(OSError):  # a full disk fails the close's flush too
                self._file.close()
            self._file = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)


class ContentStore:
    """``blobs/sha256/<hex>``: written through a temp file, renamed once the digest is known."""

    def __init__(self, directory: str) -> None:
        self.dir = directory
        os.makedirs(directory, mode=0o700, exist_ok=True)

    def path(self, digest: str) -> str:
        algo, _, hexd = digest.partition(":")
        if algo != "sha256" or len(hexd) != 64 or not all(c in "0123456789abcdef" for c in hexd):
            raise InvalidArgument(f"invalid digest {digest!r}")
        return os.path.join(self.dir, hexd)

    def has(self, digest: str) -> bool:
        return os.path.exists(self.path(digest))

    def writer(self, desc: dict[str, Any]) -> BlobWriter:
        """A writer for the blob ``desc`` names (``digest`` and, if known, ``size``)."""
        return BlobWriter(self, desc)

    def put_bytes(self, data: bytes) -> str:
        digest = sha256_digest(data)
        if not os.path.exists(self.path(digest)):
            tmp = _tmp_name(self.dir, ".in-")
            try:
                with open(tmp, "wb") as out:
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
                os.rename(tmp, self.path(digest))
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        return digest

    def put_stream(self, src: IO[bytes]) -> tuple[str, int]:
        """Copy a stream into the store; returns (digest, size)."""
        h = hashlib.sha256()
        tmp = _tmp_name(self.dir, ".in-")
        size = 0
        try:
            with open(tmp, "wb") as out:
                while chunk := src.read(_CHUNK):
                    h.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            digest = "sha256:" + h.hexdigest()
            os.rename(tmp, self.path(digest))
            fsutil.fsync_dir(self.dir)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return digest, size

    def read_verified(self, digest: str) -> bytes:
        try:
            with open(self.path(digest), "rb") as f:
                data = f.read()
        except FileNotFoundError as exc:
            raise NotFound(f"blob {digest} is missing from the content store") from exc
        if sha256_digest(data) != digest:
            raise CorruptBlob(f"blob {digest} is corrupt (its content does not match its digest)")
        return data

    def verify_file(self, digest: str) -> None:
        h = hashlib.sha256()
        try:
            with open(self.path(digest), "rb") as f:
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
        except FileNotFoundError as exc:
            raise NotFound(f"blob {digest} is missing from the content store") from exc
        if "sha256:" + h.hexdigest() != digest:
            raise CorruptBlob(f"blob {digest} is corrupt (its content does not match its digest)")

    def delete(self, digest: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(digest))

    def digests(self) -> list[str]:
        """Every blob in the store (temp files, whose names start with a dot, excluded)."""
        return ["sha256:" + n for n in os.listdir(self.dir) if not n.startswith(".")]


# -------------------------------------------------------------------------------- the contract


class ImageSource(Protocol):
    """Where an image comes from: an OCI layout dir, a docker-archive, a registry."""

    async def get_manifest(self, reference: str) -> tuple[bytes, str]:
        """The raw bytes and media type of the manifest or index that ``reference`` (a tag or a
        ``sha256:...`` digest) names. Raises NotFound if there is none."""
        ...

    async def fetch_blob(self, desc: dict[str, Any], writer: BlobWriter) -> None:
        """Write the blob ``desc`` (an OCI descriptor: mediaType, digest, size) to ``writer``.
        :meth:`Images.ingest` commits (and so verifies) it after this returns."""
        ...


@dataclass(frozen=True)
class ExportedImage:
    """An image as push and save need it: the manifest exactly as stored (so its digest holds),
    the config and layer descriptors (layers as stored: gzip or plain tar), and where each blob is."""

    record: ImageRecord
    manifest_bytes: bytes
    media_type: str
    digest: str
    config: dict[str, Any]
    layers: list[dict[str, Any]]
    blob_path: Callable[[str], str]
    repo_tags: list[str] = field(default_factory=list)

    @property
    def config_bytes(self) -> bytes:
        with open(self.blob_path(self.config["digest"]), "rb") as f:
            return f.read()

    @property
    def diff_ids(self) -> list[str]:
        return list(self.record.config.get("rootfs", {}).get("diff_ids", []))


@dataclass(frozen=True)
class ResolvedImage:
    record: ImageRecord
    ref: str  # the name it was asked for by, or its id

    @property
    def config(self) -> dict[str, Any]:
        cfg = self.record.config.get("config") or {}
        return cfg if isinstance(cfg, dict) else {}


def chain_ids(diff_ids: list[str]) -> list[str]:
    """OCI chain ids: the identity of a layer together with everything below it."""
    out: list[str] = []
    for d in diff_ids:
        if not out:
            out.append(d)
        else:
            out.append("sha256:" + hashlib.sha256(f"{out[-1]} {d}".encode()).hexdigest())
    return out


def host_platform() -> str:
    return f"linux/{_arch()}"


def parse_platform(value: str) -> tuple[str, str, str]:
    """``os/arch[/variant]`` -> (os, arch, variant); ``amd64`` alone means ``linux/amd64``."""
    parts = value.split("/")
    if len(parts) == 1:
        parts = ["linux", *parts]
    if len(parts) not in (2, 3) or not all(parts):
        raise InvalidArgument(f"invalid platform {value!r}: want os/arch[/variant]", field="platform")
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(parts[1], parts[1])
    variant = parts[2] if len(parts) == 3 else ""
    if arch == "arm64" and variant == "v8":
        variant = ""
    return parts[0], arch, variant


def choose_manifest(index: dict[str, Any], platform: str | None) -> dict[str, Any]:
    """The descriptor in an index for ``platform`` (default: the host's). Raises NotFound listing
    what the index has."""
    want = parse_platform(platform or host_platform())
    entries = index.get("manifests")
    if not isinstance(entries, list):
        raise InvalidArgument("the image index has no manifests list")
    have: list[str] = []
    for desc in entries:
        if not isinstance(desc, dict):
            continue
        p = desc.get("platform") or {}
        if not isinstance(p, dict) or desc.get("mediaType") not in (*MANIFEST_TYPES, None):
            continue  # attestation manifests and nested indexes are not run
        if p.get("os") == "unknown":
            continue
        os_, arch = str(p.get("os", "")), str(p.get("architecture", ""))
        variant = str(p.get("variant", ""))
        have.append("/".join(x for x in (os_, arch, variant) if x))
        got = (os_, {"x86_64": "amd64", "aarch64": "arm64"}.get(arch, arch), variant)
        if got[2] == "v8" and got[1] == "arm64":
            got = (got[0], got[1], "")
        if got[:2] == want[:2] and (not want[2] or got[2] == want[2]):
            return desc
    raise NotFound(
        f"no image for platform {'/'.join(x for x in want if x)} in the index "
        f"(it has: {', '.join(have) or 'nothing runnable'})",
        field="platform",
    )


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidArgument(f"the {what} is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise InvalidArgument(f"the {what} is not a JSON object")
    return obj


def _descriptor(obj: object, what: str) -> dict[str, Any]:
    if not isinstance(obj, dict) or not isinstance(obj.get("size"), int):
        raise InvalidArgument(f"the manifest's {what} is not a descriptor with a digest and a size")
    check_digest(obj.get("digest"))
    return obj


def manifest_media_type(data: bytes, declared: str) -> str:
    """The media type of a manifest or index: the declared one, else its ``mediaType`` field, else
    guessed from its shape (OCI allows the field to be absent)."""
    obj = _json_object(data, "manifest")
    mt = declared or str(obj.get("mediaType") or "")
    if mt in (*MANIFEST_TYPES, *INDEX_TYPES):
        return mt
    if mt in DOCKER_SCHEMA1 or obj.get("schemaVersion") == 1:
        raise InvalidArgument("Docker schema 1 manifests are not supported (deprecated since 2017)")
    if "manifests" in obj:
        return MEDIA_INDEX
    if "config" in obj and "layers" in obj:
        return MEDIA_MANIFEST
    raise InvalidArgument(f"unsupported manifest media type {mt!r}")


class _Lease:
    """The keys (blob digests, chain ids) one ingest holds."""

    def __init__(self, held: Counter[str]) -> None:
        self._held = held
        self.keys: set[str] = set()

    def add(self, key: str) -> None:
        if key not in self.keys:
            self.keys.add(key)
            self._held[key] += 1

    def release(self) -> None:
        for key in self.keys:
            self._held[key] -= 1
            if self._held[key] <= 0:
                del self._held[key]
        self.keys.clear()


class _Leases:
    """Blobs and snapshots held by ingests in flight: garbage collection leaves them alone."""

    def __init__(self) -> None:
        self.held: Counter[str] = Counter()
        self.active = 0

    @contextlib.contextmanager
    def hold(self) -> Iterator[_Lease]:
        lease = _Lease(self.held)
        self.active += 1
        try:
            yield lease
        finally:
            self.active -= 1
            lease.release()

    def __contains__(self, key: object) -> bool:
        return key in self.held


class Images:
    def __init__(self, cfg: Config, store: Store) -> None:
        self.cfg = cfg
        self.store = store
        self.blobs = ContentStore(cfg.blobs_dir)
        os.makedirs(cfg.snapshots_dir, mode=0o700, exist_ok=True)
        self._lock = anyio.Lock()
        self.leases = _Leases()

    # ------------------------------------------------------------------------------ lookups

    def resolve(self, ref: str) -> ResolvedImage:
        """By name (``busybox`` means ``busybox:latest``, ``docker.io/library/busybox`` too),
        ``repo@sha256:`` digest, full id, or a unique id prefix."""
        if not isinstance(ref, str) or not ref:
            raise InvalidArgument("an image reference is required", field="image")
        candidates = [ref, ref if ref.startswith("sha256:") else "sha256:" + ref]
        for image_id in candidates:
            if len(image_id) == 71:
                rec = self.store.get_image(image_id)
                if rec:
                    return ResolvedImage(self._with_digests(rec), ref)
        try:
            parsed: imageref.Reference | None = imageref.parse(ref)
        except InvalidArgument:
            parsed = None
        if parsed is not None:
            name = parsed.familiar()
            if parsed.digest:
                by_digest = self._image_by_digest(parsed)
                if by_digest and (rec := self.store.get_image(by_digest)):
                    return ResolvedImage(self._with_digests(rec), name)
            else:
                named = self.store.resolve_name(name)
                if named and (rec := self.store.get_image(named)):
                    return ResolvedImage(self._with_digests(rec), name)
        hexpart = ref.removeprefix("sha256:")
        if 4 <= len(hexpart) < 64 and all(c in "0123456789abcdef" for c in hexpart):
            ids = self.store.find_images_by_prefix("sha256:" + hexpart)
            if len(ids) == 1 and (rec := self.store.get_image(ids[0])):
                return ResolvedImage(self._with_digests(rec), ref)
        raise NotFound(f"no such image: {ref}", field="image")

    def _image_by_digest(self, parsed: imageref.Reference) -> str | None:
        assert parsed.digest is not None
        found = self.store.resolve_repo_digest(f"{parsed.familiar_repository}@{parsed.digest}")
        if found:
            return found
        for rec in self.store.list_images():  # a manifest digest recorded under another repo
            if rec.digest == parsed.digest and (
                parsed.tag is None or f"{parsed.familiar_repository}:{parsed.tag}" in rec.names
            ):
                return rec.id
        return None

    def _with_digests(self, rec: ImageRecord) -> ImageRecord:
        rec.repo_digests = self.store.repo_digests(rec.id)
        return rec

    def snapshot_dirs(self, image: ImageRecord) -> list[str]:
        """The lower dirs for overlayfs, top layer first."""
        diff_ids = image.config.get("rootfs", {}).get("diff_ids", [])
        return [self._snapshot_fs(c) for c in reversed(chain_ids(diff_ids))]

    def _snapshot_fs(self, chain_id: str) -> str:
        return os.path.join(self.cfg.snapshots_dir, chain_id.removeprefix("sha256:"), "fs")

    async def ensure_unpacked(self, image: ImageRecord) -> list[str]:
        """Unpack any layer whose snapshot is missing (after a crash mid-unpack, say)."""
        diff_ids = image.config.get("rootfs", {}).get("diff_ids", [])
        await self._unpack_all(image.manifest.get("layers", []), diff_ids)
        return self.snapshot_dirs(image)

    async def _unpack_all(self, layers: list[dict[str, Any]], diff_ids: list[str]) -> None:
        chains = chain_ids(diff_ids)
        for i, (chain, layer, diff_id) in enumerate(zip(chains, layers, diff_ids, strict=True)):
            if os.path.isdir(self._snapshot_fs(chain)):
                continue
            async with self._lock:  # one unpack of a chain at a time; re-check under the lock
                if os.path.isdir(self._snapshot_fs(chain)):
                    continue
                lowers = [self._snapshot_fs(c) for c in reversed(chains[:i])]
                await anyio.to_thread.run_sync(self._unpack_layer, layer, chain, diff_id, lowers)

    # ------------------------------------------------------------------------------- ingest

    async def ingest(
        self,
        source: ImageSource,
        reference: str,
        name: str | None,
        *,
        platform: str | None = None,
        concurrency: int = 3,
        progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> ImageRecord:
        """Fetch the index or manifest ``reference`` names from ``source`` (choosing ``platform``,
        by default the host's, from an index), then the config and the layers the store lacks
        (``concurrency`` at a time; blobs already present are skipped), verify every one, unpack
        the layers into snapshots, record the image (id: config digest; digest: manifest digest;
        repo digest: ``repo@<digest of what reference named>``) and tag ``name`` if given
        (``repo:tag``; ``repo@sha256:`` records only the repo digest). Holds a lease so that a
        concurrent GC leaves its blobs and snapshots alone.

        ``progress`` gets ``{"status": "resolved"|"exists"|"fetching"|"fetched"|"unpacking"|
        "done", "digest", "size", "media_type"}`` events. Errors: NotFound (no such manifest or
        platform), CorruptBlob (a digest or size mismatch: nothing is stored), InvalidArgument
        (a malformed manifest, an unsupported media type, an unsafe layer)."""
        target = imageref.parse(name) if name is not None else None
        if concurrency < 1:
            raise InvalidArgument("concurrency must be at least 1", field="concurrency")

        def emit(status: str, desc: dict[str, Any] | None = None, **extra: Any) -> None:
            if progress is not None:
                ev: dict[str, Any] = {"status": status}
                if desc is not None:
                    ev.update(
                        digest=desc.get("digest"), size=desc.get("size"), media_type=desc.get("mediaType")
                    )
                ev.update(extra)
                progress(ev)

        with self.leases.hold() as lease:
            raw, mt = await source.get_manifest(reference)
            top_digest = sha256_digest(raw)
            if imageref.is_digest(reference) and top_digest != reference:
                raise CorruptBlob(f"manifest {reference} is corrupt: its content hashes to {top_digest}")
            mt = manifest_media_type(raw, mt)
            if mt in INDEX_TYPES:
                index = _json_object(raw, "image index")
                chosen = choose_manifest(index, platform)
                check_digest(chosen.get("digest"))
                emit("resolved", chosen, index=top_digest)
                raw, mt = await source.get_manifest(chosen["digest"])
                got = sha256_digest(raw)
                if got != chosen["digest"]:
                    raise CorruptBlob(f"manifest {chosen['digest']} is corrupt: its content hashes to {got}")
                mt = manifest_media_type(raw, chosen.get("mediaType") or mt)
                if mt not in MANIFEST_TYPES:
                    raise InvalidArgument(f"the index entry for the platform is a {mt}, not a manifest")
            manifest_digest = sha256_digest(raw)
            if len(raw) > _MAX_MANIFEST:
                raise InvalidArgument(f"manifest {manifest_digest} is larger than {_MAX_MANIFEST} bytes")
            manifest = _json_object(raw, "manifest")
            manifest.setdefault("mediaType", mt)
            config_desc = _descriptor(manifest.get("config"), "config")
            layer_list = manifest.get("layers")
            if not isinstance(layer_list, list):
                raise InvalidArgument("the manifest has no layers list")
            layers = [_descriptor(d, f"layer {i}") for i, d in enumerate(layer_list)]
            for d in layers:
                if d.get("mediaType") == MEDIA_LAYER_ZSTD or str(d.get("mediaType", "")).endswith("+zstd"):
                    raise InvalidArgument(f"layer {d['digest']}: zstd-compressed layers are not supported")
            lease.add(manifest_digest)
            for d in [config_desc, *layers]:
                lease.add(d["digest"])

            limiter = anyio.CapacityLimiter(concurrency)
            failures: list[TugError] = []
            unique = {d["digest"]: d for d in [config_desc, *layers]}
            arrived = {digest: anyio.Event() for digest in unique}
            pending = [len(unique)]

            async def fetch(desc: dict[str, Any], scope: anyio.CancelScope) -> None:
                try:
                    async with limiter:
                        if self.blobs.has(desc["digest"]):
                            emit("exists", desc)
                        else:
                            emit("fetching", desc)
                            writer = self.blobs.writer(desc)
                            try:
                                await source.fetch_blob(desc, writer)
                                writer.commit()
                            finally:
                                writer.abort()
                            emit("fetched", desc)
                except TugError as exc:
                    # the first failure stops the other tasks and is raised as itself, not
                    # wrapped in an exception group
                    failures.append(exc)
                    scope.cancel()
                    return
                arrived[desc["digest"]].set()
                pending[0] -= 1
                if not pending[0]:
                    failpoint("image.ingest.after_fetch")

            async def unpack_in_order(scope: anyio.CancelScope) -> None:
                """Each layer is unpacked as soon as it and the layers below it are in: the
                unpacking overlaps the downloads of the layers above."""
                try:
                    await arrived[config_desc["digest"]].wait()
                    diff_ids = self._diff_ids(config_desc["digest"], len(layers))
                    for chain in chain_ids(diff_ids):
                        lease.add(chain)
                    emit("unpacking")
                    for i in range(len(layers)):
                        await arrived[layers[i]["digest"]].wait()
                        await self._unpack_all(layers[: i + 1], diff_ids[: i + 1])
                except TugError as exc:
                    failures.append(exc)
                    scope.cancel()

            async with anyio.create_task_group() as tg:
                for desc in unique.values():
                    tg.start_soon(fetch, desc, tg.cancel_scope)
                tg.start_soon(unpack_in_order, tg.cancel_scope)
            if failures:
                raise failures[0]
            config = _json_object(self.blobs.read_verified(config_desc["digest"]), "image config")
            failpoint("image.ingest.after_unpack")
            self.blobs.put_bytes(raw)
            created = config.get("created") if isinstance(config.get("created"), str) else now_rfc3339()
            rec = ImageRecord(
                id=config_desc["digest"],
                digest=manifest_digest,
                manifest=manifest,
                config=config,
                size=sum(int(d["size"]) for d in layers),
                created=str(created),
            )
            previous: str | None = None
            with self.store.transaction():
                self.store.put_image(rec)
                if target is not None:
                    self.store.set_repo_digest(target.digest_name(target.digest or top_digest) or "", rec.id)
                    if (tag := target.tag_name()) is not None and not target.digest:
                        previous = self.store.set_name(tag, rec.id)
            if previous and previous != rec.id:
                self._gc_image(previous)
            emit("done", None, id=rec.id, digest=manifest_digest)
        got_rec = self.store.get_image(rec.id)
        assert got_rec is not None
        return self._with_digests(got_rec)

    def _diff_ids(self, config_digest: str, n_layers: int) -> list[str]:
        """The config's diff ids, checked: as many as the manifest has layers, each a digest."""
        config_bytes = self.blobs.read_verified(config_digest)
        if len(config_bytes) > _MAX_MANIFEST:
            raise InvalidArgument(f"image config is larger than {_MAX_MANIFEST} bytes")
        config = _json_object(config_bytes, "image config")
        rootfs = config.get("rootfs")
        diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
        if not isinstance(diff_ids, list) or len(diff_ids) != n_layers:
            raise InvalidArgument(
                f"the image config lists {len(diff_ids) if isinstance(diff_ids, list) else 'no'} "
                f"layer diff ids for {n_layers} layers"
            )
        return [check_digest(d) for d in diff_ids]

    # ---------------------------------------------------------------------- export and commit

    def export(self, ref: str) -> ExportedImage:
        """For push and save: the manifest bytes (verified), media type and digest, the config
        and layer descriptors (layers as stored), and ``blob_path(digest)``. NotFound for an
        unknown image, CorruptBlob if the stored manifest does not match its digest."""
        rec = self.resolve(ref).record
        raw = self.blobs.read_verified(rec.digest)
        manifest = _json_object(raw, "manifest")
        return ExportedImage(
            record=rec,
            manifest_bytes=raw,
            media_type=str(manifest.get("mediaType") or rec.manifest.get("mediaType") or MEDIA_MANIFEST),
            digest=rec.digest,
            config=dict(manifest["config"]),
            layers=[dict(d) for d in manifest.get("layers", [])],
            blob_path=self.blobs.path,
            repo_tags=list(rec.names),
        )

    async def commit_image(
        self,
        base: ImageRecord | None,
        layer_tars: list[str],
        config: dict[str, Any],
        name: str | None,
        history: list[dict[str, Any]] | None = None,
    ) -> ImageRecord:
        """For build: put ``layer_tars`` (uncompressed tar files, absolute paths; stored as they
        are, plain ``tar`` media type, so diff id == blob digest) on top of ``base``'s layers,
        with ``config`` as the image config's ``config`` object (Cmd, Entrypoint, Env,
        WorkingDir, User, ExposedPorts, Labels, StopSignal, ...), write config + OCI manifest,
        unpack the new layers into snapshots, record the image and tag ``name`` if given.
        ``history`` entries are appended to the base's (default: one per new layer)."""
        target = imageref.parse(name) if name is not None else None
        if target is not None and target.digest:
            raise InvalidArgument("cannot tag a new image with a digest", field="name")
        if not isinstance(config, dict):
            raise InvalidArgument("config must be an object", field="config")
        with self.leases.hold() as lease:
            new_layers: list[dict[str, Any]] = []
            new_diffs: list[str] = []
            for path in layer_tars:
                if not os.path.isabs(path):
                    raise InvalidArgument(f"layer tar path must be absolute: {path!r}", field="layer_tars")
                try:
                    digest, size, diff_id, gzipped = await anyio.to_thread.run_sync(self._store_layer, path)
                except FileNotFoundError as exc:
                    raise NotFound(f"no such file: {path}", field="layer_tars") from exc
                lease.add(digest)
                new_layers.append(
                    {
                        "mediaType": MEDIA_LAYER_GZIP if gzipped else MEDIA_LAYER_TAR,
                        "digest": digest,
                        "size": size,
                    }
                )
                new_diffs.append(diff_id)
            created = now_rfc3339()
            base_cfg = base.config if base is not None else {}
            base_layers = list(base.manifest.get("layers", [])) if base is not None else []
            diff_ids = list(base_cfg.get("rootfs", {}).get("diff_ids", [])) + new_diffs
            layers = base_layers + new_layers
            for chain in chain_ids(diff_ids):
                lease.add(chain)
            hist = list(base_cfg.get("history", []))
            hist += (
                history
                if history is not None
                else [{"created": created, "created_by": "tug build"}] * len(new_layers)
            )
            image_config = {
                "created": created,
                "architecture": base_cfg.get("architecture") or _arch(),
                "os": base_cfg.get("os") or "linux",
                "config": config,
                "rootfs": {"type": "layers", "diff_ids": diff_ids},
                "history": hist,
            }
            if base_cfg.get("variant"):
                image_config["variant"] = base_cfg["variant"]
            await self._unpack_all(layers, diff_ids)
            return await self._record(image_config, layers, target.tag_name() if target else None, lease)

    async def _record(
        self, config: dict[str, Any], layers: list[dict[str, Any]], name: str | None, lease: _Lease
    ) -> ImageRecord:
        config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
        config_digest = self.blobs.put_bytes(config_bytes)
        lease.add(config_digest)
        manifest = {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": {"mediaType": MEDIA_CONFIG, "digest": config_digest, "size": len(config_bytes)},
            "layers": layers,
        }
        manifest_bytes = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
        manifest_digest = self.blobs.put_bytes(manifest_bytes)
        lease.add(manifest_digest)
        rec = ImageRecord(
            id=config_digest,
            digest=manifest_digest,
            manifest=manifest,
            config=config,
            size=sum(int(d["size"]) for d in layers),
            created=str(config["created"]),
        )
        previous: str | None = None
        with self.store.transaction():
            self.store.put_image(rec)
            if name is not None:
                previous = self.store.set_name(name, rec.id)
        if previous and previous != rec.id:
            self._gc_image(previous)
        rec.names = self.store.image_names(rec.id)
        return self._with_digests(rec)

    # ------------------------------------------------------------------------------- import

    async def import_rootfs(self, path: str, ref: str, overrides: dict[str, Any]) -> ImageRecord:
        if not os.path.isabs(path):
            raise InvalidArgument(f"the path to import must be absolute: {path!r}", field="path")
        target = imageref.parse(ref)
        if target.digest:
            raise InvalidArgument("cannot import under a digest reference", field="ref")
        container_config = _image_config_overrides(overrides)
        with self.leases.hold() as lease:
            try:
                layer_digest, size, diff_id, gzipped = await anyio.to_thread.run_sync(self._store_layer, path)
            except FileNotFoundError as exc:
                raise NotFound(f"no such file: {path}", field="path") from exc
            except IsADirectoryError as exc:
                raise InvalidArgument(f"{path} is a directory, not a tar archive", field="path") from exc
            lease.add(layer_digest)
            lease.add(diff_id)
            created = now_rfc3339()
            layer = {
                "mediaType": MEDIA_LAYER_GZIP if gzipped else MEDIA_LAYER_TAR,
                "digest": layer_digest,
                "size": size,
            }
            await self._unpack_all([layer], [diff_id])
            config = {
                "created": created,
                "architecture": _arch(),
                "os": "linux",
                "config": container_config,
                "rootfs": {"type": "layers", "diff_ids": [diff_id]},
                "history": [{"created": created, "created_by": f"tug import {os.path.basename(path)}"}],
            }
            return await self._record(config, [layer], target.tag_name(), lease)

    def _store_layer(self, path: str) -> tuple[str, int, str, bool]:
        """Copy the tar into the store; returns (blob digest, size, diff id, gzipped)."""
        with open(path, "rb") as f:
            gzipped = f.read(2) == b"\x1f\x8b"
            f.seek(0)
            digest, size = self.blobs.put_stream(f)
        if not gzipped:
            return digest, size, digest, False
        diff = hashlib.sha256()
        with open(self.blobs.path(digest), "rb") as raw:
            src = gzip.GzipFile(fileobj=raw)
            try:
                while chunk := src.read(_CHUNK):
                    diff.update(chunk)
            except (OSError, EOFError) as exc:
                self.blobs.delete(digest)
                raise InvalidArgument(f"{path}: not a valid gzip stream: {exc}", field="path") from exc
        return digest, size, "sha256:" + diff.hexdigest(), gzipped

    def _unpack_layer(self, layer: dict[str, Any], chain_id: str, diff_id: str, lowers: list[str]) -> None:
        """Unpack a layer blob into its snapshot: into a temp dir, renamed when complete. The
        blob's digest and the uncompressed diff id are checked in the same pass; a mismatch or
        an unsafe entry leaves nothing behind."""
        digest = check_digest(layer["digest"])
        final = os.path.dirname(self._snapshot_fs(chain_id))
        tmp = _tmp_name(self.cfg.snapshots_dir, ".unpack-")
        os.makedirs(os.path.join(tmp, "fs"), mode=0o755)
        try:
            try:
                raw_file = open(self.blobs.path(digest), "rb")  # noqa: SIM115 - closed below
            except FileNotFoundError as exc:
                raise NotFound(f"blob {digest} is missing from the content store") from exc
            with raw_file:
                inflater = _Inflater(raw_file, digest)
                try:
                    unpack_tar(inflater, os.path.join(tmp, "fs"), lowers=lowers)  # type: ignore[arg-type]
                    inflater.drain()
                finally:
                    inflater.close()
            if inflater.raw_digest() != digest:
                raise CorruptBlob(f"blob {digest} is corrupt (its content hashes to {inflater.raw_digest()})")
            if inflater.diff_digest() != diff_id:
                raise CorruptBlob(
                    f"layer {digest} uncompresses to {inflater.diff_digest()}, "
                    f"but the image config says {diff_id}"
                )
            try:
                os.rename(tmp, final)
            except OSError:
                if not os.path.isdir(final):
                    raise
                fsutil.remove_tree(tmp)  # unpacked meanwhile by another daemon instance
        except BaseException:
            fsutil.remove_tree(tmp)
            raise

    # ------------------------------------------------------------------------------ removal

    def tag(self, source: str, target: str) -> ImageRecord:
        """Give the image ``source`` names the name ``target`` (``repo[:tag]``)."""
        rec = self.resolve(source).record
        ref = imageref.parse(target)
        tag = ref.tag_name()
        if ref.digest or tag is None:
            raise InvalidArgument(f"cannot tag with a digest: {target!r}", field="target")
        with self.store.transaction():
            previous = self.store.set_name(tag, rec.id)
        if previous and previous != rec.id:
            self._gc_image(previous)
        return self.resolve(rec.id).record

    def remove(self, ref: str, *, force: bool) -> list[str]:
        """Untag ``ref`` (or, given an id, every name of it); the image goes once it has no
        tag left and no container uses it. Refused (FailedPrecondition) while a container uses
        the image, unless ``force``: then it is untagged and goes with its last container."""
        resolved = self.resolve(ref)
        rec = resolved.record
        users = self.store.containers_using_image(rec.id)
        if users and not force:
            raise FailedPrecondition(
                f"image {ref} is in use by container(s) {', '.join(sorted(users))}; "
                "remove them first or use force",
                state="in_use",
            )
        removed: list[str] = []
        by_name = resolved.ref in rec.names
        with self.store.transaction():
            for name in [resolved.ref] if by_name else list(rec.names):
                self.store.remove_name(name)
                removed.append(name)
        if self._gc_image(rec.id):
            removed.append(rec.id)
        return removed

    def _gc_image(self, image_id: str) -> bool:
        """Delete an image that has no tag and no container; returns whether it went."""
        if self.store.image_names(image_id) or self.store.containers_using_image(image_id):
            return False
        if self.store.get_image(image_id) is None:
            return False
        with self.store.transaction():
            self.store.delete_image(image_id)
        self.collect()
        return True

    def gc_unused(self, image_id: str) -> None:
        self._gc_image(image_id)

    def collect(self) -> tuple[int, int]:
        """Free every blob and snapshot that no image references and no ingest in flight holds
        (a lease); with no ingest in flight, also stale temp files of a crash. Returns (blobs,
        snapshots) removed. Synchronous on the event loop: the check and the delete cannot be
        interleaved with an ingest recording its image."""
        used_blobs: set[str] = set()
        used_chains: set[str] = set()
        for rec in self.store.list_images():
            used_blobs.add(rec.digest)
            used_blobs.add(rec.manifest["config"]["digest"])
            used_blobs.update(d["digest"] for d in rec.manifest.get("layers", []))
            used_chains.update(chain_ids(rec.config.get("rootfs", {}).get("diff_ids", [])))
        blobs = 0
        for digest in self.blobs.digests():
            if digest not in used_blobs and digest not in self.leases:
                self.blobs.delete(digest)
                blobs += 1
        snaps = 0
        for entry in os.listdir(self.cfg.snapshots_dir):
            if entry.startswith("."):
                continue
            chain = "sha256:" + entry
            if chain not in used_chains and chain not in self.leases:
                fsutil.remove_tree(os.path.join(self.cfg.snapshots_dir, entry))
                snaps += 1
        if not self.leases.active:
            for d in (self.blobs.dir, self.cfg.snapshots_dir):
                for entry in os.listdir(d):
                    if entry.startswith((".in-", ".unpack-", ".deleting-")):
                        p = os.path.join(d, entry)
                        if os.path.isdir(p) and not os.path.islink(p):
                            shutil.rmtree(p, ignore_errors=True)
                        else:
                            with contextlib.suppress(FileNotFoundError):
                                os.unlink(p)
        return blobs, snaps

    def prune(self, *, all_images: bool = False) -> dict[str, Any]:
        """Remove the images no container uses: those without a tag, or with ``all_images``
        every one; then free unreferenced blobs and snapshots. Returns ``{"untagged": [...],
        "deleted": [image ids], "blobs": n, "snapshots": n, "space_reclaimed": bytes}``."""
        before = self._disk_usage()
        untagged: list[str] = []
        deleted: list[str] = []
        for rec in self.store.list_images():
            if self.store.containers_using_image(rec.id) or (rec.names and not all_images):
                continue
            with self.store.transaction():
                for n in rec.names:
                    self.store.remove_name(n)
                self.store.delete_image(rec.id)
            untagged += rec.names
            deleted.append(rec.id)
        blobs, snaps = self.collect()
        return {
            "untagged": untagged,
            "deleted": deleted,
            "blobs": blobs,
            "snapshots": snaps,
            "space_reclaimed": max(0, before - self._disk_usage()),
        }

    def _disk_usage(self) -> int:
        total = 0
        for d in (self.blobs.dir, self.cfg.snapshots_dir):
            for dirpath, dirnames, filenames in os.walk(d):
                for n in filenames + [x for x in dirnames if os.path.islink(os.path.join(dirpath, x))]:
                    with contextlib.suppress(OSError):
                        total += os.lstat(os.path.join(dirpath, n)).st_blocks * 512
        return total

    def parts(self, rec: ImageRecord) -> tuple[dict[str, str], dict[str, str]]:
        """What an image holds on disk: ``({blob digest: file}, {chain id: snapshot dir})``;
        images share the blobs and snapshots of their common layers."""
        digests = [rec.digest, rec.manifest["config"]["digest"]]
        digests += [layer["digest"] for layer in rec.manifest.get("layers", [])]
        chains = chain_ids(rec.config.get("rootfs", {}).get("diff_ids", []))
        return (
            {d: self.blobs.path(d) for d in digests},
            {c: os.path.dirname(self._snapshot_fs(c)) for c in chains},
        )

    def describe(self, rec: ImageRecord, *, full: bool = False) -> dict[str, Any]:
        """An image as ``tug images`` and ``tug image inspect`` show it."""
        platform = "/".join(
            str(x)
            for x in (rec.config.get("os"), rec.config.get("architecture"), rec.config.get("variant"))
            if x
        )
        out: dict[str, Any] = {
            "id": rec.id,
            "repo_tags": rec.names,
            "repo_digests": self.store.repo_digests(rec.id),
            "digest": rec.digest,
            "size": rec.size,
            "created": rec.created,
            "platform": platform,
            # The image config's own ``config`` (Entrypoint, Cmd, Env, ...), in the list too: the
            # issue asks `tug images --format json` for it as well as `image inspect`.
            "config": rec.config.get("config", {}),
        }
        if full:
            out["layers"] = [layer["digest"] for layer in rec.manifest.get("layers", [])]
            out["diff_ids"] = list(rec.config.get("rootfs", {}).get("diff_ids", []))
            out["media_type"] = rec.manifest.get("mediaType", MEDIA_MANIFEST)
            out["os"] = rec.config.get("os")
            out["architecture"] = rec.config.get("architecture")
            out["author"] = rec.config.get("author", "")
            out["history"] = rec.config.get("history", [])
            out["containers"] = sorted(self.store.containers_using_image(rec.id))
        return out


class _Inflater:
    """A layer blob as the tar parser reads it: read, hashed (the blob digest), gunzipped if it
    is gzip (zlib directly, 1 MiB at a time) and hashed again (the diff id), in one pass.
    Multi-member gzip and zero padding after the last member are read as gzip.GzipFile reads
    them. (Inflating in a thread of its own ahead of the parser was tried and measured slower
    on this 2-core host under load: docs/benchmarks.md.)"""

    def __init__(self, src: IO[bytes], digest: str) -> None:
        self._src = src
        self._digest = digest
        self._raw = hashlib.sha256()
        self._diff = hashlib.sha256()
        self._chunks = self._inflate()
        self._buf = b""
        self._pos = 0
        self._eof = False

    def _inflate(self) -> Generator[bytes, None, None]:
        chunk = self._src.read(_CHUNK)
        inflate = zlib.decompressobj(wbits=31) if chunk[:2] == b"\x1f\x8b" else None
        try:
            while chunk:
                self._raw.update(chunk)
                if inflate is None:
                    out = chunk
                else:
                    out = inflate.decompress(chunk)
                    while inflate.eof:
                        rest = inflate.unused_data.lstrip(b"\0")
                        if not rest:
                            break
                        inflate = zlib.decompressobj(wbits=31)  # the next gzip member
                        out += inflate.decompress(rest)
                if out:
                    self._diff.update(out)
                    yield out
                chunk = self._src.read(_CHUNK)
        except zlib.error as exc:
            raise CorruptBlob(f"layer {self._digest} is not a valid gzip stream: {exc}") from exc
        if inflate is not None and not inflate.eof:
            raise CorruptBlob(f"layer {self._digest} is a truncated gzip stream")

    def read(self, n: int = -1) -> bytes:
        parts: list[bytes] = []
        want = n
        while want != 0:
            if self._pos >= len(self._buf):
                if self._eof:
                    break
                item = next(self._chunks, None)
                if item is None:
                    self._eof = True
                    break
                self._buf, self._pos = item, 0
            end = len(self._buf) if want < 0 else min(len(self._buf), self._pos + want)
            parts.append(self._buf[self._pos : end])
            if want > 0:
                want -= end - self._pos
            self._pos = end
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass

    def close(self) -> None:
        self._chunks.close()

    def raw_digest(self) -> str:
        return "sha256:" + self._raw.hexdigest()

    def diff_digest(self) -> str:
        return "sha256:" + self._diff.hexdigest()


def _arch() -> str:
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def _image_config_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("Cmd", "Entrypoint", "Env"):
        if key in overrides:
            value = overrides[key]
            if value is not None and (
                not isinstance(value, list) or not all(isinstance(v, str) for v in value)
            ):
                raise InvalidArgument(f"config.{key} must be a list of strings", field=key)
            out[key] = value
    for key in ("WorkingDir", "User", "StopSignal"):
        if key in overrides:
            if not isinstance(overrides[key], str):
                raise InvalidArgument(f"config.{key} must be a string", field=key)
            out[key] = overrides[key]
    if "Healthcheck" in overrides:
        check = overrides["Healthcheck"]
        test = check.get("Test") if isinstance(check, dict) else None
        if not isinstance(test, list) or not all(isinstance(v, str) for v in test):
            raise InvalidArgument("config.Healthcheck.Test must be a list of strings", field="Healthcheck")
        out["Healthcheck"] = check
    out.setdefault("Env", ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"])
    return out


# ---------------------------------------------------------------------------------- unpacking


class UnsafeLayer(InvalidArgument):
    pass


def _safe_relpath(name: str) -> str:
    """The member's path relative to the root, or UnsafeLayer for one that would escape it."""
    if name.startswith("/"):
        raise UnsafeLayer(f"layer entry {name!r} has an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise UnsafeLayer(f"layer entry {name!r} escapes the root with '..'")
    return "/".join(parts)


def _check_parents(root: str, rel: str) -> None:
    """No directory on the way to an entry may be a symlink: writing through one could land
    outside the root."""
    path = root
    for part in rel.split("/")[:-1]:
        path = os.path.join(path, part)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            os.mkdir(path, 0o755)
            continue
        if stat.S_ISLNK(st.st_mode):
            raise UnsafeLayer(f"layer entry {rel!r} goes through the symlink {path[len(root) :]!r}")
        if not stat.S_ISDIR(st.st_mode):
            raise UnsafeLayer(f"layer entry {rel!r} goes through a non-directory")


def _find_in_lowers(lowers: list[str], rel: str) -> str | None:
    """The regular file ``rel`` as the layers below show it (top first), without following a
    symlink on the way; None if it is absent, whited out or not a regular file."""
    parts = rel.split("/")
    for lower in lowers:
        path = lower
        for i, part in enumerate(parts):
            path = os.path.join(path, part)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                break
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                return None  # a whiteout: gone from this layer down
            last = i == len(parts) - 1
            if last:
                return path if stat.S_ISREG(st.st_mode) else None
            if not stat.S_ISDIR(st.st_mode):
                return None
            with contextlib.suppress(OSError):
                if os.getxattr(path, "trusted.overlay.opaque") == b"y":
                    # below an opaque directory nothing of the lower layers shows
                    rest = os.path.join(path, *parts[i + 1 :])
                    return rest if os.path.isfile(rest) and not os.path.islink(rest) else None
    return None


def _set_xattrs(path: str, member: tarfile.TarInfo) -> None:
    for key, value in member.pax_headers.items():
        if key.startswith("SCHILY.xattr."):
            name = key[len("SCHILY.xattr.") :]
            if name.startswith("trusted.overlay."):
                continue  # only the unpacker sets overlay's own attributes
            try:
                os.setxattr(path, name, value.encode("utf-8", "surrogateescape"), follow_symlinks=False)
            except OSError as exc:
                log.debug("could not set xattr %s on %s: %s", name, path, exc)


def unpack_tar(
    src: IO[bytes],
    root: str,
    *,
    lowers: list[str] | None = None,
    max_bytes: int = MAX_LAYER_BYTES,
    max_entries: int = MAX_LAYER_ENTRIES,
) -> None:
    """Extract an uncompressed (or gzipped) layer tar under ``root``, the layer's own snapshot
    dir, refusing any entry that would write outside it. Whiteouts become what overlayfs reads
    in a lower dir: ``.wh.NAME`` a 0/0 character device, ``.wh..wh..opq`` the
    ``trusted.overlay.opaque=y`` attribute of its directory. A hard link to a file of a layer
    below (``lowers``, top first) gets a copy of it. Device nodes are skipped; ownership, modes
    (setuid and setgid bits too, as docker), times and extended attributes are kept. A layer of
    more than ``max_entries`` entries or ``max_bytes`` bytes of files is refused (a tar bomb)."""
    dirs: list[tuple[str, tarfile.TarInfo]] = []
    lowers = lowers or []
    entries = total = 0
    try:
        tf = tarfile.open(fileobj=src, mode="r|*")  # noqa: SIM115 - the with below closes it
    except tarfile.TarError as exc:
        raise InvalidArgument(f"not a tar archive: {exc}") from exc
    with tf:
        try:
            for member in tf:
                entries += 1
                total += member.size if member.isreg() else 0
                if entries > max_entries or total > max_bytes:
                    what = f"{max_entries} entries" if entries > max_entries else f"{max_bytes} bytes"
                    raise UnsafeLayer(f"layer unpacks to more than {what} (a tar bomb?)")
                rel = _safe_relpath(member.name)
                if not rel:
                    dirs.append((root, member))
                    continue
                _check_parents(root, rel)
                path = os.path.join(root, rel)
                base = os.path.basename(rel)
                if base.startswith(_WHITEOUT):
                    parent = os.path.dirname(path)
                    if base == _OPAQUE:
                        os.setxattr(parent, "trusted.overlay.opaque", b"y")
                    elif not base.startswith(_WHITEOUT + _WHITEOUT):  # .wh..wh.plnk etc: aufs only
                        hidden = os.path.join(parent, base[len(_WHITEOUT) :])
                        if base[len(_WHITEOUT) :] in ("", ".", ".."):
                            raise UnsafeLayer(f"layer entry {rel!r} is a whiteout of nothing")
                        fsutil.remove_path(hidden)
                        os.mknod(hidden, 0o600 | stat.S_IFCHR, os.makedev(0, 0))
                    continue
                if member.isdir():
                    if not os.path.isdir(path) or os.path.islink(path):
                        fsutil.remove_path(path)
                        os.mkdir(path, 0o755)
                    dirs.append((path, member))
                    continue
                fsutil.remove_path(path)
                if member.isreg():
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                    with os.fdopen(fd, "wb") as out:
                        data = tf.extractfile(member)
                        assert data is not None
                        while chunk := data.read(_CHUNK):
                            out.write(chunk)
                        os.fchown(out.fileno(), member.uid, member.gid)
                        os.fchmod(out.fileno(), member.mode & 0o7777)
                elif member.issym():
                    os.symlink(member.linkname, path)
                    os.lchown(path, member.uid, member.gid)
                elif member.islnk():
                    target = _safe_relpath(member.linkname)
                    if not target:
                        raise UnsafeLayer(f"hard link {rel!r} points to the root")
                    _check_parents(root, target)
                    target_path = os.path.join(root, target)
                    if os.path.lexists(target_path):
                        if os.path.islink(target_path) or not os.path.isfile(target_path):
                            raise UnsafeLayer(
                                f"hard link {rel!r} points to {member.linkname!r}, "
                                "which is not a regular file"
                            )
                        os.link(target_path, path, follow_symlinks=False)
                        continue
                    below = _find_in_lowers(lowers, target)
                    if below is None:
                        raise UnsafeLayer(
                            f"hard link {rel!r} points to {member.linkname!r}, "
                            "which is not a file of this image"
                        )
                    # overlayfs cannot link across layers: the link gets its own copy
                    shutil.copy2(below, path, follow_symlinks=False)
                    st = os.lstat(below)
                    os.lchown(path, st.st_uid, st.st_gid)
                    os.chmod(path, stat.S_IMODE(st.st_mode))
                    continue
                elif member.isfifo():
                    os.mkfifo(path, member.mode & 0o777)
                else:
                    continue  # devices and anything else: not created from an image
                _set_xattrs(path, member)
                os.utime(path, ns=(int(member.mtime * 10**9),) * 2, follow_symlinks=False)
        except tarfile.TarError as exc:
            raise InvalidArgument(f"bad layer archive: {exc}") from exc
    for path, member in reversed(dirs):
        os.chown(path, member.uid, member.gid)
        os.chmod(path, member.mode & 0o7777)
        _set_xattrs(path, member)
        os.utime(path, ns=(int(member.mtime * 10**9),) * 2)


__all__ = [
    "BlobWriter",
    "ContentStore",
    "CorruptBlob",
    "ExportedImage",
    "ImageSource",
    "Images",
    "UnsafeLayer",
]
