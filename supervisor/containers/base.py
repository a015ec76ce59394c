"""What every part of the containers service shares: the store, the event bus, the shims, and a
:class:`~supervisor.containers.state.Live` per container. The parts (exits, logs, inspect,
recovery, and the lifecycle in :mod:`.service`) are classes on this base, put together in
:class:`supervisor.containers.Containers`."""

from __future__ import annotations

import abc
import os
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc

from tugwire import crilog
from tugwire.errors import InvalidArgument, NotFound

from .. import shims
from ..config import Config
from ..events import Event, EventBus
from ..images import Images
from ..network import Networks
from ..store import ContainerRecord, Store
from ..task import Task
from . import health
from .state import Live


class ContainersBase(abc.ABC):
    """The containers service's shared state and helpers."""

    def __init__(
        self,
        cfg: Config,
        store: Store,
        images: Images,
        launcher: shims.ShimLauncher,
        bus: EventBus,
        tg: anyio.abc.TaskGroup,
        on_start_latency: Callable[[float], None] | None = None,
        on_exit: Callable[[int | None, bool], None] | None = None,
        on_restart: Callable[[], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.images = images
        self.launcher = launcher
        self.bus = bus
        self.tg = tg
        self._live: dict[str, Live] = {}
        # Containers whose row is gone and whose removal is finishing (id: image id): counted
        # in ``system.info``, finished by the next start of tugd if this one dies first.
        self.removing: dict[str, str] = {}
        # Names of containers being created (checked free, not yet inserted): a create awaits
        # (the image's unpacking, the bundle's thread) between the check and the insert, and a
        # parallel one must not pick the same generated name meanwhile.
        self.creating_names: set[str] = set()
        self._on_start_latency = on_start_latency
        self._on_exit = on_exit  # (exit code or None when not known, OOM-killed): for the metrics
        self._on_restart = on_restart  # a restart by the restart policy: for the metrics
        self.health = health.Monitor(self)  # health checks, as execs of the shims
        self.networks = Networks(cfg, store, bus)  # namespaces, veths, addresses, ports
        os.makedirs(cfg.containers_dir, mode=0o700, exist_ok=True)
        os.makedirs(cfg.shims_dir, mode=0o700, exist_ok=True)
        os.makedirs(cfg.runtime_root, mode=0o700, exist_ok=True)

    # ------------------------------------------------------------------------------ helpers

    def live(self, cid: str) -> Live:
        """The in-memory companion of container ``cid``."""
        live = self._live.get(cid)
        if live is None:
            live = self._live[cid] = Live()
        return live

    def get(self, ref: Any) -> ContainerRecord:
        """The container whose id, id prefix or name is ``ref``: NotFound, or InvalidArgument if
        it is ambiguous."""
        if not isinstance(ref, str) or not ref:
            raise InvalidArgument("a container id or name is required", field="id")
        found = self.store.find_containers(ref)
        if not found:
            raise NotFound(f"no such container: {ref}")
        if len(found) > 1:
            exact = [r for r in found if r.name == ref or r.id == ref]
            if len(exact) != 1:
                raise InvalidArgument(f"multiple containers match {ref!r}; give more of the id")
            return exact[0]
        return found[0]

    def spawn(self, cid: str, fn: Callable[..., Awaitable[object]], *args: object) -> None:
        """Run ``fn(*args)`` in tugd's task group as one of container ``cid``'s tasks (its exit
        watcher, restart timer, health checks), which are cancelled as a unit when it is
        removed (:meth:`Live.cancel_tasks`)."""
        live = self.live(cid)
        scope = anyio.CancelScope()
        live.tasks.add(scope)

        async def run() -> None:
            try:
                with scope:
                    await fn(*args)
            finally:
                live.tasks.discard(scope)

        self.tg.start_soon(run)

    def reload(self, cid: str) -> ContainerRecord:
        """Container ``cid`` as the store has it now (NotFound if it is gone)."""
        rec = self.store.get_container(cid)
        if rec is None:
            raise NotFound(f"no such container: {cid}")
        return rec

    def find(self, cid: str) -> ContainerRecord | None:
        """Container ``cid`` as the store has it now, or None."""
        return self.store.get_container(cid)

    def records(self) -> list[ContainerRecord]:
        """Every container."""
        return self.store.list_containers()

    def name_taken(self, name: str) -> bool:
        """Whether a container has the name ``name``."""
        return self.store.name_taken(name)

    def save(self, rec: ContainerRecord) -> None:
        """Store ``rec`` and wake whoever waits for a change of it."""
        self.store.update_container(rec)
        self.live(rec.id).changed()

    def wake(self, cid: str) -> None:
        """Wake whoever waits for a change of container ``cid`` (its health changed)."""
        self.live(cid).changed()

    async def lower_layers(self, rec: ContainerRecord) -> list[str]:
        """The unpacked layers of ``rec``'s image, top first (NotFound if the image is gone)."""
        image = self.store.get_image(rec.image_id)
        if image is None:
            raise NotFound(f"the image of container {rec.name} is gone")
        return await self.images.ensure_unpacked(image)

    def publish(self, action: str, rec: ContainerRecord, **attributes: Any) -> None:
        """Publish the event ``container.<action>`` of ``rec`` (its labels among the
        attributes, as docker's events carry them)."""
        labels = rec.settings.labels
        if labels:
            attributes = {**labels, **attributes}
        self.bus.publish(Event("container", action, rec.id, rec.name, rec.image, attributes))

    def task(self, cid: str) -> Task:
        """Container ``cid``'s task: its bundle, its shim, and the steps of their life."""
        return Task(self.cfg, cid)

    def shim(self, cid: str) -> shims.ShimClient:
        """The client of container ``cid``'s shim (whether or not one runs)."""
        return shims.ShimClient(self.cfg.shim_dir(cid), self.cfg.shim_timeout)

    def rootfs(self, cid: str) -> str:
        """Where container ``cid``'s root filesystem is mounted (while it runs)."""
        return self.task(cid).rootfs

    def log_path(self, rec: ContainerRecord) -> str:
        """Where the container's log is: its own ``log_path`` (the CRI's), else in its bundle."""
        return rec.settings.log_path or self.task(rec.id).log

    def _log_files(self, rec: ContainerRecord) -> list[str]:
        if rec.settings.log_path:
            return [rec.settings.log_path]  # rotated by someone else (kubelet)
        max_files = rec.settings.log_max_files or self.cfg.log_max_files
        return crilog.rotated_paths(self.task(rec.id).log, max_files)

    @abc.abstractmethod
    async def start(self, ref: str, *, by_policy: bool = False) -> ContainerRecord:
        """Start a created or exited container (see :class:`.service.Lifecycle`)."""

    @abc.abstractmethod
    async def delete(self, ref: str, *, force: bool) -> ContainerRecord:
        """Remove a container (see :class:`.service.Lifecycle`)."""
