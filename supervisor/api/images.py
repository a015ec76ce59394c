"""The ``image.*`` and ``auth.*`` JSON-RPC methods (docs/api.md, "Images", "Registries",
"Build"): each validates its params, calls the image, registry or build service, and renders
the typed result; the progress of a pull, push or build goes out as notifications."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import anyio

from tugwire import jsonrpc
from tugwire.errors import InvalidArgument, Unavailable

from ..core import Core
from ..images.ops import ImportRequest, LoadRequest, RemoveRequest, SaveRequest, TagRequest

if TYPE_CHECKING:
    from ..build.builder import Builder
    from ..registry import RegistryService

# The registry, the builder and docker's filter rules are imported at their first use: a tugd
# that only runs containers never loads them (docs/benchmarks.md, "tugd's memory").


async def relay(call: jsonrpc.Call, method: str, progress: AsyncIterator[dict[str, Any]]) -> None:
    """Send each progress event as a ``method`` notification; a client that went away gets no
    more, and the transfer goes on regardless."""
    async for event in progress:
        try:
            await call.notify(method, event)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            return


class ImageApi:
    def __init__(self, core: Core) -> None:
        self.images = core.images
        self.service = core.image_service
        self.core = core

    @property
    def registry(self) -> RegistryService:
        return self.core.registry

    @property
    def builder(self) -> Builder:
        return self.core.builder

    def register(self, d: jsonrpc.Dispatcher) -> None:
        d.add("image.import", self.image_import)
        d.add("image.list", self.image_list)
        d.add("image.inspect", self.image_inspect)
        d.add("image.remove", self.image_remove)
        d.add("image.tag", self.image_tag)
        d.add("image.prune", self.image_prune)
        d.add("image.save", self.image_save)
        d.add("image.load", self.image_load)
        d.add("image.pull", self.image_pull, accept_late=True)
        d.add("image.push", self.image_push, accept_late=True)
        d.add("image.build", self.image_build)
        d.add("auth.login", self.auth_login)
        d.add("auth.logout", self.auth_logout)

    async def image_import(self, call: jsonrpc.Call) -> Any:
        """Import a rootfs tarball as a one-layer OCI image."""
        p = call.params
        overrides = p.raw.get("config") or {}
        if not isinstance(overrides, dict):
            raise InvalidArgument("config must be an object", field="config")
        rec = await self.service.import_rootfs(
            ImportRequest(p.string("path", required=True), p.string("ref", required=True), overrides)
        )
        return {"id": rec.id, "digest": rec.digest, "ref": rec.names[0] if rec.names else None}

    async def image_list(self, call: jsonrpc.Call) -> Any:
        """Every image with its names, that passes docker's ``filters`` (reference, dangling,
        label, before, since), newest first."""
        raw = call.params.raw.get("filters")
        filters: dict[str, list[str]] = {}
        if raw is not None:
            from tugwire import dockerfilters

            filters = dockerfilters.check_images(raw)
        images = [self.images.describe(r) for r in self.service.list_images()]
        if filters:
            from tugwire import dockerfilters

            created = {i["id"]: str(i.get("created") or "") for i in images}
            named = {t: str(i.get("created") or "") for i in images for t in i.get("repo_tags") or []}

            def created_of(ref: str) -> str | None:
                if ref in named or ref + ":latest" in named:
                    return named.get(ref, named.get(ref + ":latest"))
                bare = ref.removeprefix("sha256:")
                found = [t for i, t in created.items() if bare and i.removeprefix("sha256:").startswith(bare)]
                return found[0] if len(found) == 1 else None

            kept = (dockerfilters.filter_image(i, filters, created_of) for i in images)
            images = [i for i in kept if i is not None]
        images.sort(key=lambda i: str(i.get("created") or ""), reverse=True)
        return images

    async def image_inspect(self, call: jsonrpc.Call) -> Any:
        """One image, with its config and layers."""
        return self.images.describe(self.service.inspect(call.params.string("ref", required=True)), full=True)

    async def image_remove(self, call: jsonrpc.Call) -> Any:
        """Untag an image; its data goes once nothing refers to it."""
        p = call.params
        removed = self.service.remove(RemoveRequest(p.string("ref", required=True), p.boolean("force")))
        return {"removed": removed}

    async def image_tag(self, call: jsonrpc.Call) -> Any:
        """Name the image ``source`` also ``target`` (``repo[:tag]``)."""
        p = call.params
        rec = self.service.tag(
            TagRequest(p.string("source", required=True), p.string("target", required=True))
        )
        return {"id": rec.id, "repo_tags": rec.names}

    async def image_prune(self, call: jsonrpc.Call) -> Any:
        """Remove the images no container uses (untagged ones; ``all``: every one), then free
        every blob and snapshot nothing references."""
        return dataclasses.asdict(self.service.prune(all_images=call.params.boolean("all")))

    async def image_save(self, call: jsonrpc.Call) -> Any:
        """Write images to an archive on tugd's host: ``path`` (absolute), ``refs``, ``format``
        (``docker-archive``, the default, or ``oci-archive``)."""
        p = call.params
        req = SaveRequest(
            p.string("path", required=True), p.list_of_str("refs"), p.string("format", "docker-archive")
        )
        return dataclasses.asdict(await self.service.save(req))

    async def image_load(self, call: jsonrpc.Call) -> Any:
        """Load every image of an archive on tugd's host (``path``, absolute; OCI archive or
        docker-archive, plain or gzipped); ``platform`` picks from multi-platform indexes."""
        p = call.params
        loaded = await self.service.load(LoadRequest(p.string("path", required=True), p.string("platform")))
        return {"images": [dataclasses.asdict(item) for item in loaded]}

    async def image_pull(self, call: jsonrpc.Call) -> Any:
        """Pull ``ref`` (``[registry/]repo[:tag][@digest]``) from its registry: the manifest (the
        ``platform``'s, ``os/arch[/variant]``, from an index; default the host's), config and
        missing layers, ``concurrency`` at a time. Streams ``image.pull.progress`` notifications
        (``id``, ``digest``, ``action``, ``current``, ``total``); answers with the image. ``auth``
        (``username``/``password``, ``auth``, ``identity_token`` or ``registry_token``): the
        registry's credentials for this pull only, never saved (the CRI's AuthConfig)."""
        from ..registry import PullAuth, PullRequest

        p = call.params
        req = PullRequest(
            p.string("ref", required=True),
            p.string("platform"),
            p.integer("concurrency", 3),
            PullAuth.parse(p.dict_of_str("auth")),
        )
        pulling = self.registry.pull(req)
        call.accept()
        async with pulling as transfer:
            await relay(call, "image.pull.progress", transfer)
        pulled = transfer.result
        out = self.images.describe(pulled.record)
        out["ref"] = pulled.ref
        return out

    async def image_push(self, call: jsonrpc.Call) -> Any:
        """Push the local image ``ref`` to ``dest`` (default: ``ref``; a tag, not a digest):
        blobs the repository has are skipped, blobs another repository of the same registry has
        are mounted, the rest uploaded (in PATCH chunks of ``chunk_size`` bytes when larger),
        ``concurrency`` at a time; then the manifest. Streams ``image.push.progress``; answers
        ``{ref, digest, uploaded, existing, mounted}``."""
        from ..registry import DEFAULT_CHUNK_SIZE, PushRequest

        p = call.params
        req = PushRequest(
            p.string("ref", required=True),
            p.string("dest"),
            p.integer("concurrency", 3),
            p.integer("chunk_size", DEFAULT_CHUNK_SIZE),
        )
        pushing = self.registry.push(req)
        call.accept()
        async with pushing as transfer:
            await relay(call, "image.push.progress", transfer)
        return dataclasses.asdict(transfer.result)

    async def image_build(self, call: jsonrpc.Call) -> Any:
        """``image.build``: parse, run every step (streaming ``image.build.step``, ``.status``
        and ``.output`` notifications), commit and tag. Returns ``{id, ref, steps, cached}``."""
        p = call.params
        opts = self.builder.options(
            context=p.string("context", required=True),
            dockerfile=p.string("dockerfile"),
            tag=p.string("tag"),
            build_args=p.dict_of_str("build_args") if p.raw.get("build_args") is not None else {},
            no_cache=p.boolean("no_cache"),
            network=p.string("network"),
            target=p.string("target"),
        )

        async def build() -> dict[str, Any]:
            async with self.builder.build(opts) as feed:
                async for event in feed:
                    await call.notify(f"image.build.{event.kind}", event.data)
            return dataclasses.asdict(feed.result)

        # A client that goes away (ctrl-c) cancels the build: its RUN container is killed and
        # removed, nothing is tagged.
        done, result = await call.until_disconnected(build)
        if not done or result is None:
            raise Unavailable("the build was cancelled: the client went away")
        return result

    async def auth_login(self, call: jsonrpc.Call) -> Any:
        """Check ``username``/``password`` against ``registry``'s ``GET /v2/`` (through its
        challenge: basic, or a bearer token) and save them (0600 file). Answers ``{registry}``;
        Unauthorized (failed_precondition) when the registry refuses them, nothing saved."""
        from ..registry import LoginRequest

        p = call.params
        req = LoginRequest(
            p.string("registry", required=True),
            p.string("username", required=True),
            p.string("password", required=True),
        )
        return {"registry": await self.registry.login(req)}

    async def auth_logout(self, call: jsonrpc.Call) -> Any:
        """Forget the credentials of ``registry``. Answers ``{registry, removed}``."""
        host, removed = self.registry.logout(call.params.string("registry", required=True))
        return {"registry": host, "removed": removed}
