"""The daemon as a whole: its versions and figures (``info``), disk usage (``df``) and clean-up
(``prune``) of the data root.

Sizes are apparent sizes (``st_size``, as docker reports them), hard links counted once, symbolic
links not followed, mount points not crossed (a container's ``rootfs`` is its overlay mount and is
never walked: its writable part is ``upper``). Walking the trees runs in a worker thread: a root
with many containers holds many files.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import stat
import subprocess
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio

from tugwire.errors import TugError

from . import spec
from .config import Config
from .containers import ACTIVE, CREATED, EXITED, Containers
from .events import EventBus, image_removal_events
from .images import Images
from .store import ContainerRecord, ImageRecord, Store

if TYPE_CHECKING:
    from .usage import DiskUsage, SystemPruneReport, Usage

log = logging.getLogger("tugboat.system")

LOG_PREFIX = "container.log"  # the CRI log and its rotations, container.log.1, ...
VERSION = "0.1.0"


def cgroup_version() -> str:
    """``2``, ``1 (hybrid)`` or ``1``: the cgroup hierarchy of this host."""
    if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        return "2"
    if os.path.isdir("/sys/fs/cgroup/unified"):
        return "1 (hybrid)"
    return "1"


def runtime_version(path: str) -> str:
    """The first line of ``<runtime> --version``, or ``unknown``."""
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.splitlines()[0] if out else "unknown"


@dataclass(frozen=True)
class SystemInfo:
    """Versions, roots, runtime, cgroup version and counts (``tug info``)."""

    version: str
    python: str
    backend: str
    root: str
    state: str
    socket: str
    runtime: str
    runtime_version: str
    cgroup_version: str
    shim_birth: str
    containers: dict[str, int]
    images: int
    store: dict[str, Any]  # the store's health (store_health; issue 19)
    pid: int
    registry_mirrors: list[str] = field(default_factory=list)  # of docker.io, in order
    # other registries' mirrors (--registry-mirror REGISTRY=URL): registry -> URLs in order
    registry_mirror_map: dict[str, list[str]] = field(default_factory=dict)
    # what the runtime can do that a client may ask (the CRI's Status features)
    runtime_features: dict[str, bool] = field(default_factory=dict)


def mirror_map(pairs: tuple[tuple[str, str], ...]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for registry, url in pairs:
        out.setdefault(registry, []).append(url)
    return out


def store_health(store: Store) -> dict[str, Any]:
    """The store's health for ``system.info``: the start-up check's result (``ok``, or what
    ``PRAGMA quick_check`` found), the file's size, and how many records on disk
    (supervisor/ondisk.py) are behind the database (a full disk; written again later)."""
    try:
        size = os.path.getsize(store.path)
    except OSError:
        size = 0
    behind = store.mirror.behind() if store.mirror is not None else 0
    status = store.check_result
    if status == "ok" and behind:
        status = "degraded"
    return {
        "path": store.path,
        "status": status,
        "check": store.check_result,
        "check_ms": round(store.check_ms, 1),
        "size_bytes": size,
        "records_behind": behind,
        "records_error": store.mirror.last_error if store.mirror is not None else "",
        "rebuilt": store.rebuilt,
        "rebuilt_from": store.rebuilt_from,
    }


def du(path: str) -> int:
    """Bytes under ``path`` (apparent sizes; hard links once; no symlinks followed; one file
    system). 0 if it does not exist; files that vanish meanwhile are skipped."""
    try:
        top = os.lstat(path)
    except FileNotFoundError:
        return 0
    if not stat.S_ISDIR(top.st_mode):
        return top.st_size
    seen: set[tuple[int, int]] = set()
    total = 0
    stack = [path]
    while stack:
        directory = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(st.st_mode):
                if st.st_dev == top.st_dev:
                    stack.append(entry.path)
                continue
            if st.st_nlink > 1:
                key = (st.st_dev, st.st_ino)
                if key in seen:
                    continue
                seen.add(key)
            total += st.st_size
    return total


def _measure_container(directory: str) -> tuple[int, int]:
    """(bytes of the writable layer, bytes of the logs) of one container's directory. As docker,
    a container's size is its writable layer (``upper``; ``rootfs`` is the overlay mount of it
    over the image, never walked)."""
    logs = 0
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return 0, 0
    for entry in entries:
        if entry.name.startswith(LOG_PREFIX):
            logs += du(entry.path)
    return du(os.path.join(directory, "upper")), logs


class System:
    """``info``, ``df`` and ``prune``."""

    def __init__(
        self, cfg: Config, store: Store, containers: Containers, images: Images, bus: EventBus
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.containers = containers
        self.images = images
        self.bus = bus
        self._runtime_version = runtime_version(cfg.runtime)

    def info(self) -> SystemInfo:
        """Versions, roots, runtime, cgroup version and counts."""
        return SystemInfo(
            version=VERSION,
            python=platform.python_version(),
            backend=self.cfg.backend,
            root=self.cfg.root,
            state=self.cfg.state,
            socket=self.cfg.socket,
            runtime=self.cfg.runtime,
            runtime_version=self._runtime_version,
            cgroup_version=cgroup_version(),
            shim_birth=self.cfg.shim_birth,
            containers=self.containers.counts(),
            images=self.images.store.image_count(),
            store=store_health(self.store),
            pid=os.getpid(),
            registry_mirrors=list(self.cfg.registry_mirrors),
            registry_mirror_map=mirror_map(self.cfg.registry_mirror_map),
            runtime_features={"recursive_read_only_mounts": spec.recursive_readonly(self.cfg.runtime)},
        )

    async def _measure(self, images: list[ImageRecord], containers: list[ContainerRecord]) -> Usage:
        blob_paths: dict[str, str] = {}
        snapshot_dirs: dict[str, str] = {}
        for rec in images:
            blobs, snapshots = self.images.parts(rec)
            blob_paths.update(blobs)
            snapshot_dirs.update(snapshots)
        container_dirs = {rec.id: self.cfg.container_dir(rec.id) for rec in containers}

        from .usage import Usage

        def walk() -> Usage:
            usage = Usage()
            usage.blobs = {d: du(p) for d, p in blob_paths.items()}
            usage.snapshots = {c: du(p) for c, p in snapshot_dirs.items()}
            for cid, directory in container_dirs.items():
                usage.writable[cid], usage.logs[cid] = _measure_container(directory)
            return usage

        return await anyio.to_thread.run_sync(walk)

    def _image_size(self, rec: ImageRecord, usage: Usage) -> tuple[int, set[str], set[str]]:
        blobs, snapshots = self.images.parts(rec)
        size = sum(usage.blobs.get(d, 0) for d in blobs) + sum(usage.snapshots.get(c, 0) for c in snapshots)
        return size, set(blobs), set(snapshots)

    async def df(self) -> DiskUsage:
        """Space used by images, containers (writable layers) and logs, and how much of it a
        prune could reclaim (images no container uses; containers not running, and their logs)."""
        from .usage import (
            ContainersUsage,
            ContainerUsage,
            DiskUsage,
            ImagesUsage,
            ImageUsage,
            StoreUsage,
            UsageGroup,
        )

        images = self.store.list_images()
        containers = self.store.list_containers()
        usage = await self._measure(images, containers)
        users: dict[str, int] = {}
        for c in containers:
            users[c.image_id] = users.get(c.image_id, 0) + 1
        refs: dict[tuple[str, str], int] = {}  # how many images hold each piece (blob or snapshot)
        parts: dict[str, tuple[int, set[tuple[str, str]]]] = {}
        for rec in images:
            size, blobs, snapshots = self._image_size(rec, usage)
            pieces = {("b", d) for d in blobs} | {("s", c) for c in snapshots}
            parts[rec.id] = (size, pieces)
            for piece in pieces:
                refs[piece] = refs.get(piece, 0) + 1

        def piece_size(piece: tuple[str, str]) -> int:
            kind, key = piece
            return usage.blobs.get(key, 0) if kind == "b" else usage.snapshots.get(key, 0)

        all_pieces = {p for _, pieces in parts.values() for p in pieces}
        used_pieces = {p for image_id, (_, pieces) in parts.items() if users.get(image_id) for p in pieces}
        image_items = []
        for rec in images:
            size, pieces = parts[rec.id]
            shared = sum(piece_size(p) for p in pieces if refs[p] > 1)
            image_items.append(ImageUsage(rec.id, rec.names, size, shared, users.get(rec.id, 0)))
        container_items = [
            ContainerUsage(
                c.id, c.name, c.image, c.run.state, usage.writable.get(c.id, 0), usage.logs.get(c.id, 0)
            )
            for c in containers
        ]
        inactive = [c for c in containers if c.run.state not in ACTIVE]
        db_size = 0
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                db_size += os.stat(self.cfg.db_path + suffix).st_size
        return DiskUsage(
            images=ImagesUsage(
                count=len(images),
                active=sum(1 for rec in images if users.get(rec.id)),
                size=sum(piece_size(p) for p in all_pieces),
                reclaimable=sum(piece_size(p) for p in all_pieces - used_pieces),
                items=image_items,
            ),
            containers=ContainersUsage(
                count=len(containers),
                active=len(containers) - len(inactive),
                size=sum(usage.writable.values()),
                reclaimable=sum(usage.writable.get(c.id, 0) for c in inactive),
                items=container_items,
            ),
            logs=UsageGroup(
                count=len(containers),
                active=len(containers) - len(inactive),
                size=sum(usage.logs.values()),
                reclaimable=sum(usage.logs.get(c.id, 0) for c in inactive),
            ),
            store=StoreUsage(size=db_size, events=self.store.count_events()),
        )

    async def prune(self, *, all_images: bool = False) -> SystemPruneReport:
        """Remove every container that is not running (created or exited; one in state
        ``unknown`` is left for a look), then the images no container uses: those without a
        name, or with ``all_images`` every one. Returns what went and the bytes reclaimed."""
        from .usage import SystemPruneReport

        images_before = self.store.list_images()
        containers = self.store.list_containers()
        usage = await self._measure(images_before, containers)
        removed_containers: list[str] = []
        reclaimed = 0
        for rec in containers:
            if rec.run.state not in (CREATED, EXITED):
                continue
            try:
                await self.containers.delete(rec.id, force=False)
            except TugError as exc:  # started or removed meanwhile
                log.info("prune: kept container %s: %s", rec.name, exc.message)
                continue
            removed_containers.append(rec.id)
            reclaimed += usage.writable.get(rec.id, 0) + usage.logs.get(rec.id, 0)
        untagged: list[str] = []
        for img in self.store.list_images():
            if self.store.containers_using_image(img.id) or (img.names and not all_images):
                continue
            try:
                removed = self.images.remove(img.id, force=False)
            except TugError as exc:  # in use by a container created meanwhile
                log.info("prune: kept image %s: %s", img.id, exc.message)
                continue
            untagged += [item for item in removed if item != img.id]
            for event in image_removal_events(img.id, [item for item in removed if item != img.id]):
                self.bus.publish(event)
        # Images also go when their last container does (a force-removed name): count them all.
        remaining = self.store.list_images()
        left_ids = {img.id for img in remaining}
        left_blobs: set[str] = set()
        left_snapshots: set[str] = set()
        for img in remaining:
            blobs, snapshots = self.images.parts(img)
            left_blobs.update(blobs)
            left_snapshots.update(snapshots)
        deleted_images = []
        gone_blobs: set[str] = set()
        gone_snapshots: set[str] = set()
        for img in images_before:
            if img.id in left_ids:
                continue
            deleted_images.append(img.id)
            self.bus.publish(image_removal_events(img.id, [img.id])[0])
            blobs, snapshots = self.images.parts(img)
            gone_blobs.update(set(blobs) - left_blobs)
            gone_snapshots.update(set(snapshots) - left_snapshots)
        reclaimed += sum(usage.blobs.get(d, 0) for d in gone_blobs)
        reclaimed += sum(usage.snapshots.get(c, 0) for c in gone_snapshots)
        return SystemPruneReport(
            containers_deleted=removed_containers,
            images_untagged=untagged,
            images_deleted=deleted_images,
            space_reclaimed=reclaimed,
        )
