"""The image verbs as the front doors see them: typed requests in, typed records out, and the
``image`` events published here, once, whichever door the request came through.

:class:`Images` (``service.py``) is the engine the rest of the core shares (containers, build,
archives, the registry); :class:`ImageService` puts the verbs a user asks for on top of it.
Pull and push are :class:`supervisor.registry.RegistryService`'s; build is the builder's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tugwire.errors import InvalidArgument

from ..events import Event, EventBus, image_removal_events
from ..store import ImageRecord
from .service import Images

# ------------------------------------------------------------------------- requests and records


@dataclass(frozen=True)
class ImportRequest:
    """Import the rootfs tarball at ``path`` (absolute, on tugd's host) as ``ref``, with
    ``config`` overriding the image config's Cmd, Entrypoint, Env, WorkingDir, User, ..."""

    path: str
    ref: str
    config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RemoveRequest:
    ref: str
    force: bool = False


@dataclass(frozen=True)
class TagRequest:
    source: str
    target: str  # repo[:tag]


@dataclass(frozen=True)
class SaveRequest:
    """Write the images ``refs`` name to the archive ``path`` (absolute, on tugd's host);
    ``format``: ``docker-archive`` or ``oci-archive``."""

    path: str
    refs: list[str]
    format: str = "docker-archive"


@dataclass(frozen=True)
class LoadRequest:
    """Load every image of the archive ``path``; ``platform`` picks from multi-platform indexes."""

    path: str
    platform: str | None = None


@dataclass(frozen=True)
class SavedArchive:
    path: str
    format: str
    images: list[str]  # image ids, in the order of the request's refs
    size: int


@dataclass(frozen=True)
class LoadedImage:
    id: str
    digest: str
    repo_tags: list[str]  # the names the archive gave (the image may have others)


@dataclass(frozen=True)
class ImagePruneReport:
    untagged: list[str]
    deleted: list[str]  # image ids
    blobs: int
    snapshots: int
    space_reclaimed: int


# ------------------------------------------------------------------------------------ the service


class ImageService:
    """List, inspect, import, tag, remove, prune, save and load images."""

    def __init__(self, images: Images, bus: EventBus) -> None:
        self.images = images
        self.bus = bus

    def list_images(self) -> list[ImageRecord]:
        """Every image with its names."""
        return self.images.store.list_images()

    def inspect(self, ref: str) -> ImageRecord:
        """The image ``ref`` names (a name, ``repo@digest``, an id or a unique id prefix)."""
        return self.images.resolve(ref).record

    async def import_rootfs(self, req: ImportRequest) -> ImageRecord:
        """Import a rootfs tarball as a one-layer OCI image; publishes ``import``."""
        if not isinstance(req.config, dict):
            raise InvalidArgument("config must be an object", field="config")
        rec = await self.images.import_rootfs(req.path, req.ref, req.config)
        ref = rec.names[0] if rec.names else req.ref
        self.bus.publish(Event("image", "import", rec.id, ref, ref))
        return rec

    def remove(self, req: RemoveRequest) -> list[str]:
        """Untag an image (its data goes once nothing refers to it); returns the names removed,
        and the image's id if it went. Publishes ``untag`` for each name, ``delete`` if it went."""
        image_id = self.images.resolve(req.ref).record.id
        removed = self.images.remove(req.ref, force=req.force)
        for event in image_removal_events(image_id, removed):
            self.bus.publish(event)
        return removed

    def tag(self, req: TagRequest) -> ImageRecord:
        """Name the image ``req.source`` also ``req.target``; publishes ``tag``."""
        rec = self.images.tag(req.source, req.target)
        self.bus.publish(Event("image", "tag", rec.id, req.target, req.target))
        return rec

    def prune(self, *, all_images: bool = False) -> ImagePruneReport:
        """Remove the images no container uses (untagged ones; ``all_images``: every one), then
        free every blob and snapshot nothing references; publishes ``delete`` for each image."""
        result = self.images.prune(all_images=all_images)
        for image_id in result["deleted"]:
            self.bus.publish(Event("image", "delete", image_id, image_id, image_id))
        return ImagePruneReport(
            untagged=list(result["untagged"]),
            deleted=list(result["deleted"]),
            blobs=int(result["blobs"]),
            snapshots=int(result["snapshots"]),
            space_reclaimed=int(result["space_reclaimed"]),
        )

    async def save(self, req: SaveRequest) -> SavedArchive:
        """Write images to an archive; publishes ``save`` for each."""
        from .. import archive  # image save and load only: imported at their first use

        result = await archive.save(self.images, req.path, req.refs, fmt=req.format)
        for image_id, ref in zip(result["images"], req.refs, strict=True):
            self.bus.publish(Event("image", "save", image_id, ref, ref))
        return SavedArchive(
            path=str(result["path"]),
            format=str(result["format"]),
            images=list(result["images"]),
            size=int(result["size"]),
        )

    async def load(self, req: LoadRequest) -> list[LoadedImage]:
        """Load every image of an archive (OCI archive or docker-archive, plain or gzipped);
        publishes ``load`` for each."""
        from .. import archive

        loaded = await archive.load(self.images, req.path, platform=req.platform)
        out = []
        for item in loaded:
            ref = item["repo_tags"][0] if item["repo_tags"] else item["id"]
            self.bus.publish(Event("image", "load", item["id"], ref, ref))
            out.append(LoadedImage(str(item["id"]), str(item["digest"]), list(item["repo_tags"])))
        return out
