"""Manifests, indexes, configs and platforms: the OCI and Docker media types, parsing and checking
of manifests and descriptors, the choice of a platform's manifest from an index, chain ids, and
the contract every image source (an OCI layout, a docker-archive, a registry) fulfils."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from tugwire.errors import InvalidArgument, NotFound

from ..store import ImageRecord
from .content import BlobWriter, check_digest

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
DOCKER_SCHEMA1 = (
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)
MANIFEST_TYPES = (MEDIA_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (MEDIA_INDEX, DOCKER_LIST)
MAX_MANIFEST = 4 << 20  # as containerd: a manifest or config larger than this is refused


class ImageSource(Protocol):
    """Where an image comes from: an OCI layout dir, a docker-archive, a registry."""

    async def get_manifest(self, reference: str) -> tuple[bytes, str]:
        """The raw bytes and media type of the manifest or index that ``reference`` (a tag or a
        ``sha256:...`` digest) names. Raises NotFound if there is none."""
        ...

    async def fetch_blob(self, desc: dict[str, Any], writer: BlobWriter) -> None:
        """Write the blob ``desc`` (an OCI descriptor: mediaType, digest, size) to ``writer``.
        :meth:`Images.ingest` commits (and so verifies) it after this returns."""
        ...


@dataclass(frozen=True)
class ExportedImage:
    """An image as push and save need it: the manifest exactly as stored (so its digest holds),
    the config and layer descriptors (layers as stored: gzip or plain tar), and where each blob is."""

    record: ImageRecord
    manifest_bytes: bytes
    media_type: str
    digest: str
    config: dict[str, Any]
    layers: list[dict[str, Any]]
    blob_path: Callable[[str], str]
    repo_tags: list[str] = field(default_factory=list)

    @property
    def config_bytes(self) -> bytes:
        with open(self.blob_path(self.config["digest"]), "rb") as f:
            return f.read()

    @property
    def diff_ids(self) -> list[str]:
        return list(self.record.config.get("rootfs", {}).get("diff_ids", []))


@dataclass(frozen=True)
class ResolvedImage:
    record: ImageRecord
    ref: str  # the name it was asked for by, or its id

    @property
    def config(self) -> dict[str, Any]:
        cfg = self.record.config.get("config") or {}
        return cfg if isinstance(cfg, dict) else {}


def chain_ids(diff_ids: list[str]) -> list[str]:
    """OCI chain ids: the identity of a layer together with everything below it."""
    out: list[str] = []
    for d in diff_ids:
        if not out:
            out.append(d)
        else:
            out.append("sha256:" + hashlib.sha256(f"{out[-1]} {d}".encode()).hexdigest())
    return out


def host_platform() -> str:
    return f"linux/{host_arch()}"


def parse_platform(value: str) -> tuple[str, str, str]:
    """``os/arch[/variant]`` -> (os, arch, variant); ``amd64`` alone means ``linux/amd64``."""
    parts = value.split("/")
    if len(parts) == 1:
        parts = ["linux", *parts]
    if len(parts) not in (2, 3) or not all(parts):
        raise InvalidArgument(f"invalid platform {value!r}: want os/arch[/variant]", field="platform")
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(parts[1], parts[1])
    variant = parts[2] if len(parts) == 3 else ""
    if arch == "arm64" and variant == "v8":
        variant = ""
    return parts[0], arch, variant


def choose_manifest(index: dict[str, Any], platform: str | None) -> dict[str, Any]:
    """The descriptor in an index for ``platform`` (default: the host's). Raises NotFound listing
    what the index has."""
    want = parse_platform(platform or host_platform())
    entries = index.get("manifests")
    if not isinstance(entries, list):
        raise InvalidArgument("the image index has no manifests list")
    have: list[str] = []
    for desc in entries:
        if not isinstance(desc, dict):
            continue
        p = desc.get("platform") or {}
        if not isinstance(p, dict) or desc.get("mediaType") not in (*MANIFEST_TYPES, None):
            continue  # attestation manifests and nested indexes are not run
        if p.get("os") == "unknown":
            continue
        os_, arch = str(p.get("os", "")), str(p.get("architecture", ""))
        variant = str(p.get("variant", ""))
        have.append("/".join(x for x in (os_, arch, variant) if x))
        got = (os_, {"x86_64": "amd64", "aarch64": "arm64"}.get(arch, arch), variant)
        if got[2] == "v8" and got[1] == "arm64":
            got = (got[0], got[1], "")
        if got[:2] == want[:2] and (not want[2] or got[2] == want[2]):
            return desc
    raise NotFound(
        f"no image for platform {'/'.join(x for x in want if x)} in the index "
        f"(it has: {', '.join(have) or 'nothing runnable'})",
        field="platform",
    )


def json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidArgument(f"the {what} is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise InvalidArgument(f"the {what} is not a JSON object")
    return obj


def descriptor(obj: object, what: str) -> dict[str, Any]:
    if not isinstance(obj, dict) or not isinstance(obj.get("size"), int):
        raise InvalidArgument(f"the manifest's {what} is not a descriptor with a digest and a size")
    check_digest(obj.get("digest"))
    return obj


def manifest_media_type(data: bytes, declared: str) -> str:
    """The media type of a manifest or index: the declared one, else its ``mediaType`` field, else
    guessed from its shape (OCI allows the field to be absent)."""
    obj = json_object(data, "manifest")
    mt = declared or str(obj.get("mediaType") or "")
    if mt in (*MANIFEST_TYPES, *INDEX_TYPES):
        return mt
    if mt in DOCKER_SCHEMA1 or obj.get("schemaVersion") == 1:
        raise InvalidArgument("Docker schema 1 manifests are not supported (deprecated since 2017)")
    if "manifests" in obj:
        return MEDIA_INDEX
    if "config" in obj and "layers" in obj:
        return MEDIA_MANIFEST
    raise InvalidArgument(f"unsupported manifest media type {mt!r}")


def host_arch() -> str:
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def image_config_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("Cmd", "Entrypoint", "Env"):
        if key in overrides:
            value = overrides[key]
            if value is not None and (
                not isinstance(value, list) or not all(isinstance(v, str) for v in value)
            ):
                raise InvalidArgument(f"config.{key} must be a list of strings", field=key)
            out[key] = value
    for key in ("WorkingDir", "User", "StopSignal"):
        if key in overrides:
            if not isinstance(overrides[key], str):
                raise InvalidArgument(f"config.{key} must be a string", field=key)
            out[key] = overrides[key]
    if "Healthcheck" in overrides:
        check = overrides["Healthcheck"]
        test = check.get("Test") if isinstance(check, dict) else None
        if not isinstance(test, list) or not all(isinstance(v, str) for v in test):
            raise InvalidArgument("config.Healthcheck.Test must be a list of strings", field="Healthcheck")
        out["Healthcheck"] = check
    out.setdefault("Env", ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"])
    return out
