"""The verbs on a container besides its lifecycle: ``top``, ``stats``, ``update``, ``rename``,
``restart``, ``changes`` and ``cp``. Each refuses, changing nothing, what the container's state forbids.
Pause, unpause and the restart policy are part of the lifecycle, in :mod:`supervisor.containers`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

from tugwire import fsutil, names
from tugwire.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from tugwire.shimapi import UpdateParams

from . import copy, mounts, spec
from .containers import ACTIVE, EXITED, Containers
from .store import ContainerRecord

if TYPE_CHECKING:
    from . import changes

MIN_MEMORY = 6 * 1024 * 1024


@dataclass(frozen=True)
class UpdateRequest:
    """``container.update``: new limits for container ``id`` (checked by
    :meth:`Containers.get`); None leaves one as it is."""

    id: Any
    memory: int | None = None
    cpus: float | None = None
    pids_limit: int | None = None


class Verbs:
    """``container.top``, ``.stats``, ``.update``, ``.rename``, ``.restart``, ``.copy_*``."""

    def __init__(self, containers: Containers) -> None:
        self.c = containers

    def _require_active(self, rec: ContainerRecord, verb: str) -> None:
        if rec.run.state not in ACTIVE:
            raise FailedPrecondition(
                f"cannot {verb} container {rec.name}: container is {rec.run.state}", state=rec.run.state
            )

    async def top(self, ref: Any) -> dict[str, Any]:
        """The container's processes as ``ps -ef`` shows them: ``{titles, processes}``."""
        rec = self.c.get(ref)
        self._require_active(rec, "list the processes of")
        try:
            result = await self.c.shim(rec.id).top()
        except FailedPrecondition as exc:
            raise FailedPrecondition(f"container {rec.name} is not running", state=EXITED) from exc
        return result

    async def stats(self, ref: Any) -> dict[str, Any]:
        """One sample of the container's cgroup figures (zeros when it is not running)."""
        rec = self.c.get(ref)
        sample: dict[str, Any] = {"running": False}
        if rec.run.state in ACTIVE:
            with contextlib.suppress(FailedPrecondition):
                sample = await self.c.shim(rec.id).stats()
        return {"id": rec.id, "name": rec.name, "state": rec.run.state, **sample}

    async def update(self, req: UpdateRequest) -> ContainerRecord:
        """New ``memory`` (bytes), ``cpus`` and ``pids_limit``: applied at once to a running or
        paused container (``runc update``) and kept in its config for its next start."""
        rec = self.c.get(req.id)
        memory = req.memory
        if memory is not None and memory < MIN_MEMORY:
            raise InvalidArgument("minimum memory limit allowed is 6MB", field="memory")
        cpus = req.cpus
        ncpu = os.cpu_count() or 1
        if cpus is not None and not 0.01 <= cpus <= ncpu:
            raise InvalidArgument(f"range of CPUs is from 0.01 to {ncpu}", field="cpus")
        pids = req.pids_limit
        if pids is not None and pids < 1:
            raise InvalidArgument("pids limit must be positive", field="pids_limit")
        if memory is None and cpus is None and pids is None:
            raise InvalidArgument("nothing to update: give memory, cpus or pids_limit")
        async with self.c.live(rec.id).lock:
            rec = self.c.reload(rec.id)
            if rec.run.state in ACTIVE:
                params = UpdateParams(
                    memory=memory,
                    pids_limit=pids,
                    cpu_quota=None if cpus is None else int(cpus * spec.CPU_PERIOD),
                    cpu_period=None if cpus is None else spec.CPU_PERIOD,
                )
                try:
                    await self.c.shim(rec.id).update(params)
                except FailedPrecondition as exc:
                    raise FailedPrecondition(f"container {rec.name} is not running", state=EXITED) from exc
            rec.settings = dataclasses.replace(
                rec.settings,
                memory=rec.settings.memory if memory is None else memory,
                cpus=rec.settings.cpus if cpus is None else cpus,
                pids_limit=rec.settings.pids_limit if pids is None else pids,
            )
            self._rewrite_resources(rec)
            self.c.save(rec)
        self.c.publish("update", rec)
        return rec

    def _rewrite_resources(self, rec: ContainerRecord) -> None:
        """The limits in the bundle's ``config.json``, so that the next start keeps them."""
        path = os.path.join(self.c.cfg.container_dir(rec.id), "config.json")
        with open(path, "rb") as f:
            oci = json.load(f)
        resources = oci.setdefault("linux", {}).setdefault("resources", {})
        settings = rec.settings
        if settings.memory:
            resources["memory"] = {"limit": int(settings.memory)}
        if settings.cpus:
            quota = int(float(settings.cpus) * spec.CPU_PERIOD)
            resources["cpu"] = {"quota": quota, "period": spec.CPU_PERIOD}
        if settings.pids_limit:
            resources["pids"] = {"limit": int(settings.pids_limit)}
        fsutil.write_atomic(path, json.dumps(oci, indent=1).encode(), mode=0o600)

    async def rename(self, ref: Any, new_name: str) -> ContainerRecord:
        """Give the container a new (valid, unused) name; event ``rename`` with ``oldName``."""
        names.check_name(new_name)
        rec = self.c.get(ref)
        async with self.c.live(rec.id).lock:
            rec = self.c.reload(rec.id)
            old = rec.name
            if new_name == old:
                raise InvalidArgument(f"renaming a container with the same name ({old}) changes nothing")
            if self.c.name_taken(new_name):
                raise AlreadyExists(f"the container name {new_name!r} is already in use", field="name")
            rec.name = new_name
            self.c.save(rec)  # AlreadyExists (from the store) if taken meanwhile
            # Its peers on its networks resolve the new name (their /etc/hosts, rewritten).
            self.c.networks.refresh_hosts(self.c.networks.network_ids_of(rec.id), self.c.cfg.container_dir)
        self.c.publish("rename", rec, oldName=old)
        return rec

    async def changes(self, ref: Any) -> list[changes.Change]:
        """What the container changed in its root filesystem (``docker diff``), running or not."""
        rec = self.c.get(ref)
        upper = os.path.join(self.c.cfg.container_dir(rec.id), "upper")
        lowers = await self.c.lower_layers(rec)
        from .changes import changes as diff  # docker diff only: imported at its first use

        return await anyio.to_thread.run_sync(diff, upper, lowers)

    async def restart(self, ref: Any, timeout: int | None, signal: int | None = None) -> ContainerRecord:
        """Stop (if running; with ``signal`` rather than the stop signal) then start; event
        ``restart``."""
        rec = self.c.get(ref)
        await self.c.stop(rec.id, timeout, signal)
        rec = await self.c.start(rec.id)
        self.c.publish("restart", rec)
        return rec

    # ------------------------------------------------------------------------------------ cp

    async def copy_from(self, ref: Any, path: str, host_path: str) -> dict[str, Any]:
        """Copy ``path`` of the container to ``host_path`` on the host."""
        rec = self.c.get(ref)
        contents = copy.wants_contents(path)
        dst_dir, dst_name = copy.host_target(host_path)
        try:
            async with self._rootfs(rec) as root_fd:
                src_dir, src_name = copy.resolve_in_root(root_fd, path, follow_last=contents)
                try:
                    result = await anyio.to_thread.run_sync(
                        lambda: copy.copy(src_dir, src_name, dst_dir, dst_name, contents=contents, label=path)
                    )
                finally:
                    os.close(src_dir)
        finally:
            os.close(dst_dir)
        return vars(result)

    async def copy_to(self, ref: Any, host_path: str, path: str) -> dict[str, Any]:
        """Copy ``host_path`` of the host to ``path`` in the container."""
        rec = self.c.get(ref)
        contents = copy.wants_contents(host_path)
        src_dir, src_name = copy.host_target(host_path)
        try:
            async with self._rootfs(rec) as root_fd:
                dst_dir, dst_name = copy.resolve_in_root(root_fd, path, follow_last=True)
                try:
                    if path.endswith("/") and copy._lstat(dst_dir, dst_name) is None:
                        raise NotFound(f"no such directory in the container: {path}")
                    result = await anyio.to_thread.run_sync(
                        lambda: copy.copy(
                            src_dir, src_name, dst_dir, dst_name, contents=contents, label=host_path
                        )
                    )
                finally:
                    os.close(dst_dir)
        finally:
            os.close(src_dir)
        return vars(result)

    @contextlib.asynccontextmanager
    async def _rootfs(self, rec: ContainerRecord) -> Any:
        """A directory fd of the container's root filesystem. A running container's is mounted
        already; a stopped one's overlay is mounted for the copy (under the container's lock, so
        that no start mounts it at the same time) and detached after."""
        live = self.c.live(rec.id)
        rootfs = os.path.join(self.c.cfg.container_dir(rec.id), "rootfs")
        rec = self.c.reload(rec.id)
        if rec.run.state in ACTIVE and mounts.is_mounted(rootfs):
            fd = os.open(rootfs, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                yield fd
            finally:
                os.close(fd)
            return
        async with live.lock:
            rec = self.c.reload(rec.id)
            if rec.run.state in ACTIVE:
                raise FailedPrecondition(f"container {rec.name} changed state; try again")
            lower = await self.c.lower_layers(rec)
            cdir = self.c.cfg.container_dir(rec.id)
            mounted = False
            if not mounts.is_mounted(rootfs):
                mounts.mount_overlay(lower, os.path.join(cdir, "upper"), os.path.join(cdir, "work"), rootfs)
                mounted = True
            fd = os.open(rootfs, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                yield fd
            finally:
                os.close(fd)
                if mounted:
                    with contextlib.suppress(OSError):
                        mounts.unmount(rootfs)
