"""A task: one container's processes under its shim, on its bundle. The one lifecycle below the
containers service (supervisor/containers/) and a build's RUN step (supervisor/build/runner.py):
the bundle's layout and writing, the root filesystem's mount, the shim's config, the launch, the
wait for the exit, the release (the shim's ``runc delete``, the unmount) and the cleanup of an
orphan. The service adds on top what makes a task a recorded container (its store row, events,
network, health checks, restart policy); a RUN step adds its output stream and its removal.

The layout: the bundle ``containers/<id>/`` (``config.json``, ``rootfs`` (the overlay mount),
``upper`` and ``work`` when the task owns its upper dir, ``imagevols/<n>`` the read-only overlays
of its image volumes, the log) and the shim's state dir
``shims/<id>/``; see docs/design.md.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import time
from typing import Any

import anyio

from tugwire import errors, fsutil
from tugwire.errors import TugError
from tugwire.shimapi import ExitRecord, LaunchReply, ShimConfig

from . import mounts, shims, spec
from .config import Config

log = logging.getLogger("tugboat.task")

LOG_FILE = "container.log"  # in the bundle
NO_ROTATION = 1 << 62  # the log size of a log someone else rotates (kubelet: ReopenContainerLog)
CLEANUP_GRACE = 30.0  # after a shim that died at birth: how long its cleanup may take


class Task:
    """Task ``cid``: where its bundle and shim dir are, and the steps of its life."""

    def __init__(self, cfg: Config, cid: str) -> None:
        self.cfg = cfg
        self.id = cid
        self.dir = cfg.container_dir(cid)  # the bundle
        self.rootfs = os.path.join(self.dir, "rootfs")
        self.upper = os.path.join(self.dir, "upper")
        self.work = os.path.join(self.dir, "work")
        self.spec = os.path.join(self.dir, "config.json")
        self.image_volumes = os.path.join(self.dir, mounts.IMAGE_VOLUMES)
        self.log = os.path.join(self.dir, LOG_FILE)
        self.shim_dir = cfg.shim_dir(cid)

    @property
    def shim(self) -> shims.ShimClient:
        """The client of the task's shim (whether or not one runs)."""
        return shims.ShimClient(self.shim_dir, self.cfg.shim_timeout)

    def shim_config(
        self,
        *,
        name: str,
        image: str,
        log_max_size: int | None = None,
        log_max_files: int | None = None,
        metrics_address: str = "",
        tty: bool = False,
        stdin: bool = False,
        log_path: str | None = None,
        cgroup_parent: str | None = None,
    ) -> ShimConfig:
        """The shim's config, for a container and a build step alike: the bundle, the shim's
        state dir, the log, the cgroup, and the daemon's runtime and anyio backend. A
        ``log_path`` of the caller's (the CRI's) is written there, whole: kubelet rotates it, tugd
        does not."""
        cfg = self.cfg
        if log_path:
            log_max_size, log_max_files = NO_ROTATION, 1
        return ShimConfig(
            id=self.id,
            bundle=self.dir,
            dir=self.shim_dir,
            runtime=cfg.runtime,
            runtime_root=cfg.runtime_root,
            runtime_timeout=cfg.runtime_timeout,
            log_path=log_path or self.log,
            log_max_size=log_max_size or cfg.log_max_size,
            log_max_files=log_max_files or cfg.log_max_files,
            cgroup_path=spec.cgroup_path(self.id, cgroup_parent),
            name=name,  # name and image label the container's metrics
            image=image,
            metrics_address=metrics_address,
            tty=tty,
            stdin=stdin,
            backend=cfg.backend,  # shims run on the daemon's anyio backend
            requested_at=time.monotonic(),
        )

    # ------------------------------------------------------------------------------- bundle

    def write_bundle(self, oci: dict[str, Any], *, own_upper: bool) -> None:
        """Make the bundle: its dir, the mount point ``rootfs``, ``upper`` and ``work`` if the
        task keeps its changes in the bundle (``own_upper``), and ``config.json``. On an error
        nothing of it is left."""
        os.makedirs(self.cfg.containers_dir, mode=0o700, exist_ok=True)
        os.makedirs(self.dir, mode=0o700)
        try:
            for d in (self.rootfs, self.upper, self.work) if own_upper else (self.rootfs,):
                os.mkdir(d, 0o755)
            # Compact (the C encoder; indent= would take the pure-Python one) and not fsynced: a
            # container's record beside it is committed without fsync too (WAL, synchronous=
            # NORMAL), so only a power loss could lose either, and runc refuses a torn
            # config.json with its own error. Measured: two fsyncs cost 0.8 ms on an idle disk
            # and 10-20 ms on a busy one.
            fsutil.write_atomic(self.spec, json.dumps(oci).encode(), mode=0o600, durable=False)
        except BaseException:
            self.remove_bundle()
            raise

    def remove_bundle(self) -> None:
        """Remove the bundle (its upper dir with it, if it has one)."""
        fsutil.remove_tree(self.dir)

    async def mount(self, lower: list[str], upper: str | None = None, work: str | None = None) -> None:
        """Mount the root filesystem, an overlay of ``lower`` (top first) under ``upper`` (the
        bundle's own by default), unless it is mounted already. mount(2) of an overlay takes
        1-5 ms: off the event loop, so that parallel starts (and every other client) are not held
        up behind it."""
        if not mounts.is_mounted(self.rootfs):
            await anyio.to_thread.run_sync(
                mounts.mount_overlay, lower, upper or self.upper, work or self.work, self.rootfs
            )

    async def mount_with_new_shim_dir(self, lower: list[str]) -> None:
        """:meth:`mount`, then :meth:`new_shim_dir`, in one trip to a worker thread: the shim
        dir's removal and mkdir wait for the disk's journal on a busy host, and parallel starts
        should not queue behind them on the event loop."""

        def work() -> None:
            if not mounts.is_mounted(self.rootfs):
                mounts.mount_overlay(lower, self.upper, self.work, self.rootfs)
            self.new_shim_dir()

        await anyio.to_thread.run_sync(work)

    def image_volume(self, index: int) -> str:
        """The mount point of the task's image volume ``index`` (what its bind mount's source is
        under)."""
        return os.path.join(self.image_volumes, str(index))

    async def mount_images(self, lowers: list[list[str]]) -> None:
        """Mount the image volumes: volume ``n`` a read-only overlay of ``lowers[n]`` (an
        image's snapshots, top first, no upper dir), unless it is mounted already."""
        if not lowers:
            return

        def mount_all() -> None:
            empty = os.path.join(self.image_volumes, mounts.EMPTY)
            os.makedirs(empty, mode=0o755, exist_ok=True)
            for index, lower in enumerate(lowers):
                target = self.image_volume(index)
                os.makedirs(target, mode=0o755, exist_ok=True)
                if not mounts.is_mounted(target):
                    mounts.mount_overlay(lower if len(lower) > 1 else [*lower, empty], None, None, target)

        await anyio.to_thread.run_sync(mount_all)

    def is_mounted(self) -> bool:
        """Whether the root filesystem or an image volume is still mounted."""
        return any(mounts.is_mounted(t) for t in [self.rootfs, *mounts.image_volume_dirs(self.dir)])

    async def unmount(self) -> None:
        """Unmount the root filesystem and the image volumes, those mounted. In a worker
        thread: unmounting an overlay syncs its upper filesystem, which holds the log files too.
        Measured after a container wrote 100 MiB of output: 80 ms, during which the event loop
        (every other client) used to stand still."""
        with contextlib.suppress(OSError):
            await anyio.to_thread.run_sync(mounts.unmount_bundle, self.dir)

    # ------------------------------------------------------------------------ launch, wait

    def new_shim_dir(self) -> None:
        """An empty shim dir (anything of an earlier run removed)."""
        fsutil.remove_tree(self.shim_dir)
        os.makedirs(self.shim_dir, mode=0o700)

    async def launch(self, launcher: shims.ShimLauncher, config: ShimConfig) -> LaunchReply:
        """Start the shim of ``config`` (its state dir made if need be); its reply once the task
        runs. If the shim died or went silent without an answer, maybe after runc made the
        container, its runtime state and processes would be nobody's: they are cleaned up
        (``tug-shim delete``) and its state dir removed before the error is raised. A shim that
        answered with runc's error has cleaned up after runc itself."""
        os.makedirs(config.dir, mode=0o700, exist_ok=True)
        try:
            return await launcher.launch(config)
        except BaseException as exc:
            if not isinstance(exc, errors.TugError) or exc.kind == "internal":
                with anyio.move_on_after(CLEANUP_GRACE, shield=True):
                    try:
                        await shims.delete_dead(config.dir, config.id, config.runtime, config.runtime_root)
                    except Exception as cleanup_exc:
                        log.warning("cleanup after the shim of %s: %s", config.id[:12], cleanup_exc)
            fsutil.remove_tree(config.dir)
            raise

    async def abandon(self) -> None:
        """Undo a start that failed before the task ran: the shim dir, the mount (shielded)."""
        fsutil.remove_tree(self.shim_dir)
        with anyio.CancelScope(shield=True):
            await self.unmount()

    async def wait(self) -> ExitRecord | None:
        """The exit record, once the shim reports it; None if the shim went away without one.
        A connection that fails while the shim lives (a loaded host) is tried again."""
        shim = self.shim
        while True:
            try:
                return await shim.wait()
            except TugError as exc:
                record = shim.read_exit()
                if record is not None or not shim.alive():
                    log.info("shim of %s went away: %s", self.id[:12], exc)
                    return record
                log.warning("lost the connection to the shim of %s (%s); again", self.id[:12], exc)
                await anyio.sleep(0.5)

    # ------------------------------------------------------------------------------ cleanup

    async def kill(self) -> None:
        """SIGKILL to PID 1, if the task still runs."""
        if os.path.isdir(self.shim_dir):
            with contextlib.suppress(TugError):
                await self.shim.kill(int(signal.SIGKILL), timeout=5)

    async def release(self, timeout: float) -> None:
        """Delete the task (the shim runs ``runc delete`` and exits; or the cleanup after a shim
        that does not answer), then unmount. Idempotent. The deletion under ``timeout`` of its
        own: a runtime that hangs even in the cleanup must not keep the unmount from happening;
        if the cleanup fails too, the shim dir stays for the next start of tugd to retry."""
        with anyio.move_on_after(timeout):
            await self.shim.release(self.id, self.cfg.runtime, self.cfg.runtime_root)
        await self.unmount()

    async def remove_orphan(self) -> None:
        """Clean up after a shim dir that nothing owns (tugd died mid-create, mid-delete or in a
        RUN step): kill and delete what the runtime still has, then the dir and the mount."""
        try:
            await self.shim.delete_dead(self.id, self.cfg.runtime, self.cfg.runtime_root)
        except Exception:
            log.exception("cleanup of orphan shim %s failed", self.id[:12])
        fsutil.remove_tree(self.shim_dir)
        with contextlib.suppress(OSError):
            mounts.unmount_bundle(self.dir)
