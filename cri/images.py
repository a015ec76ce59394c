"""The CRI ImageService, a translation of tugd's ``image.*`` and ``system.*`` methods.

What kubelet relies on (see docs/cri.md): an image is named by its id (the config digest,
``sha256:...``) in every answer, and ``PullImage``'s ``image_ref`` is that id; ``ImageStatus`` of
an absent image is an empty answer, not an error; ``RemoveImage`` removes every name of the image
and succeeds when there is no such image. Names are answered fully qualified
(``docker.io/library/busybox:latest``), as containerd and CRI-O answer them; tugd takes either
form. A malformed reference is ``INVALID_ARGUMENT`` and reaches tugd not at all.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import grpc.aio

from tugwire import imageref
from tugwire.errors import InvalidArgument, NotFound

from .errors import rpc
from .gen import api_pb2, api_pb2_grpc
from .tugd import Tugd

log = logging.getLogger("tugboat.cri.images")

Context = grpc.aio.ServicerContext[Any, Any]


def check_reference(ref: str) -> str:
    """``ref`` if it is an image id (``sha256:`` and hex), an id prefix or a reference docker
    accepts; InvalidArgument otherwise. tugd resolves it."""
    if not ref:
        raise InvalidArgument("no image given (ImageSpec.image is empty)", field="image")
    imageref.parse(ref)  # an id and an id prefix parse as names too
    return ref


def qualified(name: str) -> str:
    """``busybox:latest`` -> ``docker.io/library/busybox:latest`` (tags and repo digests)."""
    try:
        return imageref.parse(name, default_tag=None).string()
    except InvalidArgument:  # tugd only stores names it parsed; kept as it is, to be seen
        return name


def image_message(info: dict[str, Any]) -> api_pb2.Image:
    """A CRI Image from tugd's ``image.list`` / ``image.inspect`` entry. The image config's
    ``User`` gives ``uid`` (numeric) or ``username``, as containerd reads it."""
    image = api_pb2.Image(
        id=info["id"],
        repo_tags=[qualified(t) for t in info.get("repo_tags") or []],
        repo_digests=[qualified(d) for d in info.get("repo_digests") or []],
        size=int(info.get("size") or 0),
        spec=api_pb2.ImageSpec(image=info["id"]),
    )
    user = str((info.get("config") or {}).get("User") or "").split(":", 1)[0]
    if user.isdigit():
        image.uid.value = int(user)
    elif user:
        image.username = user
    return image


def has_credentials(auth: api_pb2.AuthConfig) -> bool:
    """Whether a PullImage carries credentials of its own."""
    return any((auth.username, auth.password, auth.auth, auth.identity_token, auth.registry_token))


class ImageService(api_pb2_grpc.ImageServiceServicer):
    """ImageService over one tugd; every method is one or two tugd calls."""

    def __init__(self, tugd: Tugd) -> None:
        self.tugd = tugd

    async def _inspect(self, ref: str) -> dict[str, Any] | None:
        try:
            info: dict[str, Any] = await self.tugd.call("image.inspect", {"ref": check_reference(ref)})
        except NotFound:
            return None
        return info

    @rpc
    async def ListImages(
        self, request: api_pb2.ListImagesRequest, context: Context
    ) -> api_pb2.ListImagesResponse:
        """Every image, or with ``filter.image`` only the image it names (none if absent)."""
        wanted = request.filter.image.image if request.HasField("filter") else ""
        if wanted:
            info = await self._inspect(wanted)
            return api_pb2.ListImagesResponse(images=[image_message(info)] if info else [])
        images: list[dict[str, Any]] = await self.tugd.call("image.list")
        return api_pb2.ListImagesResponse(images=[image_message(i) for i in images])

    @rpc
    async def ImageStatus(
        self, request: api_pb2.ImageStatusRequest, context: Context
    ) -> api_pb2.ImageStatusResponse:
        """The image named by a reference or an id; an empty answer when there is none.
        ``verbose`` adds tugd's whole ``image.inspect`` as JSON under ``info["info"]``."""
        info = await self._inspect(request.image.image)
        if info is None:
            return api_pb2.ImageStatusResponse()
        out = api_pb2.ImageStatusResponse(image=image_message(info))
        if request.verbose:
            out.info["info"] = json.dumps(info, sort_keys=True)
        return out

    @rpc
    async def PullImage(
        self, request: api_pb2.PullImageRequest, context: Context
    ) -> api_pb2.PullImageResponse:
        """Pull through tugd's ``image.pull``; answers the image's id. The request's
        ``AuthConfig`` (username and password, ``auth``, identity or registry token) goes to
        tugd as ``auth``: used for this pull only, never saved; without it, tugd uses what a
        ``tug login`` saved for the registry."""
        ref = check_reference(request.image.image)
        params: dict[str, Any] = {"ref": ref}
        if request.HasField("auth") and has_credentials(request.auth):
            a = request.auth
            fields = {
                "username": a.username,
                "password": a.password,
                "auth": a.auth,
                "identity_token": a.identity_token,
                "registry_token": a.registry_token,
            }
            params["auth"] = {k: v for k, v in fields.items() if v}
        result: dict[str, Any] = await self.tugd.call("image.pull", params)
        return api_pb2.PullImageResponse(image_ref=result["id"])

    @rpc
    async def RemoveImage(
        self, request: api_pb2.RemoveImageRequest, context: Context
    ) -> api_pb2.RemoveImageResponse:
        """Remove the image with every name it has, whichever of them (or its id) is given.
        Idempotent: no such image is success. An image a container uses is FAILED_PRECONDITION
        and keeps every name."""
        info = await self._inspect(request.image.image)
        if info is not None:
            try:
                await self.tugd.call("image.remove", {"ref": info["id"]})  # by id: every name
            except NotFound:
                pass  # removed meanwhile: what was asked
        return api_pb2.RemoveImageResponse()

    @rpc
    async def ImageFsInfo(
        self, request: api_pb2.ImageFsInfoRequest, context: Context
    ) -> api_pb2.ImageFsInfoResponse:
        """The bytes images use (tugd's ``system.df``: blobs and unpacked snapshots, shared
        layers once) on the filesystem of tugd's data root. Inodes are not counted by tugd, so
        ``inodes_used`` is left unset (kubelet reads it only when set). Containers' writable
        layers share that filesystem, so ``container_filesystems`` is empty, as the proto asks."""
        info = await self.tugd.call("system.info")
        df = await self.tugd.call("system.df")
        usage = api_pb2.FilesystemUsage(
            timestamp=time.time_ns(),
            fs_id=api_pb2.FilesystemIdentifier(mountpoint=str(info["root"])),
            used_bytes=api_pb2.UInt64Value(value=int(df["images"]["size"])),
        )
        return api_pb2.ImageFsInfoResponse(image_filesystems=[usage])
