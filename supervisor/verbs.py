"""The verbs on a container besides its lifecycle: ``top``, ``stats``, ``update``, ``rename``,
``restart``, ``changes`` and ``cp``. Each refuses, changing nothing, what the container's state forbids.
Pause, unpause and the restart policy are part of the lifecycle, in :mod:`supervisor.containers`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio

from tugwire import fsutil, names
from tugwire.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from tugwire.shimapi import UpdateParams

from . import limits, mounts
from .containers import ACTIVE, EXITED, Containers
from .limits import LimitsRequest
from .store import ContainerRecord

if TYPE_CHECKING:
    from . import changes

MIN_MEMORY = 6 * 1024 * 1024


@dataclass(frozen=True)
class UpdateRequest:
    """``container.update``: new limits for container ``id`` (checked by
    :meth:`Containers.get`); None leaves one as it is. ``cpus`` and the CRI's
    ``limits.cpu_quota``/``cpu_period`` replace each other."""

    id: Any
    memory: int | None = None
    cpus: float | None = None
    pids_limit: int | None = None
    limits: LimitsRequest = field(default_factory=LimitsRequest)


@dataclass
class CpuSample:
    """The last CPU figure ``stats`` read of a container, for the next one's rate."""

    cpu_ns: int
    at_ns: int  # the monotonic clock's ns when it was read


class Verbs:
    """``container.top``, ``.stats``, ``.update``, ``.rename``, ``.restart``, ``.copy_*``."""

    def __init__(self, containers: Containers) -> None:
        self.c = containers
        self._cpu: dict[str, CpuSample] = {}  # the last sample of each running container

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
        """One sample of the container's cgroup figures (zeros when it is not running), with
        ``cpu_nano_cores``: the CPU used per second since the previous sample of any caller
        (kept here, in memory, as containerd keeps it), absent on a first sample."""
        rec = self.c.get(ref)
        sample: dict[str, Any] = {"running": False}
        if rec.run.state in ACTIVE:
            with contextlib.suppress(FailedPrecondition):
                sample = await self.c.shim(rec.id).stats()
        self._rate(rec.id, sample)
        return {"id": rec.id, "name": rec.name, "state": rec.run.state, **sample}

    def _rate(self, cid: str, sample: dict[str, Any]) -> None:
        seconds = sample.get("cpu_seconds")
        if not sample.get("running", True) or not isinstance(seconds, (int, float)):
            self._cpu.pop(cid, None)
            return
        read_at = sample.get("read_at")  # the shim's monotonic clock (the host's), when it read
        now = int(read_at * 1e9) if isinstance(read_at, (int, float)) else time.monotonic_ns()
        cpu_ns = int(seconds * 1e9)
        last = self._cpu.get(cid)
        if last is not None and now > last.at_ns and cpu_ns >= last.cpu_ns:
            sample["cpu_nano_cores"] = (cpu_ns - last.cpu_ns) * 1_000_000_000 // (now - last.at_ns)
        self._cpu[cid] = CpuSample(cpu_ns, now)
        if len(self._cpu) > 64 and len(self._cpu) > 2 * len(self.c.records()):
            known = {r.id for r in self.c.records()}  # forget the removed containers'
            self._cpu = {k: v for k, v in self._cpu.items() if k in known}

    async def update(self, req: UpdateRequest) -> ContainerRecord:
        """New ``memory`` (bytes), ``cpus``, ``pids_limit`` and the finer limits
        (:mod:`supervisor.limits`): applied at once to a running or paused container
        (``runc update``; the OOM score adjustment by writing PID 1's) and kept in its settings
        and bundle for its next start. Nothing changes when one is refused."""
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
        if memory is None and cpus is None and pids is None and not req.limits.given():
            raise InvalidArgument("nothing to update: give memory, cpus, pids_limit or a finer limit")
        if cpus is not None and (req.limits.cpu_quota is not None or req.limits.cpu_period is not None):
            raise InvalidArgument("cpus excludes cpu_quota and cpu_period", field="cpus")
        async with self.c.live(rec.id).lock:
            rec = self.c.reload(rec.id)
            old = rec.settings
            finer = limits.check(req.limits, old.memory if memory is None else memory)
            new = dataclasses.replace(
                old,
                memory=old.memory if memory is None else memory,
                cpus=old.cpus if cpus is None else cpus,
                pids_limit=old.pids_limit if pids is None else pids,
                **finer,
            )
            if cpus is not None:
                new = dataclasses.replace(new, cpu_quota=None, cpu_period=None)
            elif "cpu_quota" in finer or "cpu_period" in finer:
                new = dataclasses.replace(new, cpus=None)
            if new.memory_swap not in (None, -1) and (new.memory is None or new.memory_swap < new.memory):
                raise InvalidArgument("memory_swap must be at least the memory limit", field="memory_swap")
            if rec.run.state in ACTIVE:
                try:
                    await self.c.shim(rec.id).update(
                        UpdateParams(resources=limits.resources(new, update=True))
                    )
                except FailedPrecondition as exc:
                    raise FailedPrecondition(f"container {rec.name} is not running", state=EXITED) from exc
                if "oom_score_adj" in finer and rec.run.pid:
                    # PID 1 gone meanwhile: its next start has it
                    with contextlib.suppress(OSError), open(f"/proc/{rec.run.pid}/oom_score_adj", "w") as f:
                        f.write(str(finer["oom_score_adj"]))
            rec.settings = new
            self._rewrite_resources(rec)
            self.c.save(rec)
        self.c.publish("update", rec)
        return rec

    def _rewrite_resources(self, rec: ContainerRecord) -> None:
        """The limits in the bundle's ``config.json``, so that the next start keeps them."""
        path = os.path.join(self.c.cfg.container_dir(rec.id), "config.json")
        with open(path, "rb") as f:
            oci = json.load(f)
        linux = oci.setdefault("linux", {})
        devices = (linux.get("resources") or {}).get("devices")
        linux["resources"] = {
            **({"devices": devices} if devices is not None else {}),
            **limits.resources(rec.settings),
        }
        if rec.settings.oom_score_adj is not None:
            oci.setdefault("process", {})["oomScoreAdj"] = rec.settings.oom_score_adj
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

    async def archive_get(
        self,
        ref: Any,
        path: str,
        sink: Callable[[list[bytes]], Coroutine[Any, Any, None]],
        started: Callable[[], Coroutine[Any, Any, None]],
    ) -> dict[str, Any]:
        """A tar of ``path`` of the container, in chunks to ``sink`` (:func:`copy.archive_get`)."""
        from . import copy  # cp only: tarfile and the copy code wait for the first one

        rec = self.c.get(ref)
        async with self._rootfs(rec) as root_fd:
            return await copy.archive_get(root_fd, path, sink, started)

    async def archive_put(
        self,
        ref: Any,
        path: str,
        source: Callable[[], Coroutine[Any, Any, bytes]],
        started: Callable[[], Coroutine[Any, Any, None]],
    ) -> dict[str, Any]:
        """Unpack the tar ``source`` gives into directory ``path`` of the container, all or
        nothing (:func:`copy.archive_put`)."""
        from . import copy

        rec = self.c.get(ref)
        async with self._rootfs(rec) as root_fd:
            return await copy.archive_put(root_fd, path, source, started)

    async def stat_path(self, ref: Any, path: str) -> dict[str, Any]:
        """docker's stat of ``path`` in the container (:func:`copy.stat_path`)."""
        from . import copy

        rec = self.c.get(ref)
        async with self._rootfs(rec) as root_fd:
            return copy.stat_path(root_fd, path)

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
