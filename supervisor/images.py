"""Images: a content-addressed blob store, OCI manifests and configs, layers unpacked into
snapshots that overlayfs stacks under each container.

Minimal for now (``tug import`` of a rootfs tar as a one-layer OCI image) but laid out for the
full OCI work: blobs are ``blobs/sha256/<hex>`` verified on write and on read, an image is a
manifest + config in the store and a row in the metadata store, and each layer is unpacked once
into ``snapshots/<chain id>/fs``, shared by every image and container that uses it.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import stat
import tarfile
import time
from dataclasses import dataclass
from typing import IO, Any

import anyio

from tugwire import fsutil, names
from tugwire.errors import FailedPrecondition, InvalidArgument, NotFound

from .config import Config
from .store import ImageRecord, Store

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
_CHUNK = 1 << 20


def now_rfc3339() -> str:
    ns = time.time_ns()
    sec, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{frac:09d}Z"


class CorruptBlob(InvalidArgument):
    pass


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

    def put_bytes(self, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if not os.path.exists(self.path(digest)):
            fsutil.write_atomic(self.path(digest), data, mode=0o644)
        return digest

    def put_stream(self, src: IO[bytes]) -> tuple[str, int]:
        """Copy a stream into the store; returns (digest, size)."""
        h = hashlib.sha256()
        tmp = os.path.join(self.dir, f".in-{os.getpid()}-{time.monotonic_ns()}")
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
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise CorruptBlob(f"blob {digest} is corrupt (its content does not match its digest)")
        return data

    def verify_file(self, digest: str) -> None:
        h = hashlib.sha256()
        with open(self.path(digest), "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        if "sha256:" + h.hexdigest() != digest:
            raise CorruptBlob(f"blob {digest} is corrupt (its content does not match its digest)")

    def delete(self, digest: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(digest))


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


class Images:
    def __init__(self, cfg: Config, store: Store) -> None:
        self.cfg = cfg
        self.store = store
        self.blobs = ContentStore(cfg.blobs_dir)
        os.makedirs(cfg.snapshots_dir, mode=0o700, exist_ok=True)
        self._lock = anyio.Lock()

    # ------------------------------------------------------------------------------ lookups

    def resolve(self, ref: str) -> ResolvedImage:
        """By name (``busybox`` means ``busybox:latest``), full id, or a unique id prefix."""
        if not isinstance(ref, str) or not ref:
            raise InvalidArgument("an image reference is required", field="image")
        candidates = [ref, ref if ref.startswith("sha256:") else "sha256:" + ref]
        for image_id in candidates:
            if len(image_id) == 71:
                rec = self.store.get_image(image_id)
                if rec:
                    return ResolvedImage(rec, ref)
        try:
            repo, tag = names.parse_ref(ref)
        except InvalidArgument:
            repo = ""
        if repo:
            named = self.store.resolve_name(f"{repo}:{tag}")
            if named and (rec := self.store.get_image(named)):
                return ResolvedImage(rec, f"{repo}:{tag}")
        hexpart = ref.removeprefix("sha256:")
        if 4 <= len(hexpart) < 64 and all(c in "0123456789abcdef" for c in hexpart):
            ids = self.store.find_images_by_prefix("sha256:" + hexpart)
            if len(ids) == 1 and (rec := self.store.get_image(ids[0])):
                return ResolvedImage(rec, ref)
        raise NotFound(f"no such image: {ref}", field="image")

    def snapshot_dirs(self, image: ImageRecord) -> list[str]:
        """The lower dirs for overlayfs, top layer first."""
        diff_ids = image.config.get("rootfs", {}).get("diff_ids", [])
        return [self._snapshot_fs(c) for c in reversed(chain_ids(diff_ids))]

    def _snapshot_fs(self, chain_id: str) -> str:
        return os.path.join(self.cfg.snapshots_dir, chain_id.removeprefix("sha256:"), "fs")

    async def ensure_unpacked(self, image: ImageRecord) -> list[str]:
        """Unpack any layer whose snapshot is missing (after a crash mid-unpack, say)."""
        diff_ids = image.config.get("rootfs", {}).get("diff_ids", [])
        layers = image.manifest.get("layers", [])
        for chain, layer in zip(chain_ids(diff_ids), layers, strict=True):
            fs = self._snapshot_fs(chain)
            if not os.path.isdir(fs):
                await anyio.to_thread.run_sync(self._unpack_layer, layer, chain)
        return self.snapshot_dirs(image)

    # ------------------------------------------------------------------------------- import

    async def import_rootfs(self, path: str, ref: str, overrides: dict[str, Any]) -> ImageRecord:
        if not os.path.isabs(path):
            raise InvalidArgument(f"the path to import must be absolute: {path!r}", field="path")
        repo, tag = names.parse_ref(ref)
        name = f"{repo}:{tag}"
        container_config = _image_config_overrides(overrides)
        try:
            layer_digest, size, diff_id, gzipped = await anyio.to_thread.run_sync(self._store_layer, path)
        except FileNotFoundError as exc:
            raise NotFound(f"no such file: {path}", field="path") from exc
        except IsADirectoryError as exc:
            raise InvalidArgument(f"{path} is a directory, not a tar archive", field="path") from exc
        created = now_rfc3339()
        layer = {
            "mediaType": MEDIA_LAYER_GZIP if gzipped else MEDIA_LAYER_TAR,
            "digest": layer_digest,
            "size": size,
        }
        async with self._lock:
            chain = chain_ids([diff_id])[0]
            if not os.path.isdir(self._snapshot_fs(chain)):
                await anyio.to_thread.run_sync(self._unpack_layer, layer, chain)
            config = {
                "created": created,
                "architecture": _arch(),
                "os": "linux",
                "config": container_config,
                "rootfs": {"type": "layers", "diff_ids": [diff_id]},
                "history": [{"created": created, "created_by": f"tug import {os.path.basename(path)}"}],
            }
            config_bytes = json.dumps(config, sort_keys=True).encode()
            config_digest = self.blobs.put_bytes(config_bytes)
            manifest = {
                "schemaVersion": 2,
                "mediaType": MEDIA_MANIFEST,
                "config": {"mediaType": MEDIA_CONFIG, "digest": config_digest, "size": len(config_bytes)},
                "layers": [layer],
            }
            manifest_bytes = json.dumps(manifest, sort_keys=True).encode()
            manifest_digest = self.blobs.put_bytes(manifest_bytes)
            rec = ImageRecord(
                id=config_digest,
                digest=manifest_digest,
                manifest=manifest,
                config=config,
                size=size,
                created=created,
            )
            with self.store.transaction():
                self.store.put_image(rec)
                previous = self.store.set_name(name, rec.id)
            if previous and previous != rec.id:
                self._gc_image(previous)
        rec.names = self.store.image_names(rec.id)
        return rec

    def _store_layer(self, path: str) -> tuple[str, int, str, bool]:
        """Copy the tar into the store; returns (blob digest, size, diff id, gzipped)."""
        with open(path, "rb") as f:
            gzipped = f.read(2) == b"\x1f\x8b"
            f.seek(0)
            digest, size = self.blobs.put_stream(f)
        diff = hashlib.sha256()
        with open(self.blobs.path(digest), "rb") as raw:
            src: IO[bytes] = gzip.GzipFile(fileobj=raw) if gzipped else raw  # type: ignore[assignment]
            try:
                while chunk := src.read(_CHUNK):
                    diff.update(chunk)
            except (OSError, EOFError) as exc:
                self.blobs.delete(digest)
                raise InvalidArgument(f"{path}: not a valid gzip stream: {exc}", field="path") from exc
        return digest, size, "sha256:" + diff.hexdigest(), gzipped

    def _unpack_layer(self, layer: dict[str, Any], chain_id: str) -> None:
        """Unpack a layer blob into its snapshot: into a temp dir, renamed when complete."""
        digest = layer["digest"]
        self.blobs.verify_file(digest)
        final = os.path.dirname(self._snapshot_fs(chain_id))
        tmp = os.path.join(self.cfg.snapshots_dir, f".unpack-{chain_id[7:19]}-{os.getpid()}")
        fsutil.remove_tree(tmp)
        os.makedirs(os.path.join(tmp, "fs"), mode=0o755)
        try:
            with open(self.blobs.path(digest), "rb") as f:
                unpack_tar(f, os.path.join(tmp, "fs"))
            os.rename(tmp, final)
        except BaseException:
            fsutil.remove_tree(tmp)
            raise

    # ------------------------------------------------------------------------------ removal

    def remove(self, ref: str, *, force: bool) -> list[str]:
        """Untag ``ref`` (or, given an id, every name of it); the image goes once unused."""
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
        """Delete an image that has no name and no container; returns whether it went."""
        if self.store.image_names(image_id) or self.store.containers_using_image(image_id):
            return False
        rec = self.store.get_image(image_id)
        if rec is None:
            return False
        with self.store.transaction():
            self.store.delete_image(image_id)
        still_used = self.store.all_layer_digests()
        diff_ids = rec.config.get("rootfs", {}).get("diff_ids", [])
        used_chains = {
            c
            for other in self.store.list_images()
            for c in chain_ids(other.config.get("rootfs", {}).get("diff_ids", []))
        }
        for chain in chain_ids(diff_ids):
            if chain not in used_chains:
                fsutil.remove_tree(os.path.dirname(self._snapshot_fs(chain)))
        for desc in [rec.manifest["config"], *rec.manifest.get("layers", [])]:
            if desc["digest"] not in still_used:
                self.blobs.delete(desc["digest"])
        self.blobs.delete(rec.digest)
        return True

    def gc_unused(self, image_id: str) -> None:
        self._gc_image(image_id)

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
        out: dict[str, Any] = {
            "id": rec.id,
            "repo_tags": rec.names,
            "digest": rec.digest,
            "size": rec.size,
            "created": rec.created,
        }
        if full:
            out["config"] = rec.config.get("config", {})
            out["layers"] = [layer["digest"] for layer in rec.manifest.get("layers", [])]
            out["platform"] = {"os": rec.config.get("os"), "architecture": rec.config.get("architecture")}
        return out


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


def unpack_tar(src: IO[bytes], root: str) -> None:
    """Extract a (possibly gzipped) layer tar under ``root``, refusing any entry that would write
    outside it. Device nodes are skipped; ownership, modes and times are kept."""
    dirs: list[tuple[str, tarfile.TarInfo]] = []
    try:
        tf = tarfile.open(fileobj=src, mode="r|*")  # noqa: SIM115 - the with below closes it
    except tarfile.TarError as exc:
        raise InvalidArgument(f"not a tar archive: {exc}") from exc
    with tf:
        try:
            for member in tf:
                rel = _safe_relpath(member.name)
                if not rel:
                    continue
                _check_parents(root, rel)
                path = os.path.join(root, rel)
                if member.isdir():
                    if not os.path.isdir(path) or os.path.islink(path):
                        _remove(path)
                        os.mkdir(path, 0o755)
                    dirs.append((path, member))
                    continue
                _remove(path)
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
                    _check_parents(root, target)
                    target_path = os.path.join(root, target)
                    if os.path.islink(target_path) or not os.path.lexists(target_path):
                        raise UnsafeLayer(
                            f"hard link {rel!r} points to {member.linkname!r}, "
                            "which is not a file in this layer"
                        )
                    os.link(target_path, path, follow_symlinks=False)
                    continue
                elif member.isfifo():
                    os.mkfifo(path, member.mode & 0o777)
                else:
                    continue  # devices and anything else: not created from an image
                os.utime(path, ns=(int(member.mtime * 10**9),) * 2, follow_symlinks=False)
        except tarfile.TarError as exc:
            raise InvalidArgument(f"bad layer archive: {exc}") from exc
    for path, member in reversed(dirs):
        os.chown(path, member.uid, member.gid)
        os.chmod(path, member.mode & 0o7777)
        os.utime(path, ns=(int(member.mtime * 10**9),) * 2)


def _remove(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        fsutil.remove_tree(path)
    else:
        os.unlink(path)
