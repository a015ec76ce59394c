"""The composition root: every service of tugd's core, built once from the Config, in one place.

The front doors (the JSON-RPC API in :mod:`supervisor.api`; later the Docker Engine API and the
CRI) receive a :class:`Core` and talk to its services only; the core imports no front door.
The metadata store and the shim launcher are resources whose lifetime the daemon's root task
(:func:`supervisor.app.main`) holds: it opens them and hands them in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .attach import Attach
from .build.prepare import prepare_builds
from .config import Config
from .containers import Containers
from .events import EventBus
from .execs import Execs
from .images import Images
from .images.ops import ImageService
from .network import Networks
from .pods import Pods
from .shims import ShimLauncher
from .store import Store
from .system import System
from .verbs import Verbs

if TYPE_CHECKING:
    import anyio.abc

    from .build.builder import Builder
    from .metrics import Metrics
    from .registry import RegistryService


@dataclass
class Core:
    """Every service of the core, each built once and shared.

    The registry service and the builder are built at their first use (:attr:`registry`,
    :attr:`builder`): a tugd that only runs containers never imports their ~20 modules (about
    0.7 MB of tugd's memory, docs/benchmarks.md). What the builder must do at start (its table,
    the leftovers of builds a dead tugd was running) is done at start all the same."""

    cfg: Config
    store: Store
    bus: EventBus
    images: Images  # the engine: content store, snapshots, ingest, export
    image_service: ImageService  # the image verbs a user asks for (list, tag, remove, ...)
    containers: Containers
    networks: Networks
    pods: Pods
    verbs: Verbs
    execs: Execs
    attach: Attach
    system: System
    launcher: ShimLauncher
    _registry: RegistryService | None = field(default=None, repr=False)
    _builder: Builder | None = field(default=None, repr=False)

    @property
    def registry(self) -> RegistryService:
        """Pull, push, login, logout (built at the first use)."""
        if self._registry is None:
            from .registry import RegistryService

            self._registry = RegistryService(self.cfg, self.images, self.bus)
        return self._registry

    @property
    def builder(self) -> Builder:
        """``tug build`` (built at the first use; FROM pulls through :attr:`registry`)."""
        if self._builder is None:
            from .build.builder import Builder

            self._builder = Builder(self.cfg, self.store, self.images, self.launcher, self.registry)
        return self._builder

    @classmethod
    def build(
        cls,
        cfg: Config,
        store: Store,
        launcher: ShimLauncher,
        tg: anyio.abc.TaskGroup,
        metrics: Metrics | None = None,
    ) -> Core:
        """Build every service. ``tg`` is the daemon's root task group (the containers' watchers
        and restart timers live in it); ``metrics`` (optional) observes starts, exits and
        restarts. Nothing is recovered yet: call ``core.pods.recover()`` then
        ``core.containers.recover()`` next."""
        bus = EventBus(store)
        images = Images(cfg, store)
        containers = Containers(
            cfg,
            store,
            images,
            launcher,
            bus,
            tg,
            on_start_latency=metrics.observe_start if metrics else None,
            on_exit=metrics.observe_exit if metrics else None,
            on_restart=metrics.restarts.inc if metrics else None,
        )
        image_service = ImageService(images, bus)
        pods = Pods(cfg, store, containers, containers.networks, bus)
        verbs, execs, attach = Verbs(containers), Execs(containers), Attach(containers)
        prepare_builds(cfg, store)  # where the Builder was made: after the pods, before System
        return cls(
            cfg=cfg,
            store=store,
            bus=bus,
            images=images,
            image_service=image_service,
            containers=containers,
            networks=containers.networks,
            pods=pods,
            verbs=verbs,
            execs=execs,
            attach=attach,
            system=System(cfg, store, containers, images, bus),
            launcher=launcher,
        )
