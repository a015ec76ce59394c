"""The Images service: lookups by name, digest or id; ingest from any image source; export for
push and save; commit (build) and import; tag, remove, prune and garbage collection.

An image is a manifest + config in the content store and a row in the metadata store; each layer
is unpacked once into ``snapshots/<chain id>/fs``, shared by every image and container using it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from typing import Any

import anyio

from tugwire import fsutil, imageref
from tugwire.errors import FailedPrecondition, InvalidArgument, NotFound, TugError
from tugwire.timefmt import rfc3339

from ..config import Config
from ..failpoints import failpoint
from ..store import ImageRecord, Store
from .content import (
    CHUNK,
    ContentStore,
    CorruptBlob,
    Lease,
    Leases,
    check_digest,
    sha256_digest,
    tmp_name,
)
from .manifests import (
    INDEX_TYPES,
    MANIFEST_TYPES,
    MAX_MANIFEST,
    MEDIA_CONFIG,
    MEDIA_LAYER_GZIP,
    MEDIA_LAYER_TAR,
    MEDIA_LAYER_ZSTD,
    MEDIA_MANIFEST,
    ExportedImage,
    ImageSource,
    ResolvedImage,
    chain_ids,
    choose_manifest,
    descriptor,
    host_arch,
    image_config_overrides,
    json_object,
    manifest_media_type,
)


class Images:
    def __init__(self, cfg: Config, store: Store) -> None:
        self.cfg = cfg
        self.store = store
        self.blobs = ContentStore(cfg.blobs_dir)
        os.makedirs(cfg.snapshots_dir, mode=0o700, exist_ok=True)
        self._lock = anyio.Lock()
        self.leases = Leases()

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
                index = json_object(raw, "image index")
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
            if len(raw) > MAX_MANIFEST:
                raise InvalidArgument(f"manifest {manifest_digest} is larger than {MAX_MANIFEST} bytes")
            manifest = json_object(raw, "manifest")
            manifest.setdefault("mediaType", mt)
            config_desc = descriptor(manifest.get("config"), "config")
            layer_list = manifest.get("layers")
            if not isinstance(layer_list, list):
                raise InvalidArgument("the manifest has no layers list")
            layers = [descriptor(d, f"layer {i}") for i, d in enumerate(layer_list)]
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
            config = json_object(self.blobs.read_verified(config_desc["digest"]), "image config")
            failpoint("image.ingest.after_unpack")
            self.blobs.put_bytes(raw)
            created = config.get("created") if isinstance(config.get("created"), str) else rfc3339()
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
        if len(config_bytes) > MAX_MANIFEST:
            raise InvalidArgument(f"image config is larger than {MAX_MANIFEST} bytes")
        config = json_object(config_bytes, "image config")
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
        manifest = json_object(raw, "manifest")
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
            created = rfc3339()
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
                "architecture": base_cfg.get("architecture") or host_arch(),
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
        self, config: dict[str, Any], layers: list[dict[str, Any]], name: str | None, lease: Lease
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
        container_config = image_config_overrides(overrides)
        with self.leases.hold() as lease:
            try:
                layer_digest, size, diff_id, gzipped = await anyio.to_thread.run_sync(self._store_layer, path)
            except FileNotFoundError as exc:
                raise NotFound(f"no such file: {path}", field="path") from exc
            except IsADirectoryError as exc:
                raise InvalidArgument(f"{path} is a directory, not a tar archive", field="path") from exc
            lease.add(layer_digest)
            lease.add(diff_id)
            created = rfc3339()
            layer = {
                "mediaType": MEDIA_LAYER_GZIP if gzipped else MEDIA_LAYER_TAR,
                "digest": layer_digest,
                "size": size,
            }
            await self._unpack_all([layer], [diff_id])
            config = {
                "created": created,
                "architecture": host_arch(),
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
        import gzip  # gzip, tarfile (.unpack): imported by the first import, pull or load

        with open(self.blobs.path(digest), "rb") as raw:
            src = gzip.GzipFile(fileobj=raw)
            try:
                while chunk := src.read(CHUNK):
                    diff.update(chunk)
            except (OSError, EOFError) as exc:
                self.blobs.delete(digest)
                raise InvalidArgument(f"{path}: not a valid gzip stream: {exc}", field="path") from exc
        return digest, size, "sha256:" + diff.hexdigest(), gzipped

    def _unpack_layer(self, layer: dict[str, Any], chain_id: str, diff_id: str, lowers: list[str]) -> None:
        """Unpack a layer blob into its snapshot: into a temp dir, renamed when complete. The
        blob's digest and the uncompressed diff id are checked in the same pass; a mismatch or
        an unsafe entry leaves nothing behind."""
        from .unpack import Inflater, unpack_tar

        digest = check_digest(layer["digest"])
        final = os.path.dirname(self._snapshot_fs(chain_id))
        tmp = tmp_name(self.cfg.snapshots_dir, ".unpack-")
        os.makedirs(os.path.join(tmp, "fs"), mode=0o755)
        try:
            try:
                raw_file = open(self.blobs.path(digest), "rb")  # noqa: SIM115 - closed below
            except FileNotFoundError as exc:
                raise NotFound(f"blob {digest} is missing from the content store") from exc
            with raw_file:
                inflater = Inflater(raw_file, digest)
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
