"""The composition root: every service of tugd's core, built once from the Config, in one place.

The front doors (the JSON-RPC API in :mod:`supervisor.api`; later the Docker Engine API and the
CRI) receive a :class:`Core` and talk to its services only; the core imports no front door.
The metadata store and the shim launcher are resources whose lifetime the daemon's root task
(:func:`supervisor.app.main`) holds: it opens them and hands them in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .attach import Attach
from .build.builder import Builder
from .config import Config
from .containers import Containers
from .events import EventBus
from .execs import Execs
from .images import Images
from .images.ops import ImageService
from .network import Networks
from .pods import Pods
from .registry import RegistryService
from .shims import ShimLauncher
from .store import Store
from .system import System
from .verbs import Verbs

if TYPE_CHECKING:
    import anyio.abc

    from .metrics import Metrics


@dataclass
class Core:
    """Every service of the core, each built once and shared."""

    cfg: Config
    store: Store
    bus: EventBus
    images: Images  # the engine: content store, snapshots, ingest, export
    image_service: ImageService  # the image verbs a user asks for (list, tag, remove, ...)
    registry: RegistryService  # pull, push, login, logout
    containers: Containers
    networks: Networks
    pods: Pods
    verbs: Verbs
    execs: Execs
    attach: Attach
    builder: Builder
    system: System
    launcher: ShimLauncher

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
        registry = RegistryService(cfg, images, bus)
        return cls(
            cfg=cfg,
            store=store,
            bus=bus,
            images=images,
            image_service=ImageService(images, bus),
            registry=registry,
            containers=containers,
            networks=containers.networks,
            pods=Pods(cfg, store, containers, containers.networks, bus),
            verbs=Verbs(containers),
            execs=Execs(containers),
            attach=Attach(containers),
            builder=Builder(cfg, store, images, launcher, registry),
            system=System(cfg, store, containers, images, bus),
            launcher=launcher,
        )
