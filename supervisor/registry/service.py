"""The registry service: pull, push, login and logout, with typed requests and records and no
knowledge of any transport. A pull or a push is a :class:`Transfer`: an async iterator of its
progress, then its result; the front doors turn the progress into whatever their clients read
(``image.pull.progress`` notifications for JSON-RPC)."""

from __future__ import annotations

import base64
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import anyio

from tugwire import imageref
from tugwire.errors import InvalidArgument

from ..auth import DOCKER_HUB, AuthStore, Credentials, TransportPolicy, check_host
from ..events import Event
from ..store import ImageRecord
from .session import DEFAULT_CHUNK_SIZE, RetryPolicy, Session, make_http_client
from .transfer import PushBlob, RegistrySource, RegistryTarget

if TYPE_CHECKING:
    import httpx

    from ..config import Config
    from ..events import EventBus
    from ..images import Images

log = logging.getLogger("supervisor.registry")
T = TypeVar("T")
# A mirror that does not answer is given one more try, not five: docker.io is behind it.
MIRROR_RETRY = RetryPolicy(attempts=2)


# ------------------------------------------------------------------------- requests and records


@dataclass(frozen=True)
class PullAuth:
    """Credentials of one pull (the CRI's ``AuthConfig``), used for that pull only and never
    saved: a username and password (Basic, or for the token server), an OAuth2 refresh token
    (``identity_token``) the token server exchanges, or a bearer ``registry_token`` sent to the
    registry as it is."""

    credentials: Credentials | None = None
    identity_token: str | None = None
    registry_token: str | None = None

    def __repr__(self) -> str:  # never show a secret, even in a traceback
        kinds = [k for k in ("credentials", "identity_token", "registry_token") if getattr(self, k)]
        return f"PullAuth({', '.join(kinds)})"

    KEYS = ("username", "password", "auth", "identity_token", "registry_token")

    @classmethod
    def parse(cls, raw: dict[str, str]) -> PullAuth | None:
        """``image.pull``'s ``auth`` -> PullAuth, or None when it holds nothing. The precedence
        is containerd's: ``username`` (with ``password``), then ``identity_token``, then
        ``auth`` (base64 of ``username:password``), then ``registry_token``. Raises
        InvalidArgument for an unknown key, a password without a username, a bad ``auth``."""
        unknown = sorted(set(raw) - set(cls.KEYS))
        if unknown:
            raise InvalidArgument(
                f"auth: unknown key(s) {', '.join(unknown)} (known: {', '.join(cls.KEYS)})", param="auth"
            )
        user, password = raw.get("username", ""), raw.get("password", "")
        if password and not user:
            raise InvalidArgument("auth: a password without a username", param="auth")
        if user:
            return cls(credentials=Credentials(user, password))
        if raw.get("identity_token"):
            return cls(identity_token=raw["identity_token"])
        if raw.get("auth"):
            try:
                text = base64.b64decode(raw["auth"], validate=True).decode()
            except (ValueError, UnicodeDecodeError):
                raise InvalidArgument(
                    "auth: 'auth' is not base64 of username:password", param="auth"
                ) from None
            name, colon, secret = text.partition(":")
            if not colon or not name:
                raise InvalidArgument("auth: 'auth' is not base64 of username:password", param="auth")
            return cls(credentials=Credentials(name, secret))
        if raw.get("registry_token"):
            return cls(registry_token=raw["registry_token"])
        return None


@dataclass(frozen=True)
class PullRequest:
    """Pull ``ref`` (``[registry/]repo[:tag][@digest]``); ``platform`` (``os/arch[/variant]``)
    picks from an index (default: the host's); ``concurrency`` transfers at a time (1 to 32);
    ``auth``: the registry's credentials for this pull only (else those saved by a login)."""

    ref: str
    platform: str | None = None
    concurrency: int = 3
    auth: PullAuth | None = None


@dataclass(frozen=True)
class PulledImage:
    """A pulled image and the name it was recorded under."""

    record: ImageRecord
    ref: str


@dataclass(frozen=True)
class PushRequest:
    """Push the local image ``ref`` to ``dest`` (default: ``ref``; a tag, not a digest), blobs
    over ``chunk_size`` bytes in PATCH chunks, ``concurrency`` transfers at a time (1 to 32)."""

    ref: str
    dest: str | None = None
    concurrency: int = 3
    chunk_size: int = DEFAULT_CHUNK_SIZE


@dataclass(frozen=True)
class PushedImage:
    """What a push did: the manifest's digest and which blobs were uploaded, already there, or
    mounted from another repository."""

    ref: str
    digest: str
    uploaded: list[str]
    existing: list[str]
    mounted: list[str]


@dataclass(frozen=True)
class LoginRequest:
    registry: str
    username: str
    password: str


# ------------------------------------------------------------------------------------ transfers


class Transfer(Generic[T]):
    """A pull or push in progress (from :meth:`RegistryService.pull` or ``push``, as an async
    context manager). Iterating gives its progress events (``{id, digest, action, current,
    total}``), coalesced: only the latest state of each layer waits to be read, so a slow reader
    never slows the transfer, and the last state of every layer is always given. The iteration
    ends when the transfer does; then :attr:`result` holds its record (a failure is raised by the
    ``async with``, as itself). Leaving the ``async with`` early waits for the transfer."""

    def __init__(self) -> None:
        self._pending: dict[str, dict[str, Any]] = {}
        self._wake = anyio.Event()
        self._finished = False
        self._result: T | None = None

    def __repr__(self) -> str:
        return f"<Transfer pending={len(self._pending)} finished={self._finished}>"

    def update(self, event: dict[str, Any]) -> None:
        """Record a progress event (the synchronous callback the transfer code calls)."""
        key = str(event.get("id", ""))
        self._pending.pop(key, None)
        self._pending[key] = dict(event)
        self._wake.set()

    def _finish(self) -> None:
        self._finished = True
        self._wake.set()

    def __aiter__(self) -> Transfer[T]:
        return self

    async def __anext__(self) -> dict[str, Any]:
        while True:
            if self._pending:
                return self._pending.pop(next(iter(self._pending)))
            if self._finished:
                raise StopAsyncIteration
            await self._wake.wait()
            self._wake = anyio.Event()

    @property
    def result(self) -> T:
        """The transfer's record, once it has ended well."""
        if self._result is None:
            raise RuntimeError("the transfer has not completed")
        return self._result


@contextlib.asynccontextmanager
async def run_transfer(op: Callable[[Transfer[T]], Awaitable[T]]) -> AsyncIterator[Transfer[T]]:
    """Run ``op`` in a task of its own while the body reads its :class:`Transfer`. The first
    failure of either is raised as itself, not wrapped in an exception group."""
    transfer: Transfer[T] = Transfer()
    failure: list[Exception] = []
    body_exc: BaseException | None = None

    async def run() -> None:
        try:
            transfer._result = await op(transfer)
        except Exception as exc:
            failure.append(exc)
        finally:
            transfer._finish()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        try:
            yield transfer
        except BaseException as exc:
            body_exc = exc
            tg.cancel_scope.cancel()
    if body_exc is not None:
        raise body_exc
    if failure:
        raise failure[0]


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


def check_concurrency(n: int) -> int:
    if not 1 <= n <= 32:
        raise InvalidArgument("concurrency must be between 1 and 32", field="concurrency")
    return n


# ------------------------------------------------------------------------------------ the service


class RegistryService:
    """Pull, push, login and logout, with the saved credentials and the transport policy
    (``--insecure-registry``); publishes the ``pull`` and ``push`` events."""

    def __init__(self, cfg: Config, images: Images, bus: EventBus) -> None:
        self.cfg = cfg
        self.images = images
        self.bus = bus
        self.policy = TransportPolicy.from_list(cfg.insecure_registries)
        self.auth = AuthStore(cfg.auth_path)

    def session(self, http: httpx.AsyncClient, host: str) -> Session:
        return Session(http, host, scheme=self.policy.scheme(host), credentials=self.auth.get(host))

    def _sources(self, http: httpx.AsyncClient, domain: str, auth: PullAuth | None = None) -> list[Session]:
        """Where a pull from ``domain`` tries, in order: its mirrors (``--registry-mirror``:
        docker.io's plain ones, another registry's ``REGISTRY=URL`` ones; each with its own scheme
        and saved credentials, and a shorter retry policy) first, then the registry itself,
        always last (with ``auth`` when the pull has its own). A mirror serves the same
        repository paths under its own host."""
        out: list[Session] = []
        if domain == DOCKER_HUB:
            urls = list(self.cfg.registry_mirrors)
        else:
            urls = [u for r, u in self.cfg.registry_mirror_map if r == domain]
        for url in urls:
            scheme, _, host = url.partition("://")
            out.append(
                Session(http, host, scheme=scheme, credentials=self.auth.get(host), retry=MIRROR_RETRY)
            )
        registry = self.session(http, domain)
        if auth is not None:
            registry.credentials = auth.credentials
            registry.identity_token = auth.identity_token
            registry.registry_token = auth.registry_token
        out.append(registry)
        return out

    def pull(self, req: PullRequest) -> contextlib.AbstractAsyncContextManager[Transfer[PulledImage]]:
        """Pull ``req.ref`` from its registry: the manifest (the platform's, from an index),
        config and missing layers. A docker.io name is tried at each registry mirror first, in
        order; a mirror that fails or lacks the image is logged and the next source tried. The
        request is checked at once (InvalidArgument), the transfer runs in the ``async with``
        (see :class:`Transfer`)."""
        ref = imageref.parse(req.ref)
        check_concurrency(req.concurrency)
        name = ref.tag_name() or ref.digest_name() or ref.familiar()

        async def op(transfer: Transfer[PulledImage]) -> PulledImage:
            async with make_http_client() as http:

                def from_store(event: dict[str, Any]) -> None:
                    transfer.update(store_progress(event))

                rec: ImageRecord | None = None
                sources = self._sources(http, ref.domain, req.auth)
                for i, session in enumerate(sources):
                    mirror = i < len(sources) - 1
                    source = RegistrySource(session, ref.path, progress=transfer.update)
                    try:
                        rec = await self.images.ingest(
                            source,
                            ref.object,
                            name,
                            platform=req.platform,
                            concurrency=req.concurrency,
                            progress=from_store,
                        )
                    except Exception as exc:
                        if not mirror:  # the registry itself: its failure is the pull's
                            raise
                        log.warning(
                            "pull %s: mirror %s failed, trying the next source: %s", name, session.base, exc
                        )
                        continue
                    if mirror:
                        log.info("pull %s: from mirror %s", name, session.base)
                    break
                assert rec is not None  # the last source is the registry itself, which raises
            self.bus.publish(Event("image", "pull", rec.id, name, name))
            return PulledImage(rec, name)

        return run_transfer(op)

    def push(self, req: PushRequest) -> contextlib.AbstractAsyncContextManager[Transfer[PushedImage]]:
        """Push the local image ``req.ref`` to ``req.dest``: blobs the repository has are
        skipped, blobs another repository of the same registry has are mounted, the rest
        uploaded; then the manifest. The request and the image are checked at once (NotFound,
        InvalidArgument); the transfer runs in the ``async with`` (see :class:`Transfer`)."""
        dest = imageref.parse(req.dest or req.ref)
        if dest.tag is None:
            raise InvalidArgument(f"push needs a tag to push to, not only a digest: {dest}", field="dest")
        check_concurrency(req.concurrency)
        exported = self.images.export(req.ref)
        blobs = [
            PushBlob(d["digest"], int(d["size"]), exported.blob_path(d["digest"]), d.get("mediaType", ""))
            for d in [exported.config, *exported.layers]
        ]
        image_id = exported.record.id
        known = [*exported.repo_tags, *self.images.store.repo_digests(image_id)]
        mount_from = self._mount_sources(known, dest)
        tag = dest.tag

        async def op(transfer: Transfer[PushedImage]) -> PushedImage:
            async with make_http_client() as http:
                target = RegistryTarget(
                    self.session(http, dest.domain),
                    dest.path,
                    progress=transfer.update,
                    chunk_size=req.chunk_size,
                )
                result = await target.push(
                    tag,
                    exported.manifest_bytes,
                    exported.media_type,
                    blobs,
                    concurrency=req.concurrency,
                    mount_from=mount_from,
                )
            if self.images.store.get_image(image_id) is not None:  # not removed meanwhile
                with self.images.store.transaction():
                    self.images.store.set_repo_digest(f"{dest.familiar_repository}@{result.digest}", image_id)
            self.bus.publish(Event("image", "push", image_id, dest.familiar(), dest.familiar()))
            return PushedImage(
                dest.familiar(), result.digest, result.uploaded, result.existing, result.mounted
            )

        return run_transfer(op)

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

    async def login(self, req: LoginRequest) -> str:
        """Check the credentials against the registry's ``GET /v2/`` (through its challenge:
        basic, or a bearer token) and save them (0600 file). Returns the registry's host;
        Unauthorized (failed_precondition) when the registry refuses them, nothing saved."""
        host = check_host(req.registry)
        if not req.username or ":" in req.username:
            raise InvalidArgument("a username is required and may not contain ':'", field="username")
        if not req.password:
            raise InvalidArgument("a password is required", field="password")
        creds = Credentials(req.username, req.password)
        async with make_http_client(timeout=30.0) as http:
            session = Session(http, host, scheme=self.policy.scheme(host), credentials=creds)
            await session.ping()
            if session._challenge is None:
                log.info("%s asked for no authentication; saving the credentials anyway", host)
        self.auth.set(host, creds)
        return host

    def logout(self, registry: str) -> tuple[str, bool]:
        """Forget the credentials of ``registry``: (its host, whether there were any)."""
        host = check_host(registry)
        return host, self.auth.remove(host)
