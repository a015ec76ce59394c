"""The registry service: ``image.pull``, ``image.push``, ``auth.login`` and ``auth.logout``."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

import anyio

from tugwire import jsonrpc
from tugwire.errors import InvalidArgument

from .. import imageref
from ..auth import AuthStore, Credentials, TransportPolicy, check_host
from ..events import Event
from .session import DEFAULT_CHUNK_SIZE, Session, make_http_client
from .transfer import PushBlob, RegistrySource, RegistryTarget

if TYPE_CHECKING:
    import httpx

    from ..config import Config
    from ..events import EventBus
    from ..images import Images

log = logging.getLogger("supervisor.registry")


class ProgressRelay:
    """Turns the synchronous progress callbacks of a transfer into ``method`` notifications of
    one call, coalesced: only the latest state of each layer waits to be sent, so a slow client
    never slows a pull (and the last state of every layer is always sent)."""

    def __init__(self, send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        self._send = send
        self._pending: dict[str, dict[str, Any]] = {}
        self._wake = anyio.Event()
        self._broken = False

    def update(self, event: dict[str, Any]) -> None:
        key = str(event.get("id", ""))
        self._pending.pop(key, None)
        self._pending[key] = dict(event)
        self._wake.set()

    async def flush(self) -> None:
        while self._pending and not self._broken:
            batch = list(self._pending.values())
            self._pending.clear()
            for event in batch:
                try:
                    await self._send(event)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    self._broken = True  # the client went away: the transfer goes on regardless
                    break

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            await self.flush()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[ProgressRelay]:
        # The body's exception is raised as itself, not wrapped in the task group's
        # ExceptionGroup: the API maps TugError subclasses to their codes.
        body_exc: BaseException | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.run)
            try:
                yield self
            except BaseException as exc:
                body_exc = exc
            finally:
                tg.cancel_scope.cancel()
        if body_exc is not None:
            raise body_exc
        await self.flush()


def store_progress(event: dict[str, Any]) -> dict[str, Any]:
    """An event of :meth:`Images.ingest` in the shape of ours (``id``, ``action``, ...)."""
    digest = str(event.get("digest") or "")
    size = event.get("size")
    out: dict[str, Any] = {"id": digest[7:19], "digest": digest, "action": str(event.get("status", ""))}
    if isinstance(size, int):
        out["total"] = size
        if out["action"] in ("exists", "fetched", "done"):
            out["current"] = size
    return out


class RegistryService:
    """The JSON-RPC methods ``image.pull``, ``image.push``, ``auth.login`` and ``auth.logout``."""

    def __init__(self, cfg: Config, images: Images, bus: EventBus) -> None:
        self.cfg = cfg
        self.images = images
        self.bus = bus
        self.policy = TransportPolicy.from_list(cfg.insecure_registries)
        self.auth = AuthStore(cfg.auth_path)

    def register(self, d: jsonrpc.Dispatcher) -> None:
        d.add("image.pull", self.pull, accept_late=True)
        d.add("image.push", self.push, accept_late=True)
        d.add("auth.login", self.login)
        d.add("auth.logout", self.logout)

    def session(self, http: httpx.AsyncClient, host: str) -> Session:
        return Session(http, host, scheme=self.policy.scheme(host), credentials=self.auth.get(host))

    @staticmethod
    def _concurrency(p: jsonrpc.Params) -> int:
        n = p.integer("concurrency", 3)
        if not 1 <= n <= 32:
            raise InvalidArgument("concurrency must be between 1 and 32", field="concurrency")
        return int(n)

    async def pull(self, call: jsonrpc.Call) -> Any:
        """Pull ``ref`` (``[registry/]repo[:tag][@digest]``) from its registry: the manifest (the
        ``platform``'s, ``os/arch[/variant]``, from an index; default the host's), config and
        missing layers, ``concurrency`` at a time. Streams ``image.pull.progress`` notifications
        (``id``, ``digest``, ``action``, ``current``, ``total``); answers with the image."""
        p = call.params
        ref = imageref.parse(p.string("ref", required=True))
        platform = p.string("platform")
        concurrency = self._concurrency(p)

        async def send(event: dict[str, Any]) -> None:
            await call.notify("image.pull.progress", event)

        name = ref.tag_name() or ref.digest_name() or ref.familiar()
        call.accept()
        async with make_http_client() as http, ProgressRelay(send).running() as relay:

            def from_store(event: dict[str, Any]) -> None:
                relay.update(store_progress(event))

            source = RegistrySource(self.session(http, ref.domain), ref.path, progress=relay.update)
            rec = await self.images.ingest(
                source,
                ref.object,
                name,
                platform=platform,
                concurrency=concurrency,
                progress=from_store,
            )
        self.bus.publish(Event("image", "pull", rec.id, name, name))
        out = self.images.describe(rec)
        out["ref"] = name
        return out

    async def push(self, call: jsonrpc.Call) -> Any:
        """Push the local image ``ref`` to ``dest`` (default: ``ref``; a tag, not a digest):
        blobs the repository has are skipped, blobs another repository of the same registry has
        are mounted, the rest uploaded (in PATCH chunks of ``chunk_size`` bytes when larger),
        ``concurrency`` at a time; then the manifest. Streams ``image.push.progress``; answers
        ``{ref, digest, uploaded, existing, mounted}``."""
        p = call.params
        local = p.string("ref", required=True)
        dest = imageref.parse(p.string("dest") or local)
        if dest.tag is None:
            raise InvalidArgument(f"push needs a tag to push to, not only a digest: {dest}", field="dest")
        concurrency = self._concurrency(p)
        chunk_size = p.integer("chunk_size", DEFAULT_CHUNK_SIZE)
        exported = self.images.export(local)
        blobs = [
            PushBlob(d["digest"], int(d["size"]), exported.blob_path(d["digest"]), d.get("mediaType", ""))
            for d in [exported.config, *exported.layers]
        ]
        image_id = exported.record.id
        known = [*exported.repo_tags, *self.images.store.repo_digests(image_id)]
        mount_from = self._mount_sources(known, dest)

        async def send(event: dict[str, Any]) -> None:
            await call.notify("image.push.progress", event)

        call.accept()
        async with make_http_client() as http, ProgressRelay(send).running() as relay:
            target = RegistryTarget(
                self.session(http, dest.domain), dest.path, progress=relay.update, chunk_size=chunk_size
            )
            result = await target.push(
                dest.tag,
                exported.manifest_bytes,
                exported.media_type,
                blobs,
                concurrency=concurrency,
                mount_from=mount_from,
            )
        if self.images.store.get_image(image_id) is not None:  # not removed meanwhile
            with self.images.store.transaction():
                self.images.store.set_repo_digest(f"{dest.familiar_repository}@{result.digest}", image_id)
        self.bus.publish(Event("image", "push", image_id, dest.familiar(), dest.familiar()))
        return {
            "ref": dest.familiar(),
            "digest": result.digest,
            "uploaded": result.uploaded,
            "existing": result.existing,
            "mounted": result.mounted,
        }

    @staticmethod
    def _mount_sources(names: Iterable[str], dest: imageref.Reference) -> list[str]:
        """Repositories of ``dest``'s registry that the image is known by (its names and repo
        digests): a blob there can be mounted instead of uploaded."""
        out: list[str] = []
        for name in names:
            try:
                r = imageref.parse(name)
            except InvalidArgument:
                continue
            if r.domain == dest.domain and r.path != dest.path and r.path not in out:
                out.append(r.path)
        return out

    async def login(self, call: jsonrpc.Call) -> Any:
        """Check ``username``/``password`` against ``registry``'s ``GET /v2/`` (through its
        challenge: basic, or a bearer token) and save them (0600 file). Answers ``{registry}``;
        Unauthorized (failed_precondition) when the registry refuses them, nothing saved."""
        p = call.params
        host = check_host(p.string("registry", required=True))
        username = p.string("username", required=True)
        password = p.string("password", required=True)
        if not username or ":" in username:
            raise InvalidArgument("a username is required and may not contain ':'", field="username")
        if not password:
            raise InvalidArgument("a password is required", field="password")
        creds = Credentials(username, password)
        async with make_http_client(timeout=30.0) as http:
            session = Session(http, host, scheme=self.policy.scheme(host), credentials=creds)
            await session.ping()
            if session._challenge is None:
                log.info("%s asked for no authentication; saving the credentials anyway", host)
        self.auth.set(host, creds)
        return {"registry": host}

    async def logout(self, call: jsonrpc.Call) -> Any:
        """Forget the credentials of ``registry``. Answers ``{registry, removed}``."""
        host = check_host(call.params.string("registry", required=True))
        return {"registry": host, "removed": self.auth.remove(host)}
