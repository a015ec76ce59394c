"""Images: a content-addressed blob store, OCI and Docker manifests, indexes and configs, layers
unpacked into snapshots that overlayfs stacks under each container.

- :mod:`.content`: the content store (``blobs/sha256/<hex>``, verified on write and on read), the
  blob writer, and the leases that keep an ingest's blobs and snapshots from garbage collection.
- :mod:`.manifests`: media types, manifests, indexes, platforms, chain ids, and the
  :class:`ImageSource` contract every source of images fulfils.
- :mod:`.unpack`: layer unpacking: one pass that hashes and inflates (:class:`Inflater`) and the
  tar extractor that refuses unsafe entries and tar bombs (:func:`unpack_tar`).
- :mod:`.service`: the :class:`Images` service: lookups, ingest, export, commit, import, tag,
  remove, prune, garbage collection. The engine the rest of the core shares.
- :mod:`.ops`: :class:`~.ops.ImageService`, the image verbs as the front doors see them (typed
  requests and records, the ``image`` events). Imported from ``supervisor.images.ops``, not
  from here: it uses :mod:`supervisor.archive`, which uses this package.

Images come in through :meth:`Images.ingest` from any :class:`ImageSource` (an OCI layout, a
docker-archive, a registry: :mod:`supervisor.registry`) and go out through :meth:`Images.export`
(push, save). The modules import in that order: content, manifests, unpack, service.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .content import (
    CHUNK,
    BlobWriter,
    ContentStore,
    CorruptBlob,
    Lease,
    Leases,
    check_digest,
    sha256_digest,
)
from .manifests import (
    DOCKER_CONFIG,
    DOCKER_FOREIGN_LAYER,
    DOCKER_LAYER_GZIP,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    DOCKER_SCHEMA1,
    INDEX_TYPES,
    MANIFEST_TYPES,
    MAX_MANIFEST,
    MEDIA_CONFIG,
    MEDIA_INDEX,
    MEDIA_LAYER_GZIP,
    MEDIA_LAYER_TAR,
    MEDIA_LAYER_ZSTD,
    MEDIA_MANIFEST,
    ExportedImage,
    ImageSource,
    ResolvedImage,
    chain_ids,
    choose_manifest,
    host_arch,
    host_platform,
    manifest_media_type,
    parse_platform,
)
from .service import Images

if TYPE_CHECKING:
    from .unpack import MAX_LAYER_BYTES, MAX_LAYER_ENTRIES, Inflater, UnsafeLayer, unpack_tar

# .unpack (and with it tarfile, gzip, bz2, lzma: about 0.3 MB of tugd's memory) is imported when
# one of its names is first asked for: a tugd that only runs containers never loads it.
_UNPACK = frozenset({"MAX_LAYER_BYTES", "MAX_LAYER_ENTRIES", "Inflater", "UnsafeLayer", "unpack_tar"})


def __getattr__(name: str) -> Any:
    if name in _UNPACK:
        from . import unpack

        return getattr(unpack, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CHUNK",
    "DOCKER_CONFIG",
    "DOCKER_FOREIGN_LAYER",
    "DOCKER_LAYER_GZIP",
    "DOCKER_LIST",
    "DOCKER_MANIFEST",
    "DOCKER_SCHEMA1",
    "INDEX_TYPES",
    "MANIFEST_TYPES",
    "MAX_LAYER_BYTES",
    "MAX_LAYER_ENTRIES",
    "MAX_MANIFEST",
    "MEDIA_CONFIG",
    "MEDIA_INDEX",
    "MEDIA_LAYER_GZIP",
    "MEDIA_LAYER_TAR",
    "MEDIA_LAYER_ZSTD",
    "MEDIA_MANIFEST",
    "BlobWriter",
    "ContentStore",
    "CorruptBlob",
    "ExportedImage",
    "ImageSource",
    "Images",
    "Inflater",
    "Lease",
    "Leases",
    "ResolvedImage",
    "UnsafeLayer",
    "chain_ids",
    "check_digest",
    "choose_manifest",
    "host_arch",
    "host_platform",
    "manifest_media_type",
    "parse_platform",
    "sha256_digest",
    "unpack_tar",
]
