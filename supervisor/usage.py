"""The records of ``df`` and ``prune`` (:class:`supervisor.system.System`), in a module of their
own: imported at the first ``df`` or ``prune``, not at tugd's start (docs/benchmarks.md,
"tugd's memory")."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class UsageGroup:
    """One kind of thing on disk: how many, how many in use, their bytes, and the bytes a prune
    could reclaim."""

    count: int
    active: int
    size: int
    reclaimable: int


@dataclass(frozen=True)
class ImageUsage:
    id: str
    repo_tags: list[str]
    size: int
    shared_size: int  # bytes of layers other images use too
    containers: int  # how many containers use it


@dataclass(frozen=True)
class ContainerUsage:
    id: str
    name: str
    image: str
    state: str
    size: int  # its writable layer
    log_size: int


@dataclass(frozen=True)
class ImagesUsage(UsageGroup):
    items: list[ImageUsage]


@dataclass(frozen=True)
class ContainersUsage(UsageGroup):
    items: list[ContainerUsage]


@dataclass(frozen=True)
class StoreUsage:
    size: int  # the metadata database, with its WAL
    events: int


@dataclass(frozen=True)
class DiskUsage:
    """``df``: images, containers (writable layers), logs and the metadata store."""

    images: ImagesUsage
    containers: ContainersUsage
    logs: UsageGroup
    store: StoreUsage


@dataclass(frozen=True)
class SystemPruneReport:
    """``prune``: what went and the bytes reclaimed."""

    containers_deleted: list[str]
    images_untagged: list[str]
    images_deleted: list[str]
    space_reclaimed: int


@dataclass
class Usage:
    """One measurement of the data root."""

    blobs: dict[str, int] = field(default_factory=dict)  # digest -> bytes
    snapshots: dict[str, int] = field(default_factory=dict)  # chain id -> bytes
    writable: dict[str, int] = field(default_factory=dict)  # container id -> bytes of its upper dir
    logs: dict[str, int] = field(default_factory=dict)  # container id -> bytes of its log files
