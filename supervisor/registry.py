"""The OCI distribution client: pull and push of manifests and blobs over HTTP(S), on
``httpx.AsyncClient`` (so on asyncio and trio alike, through anyio).

What it does, as the distribution spec and docker's client do:

- Authentication: anonymous first; on ``401`` the ``WWW-Authenticate`` challenge decides:
  ``Basic`` (saved credentials sent on every request) or ``Bearer`` (a token fetched from the
  challenge's ``realm`` for ``service`` and the scope we need, with the saved credentials as basic
  auth when there are any, cached per scope, fetched before the request once the realm is known).
- Retries with exponential backoff (0.2 s, doubling, at most 5 attempts) on connection errors,
  ``429`` and ``5xx``; a blob download broken mid-stream resumes with ``Range``.
- Manifests with ``Accept`` for OCI and docker schema 2 manifests and indexes, verified against
  the digest asked for (or the ``Docker-Content-Digest`` the registry states).
- Uploads: ``HEAD`` first (a blob the repository has is never sent again), then a cross-repository
  mount from a repository of the same registry we know holds it, then a monolithic ``PUT`` (the
  body streamed from the store) or, for blobs over the chunk size, ``PATCH`` chunks with
  ``Content-Range`` and a closing ``PUT ?digest=``.
- Transfers run concurrently, at most ``concurrency`` at a time.

httpx is imported lazily (57 ms): only a pull, push or login pays for it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import anyio

from tugwire import jsonrpc
from tugwire.errors import FailedPrecondition, InvalidArgument, NotFound, TugError, Unavailable

from . import imageref
from .auth import (
    AuthStore,
    Challenge,
    Credentials,
    TransportPolicy,
    check_host,
    endpoint_host,
    parse_challenges,
)
from .events import Event

if TYPE_CHECKING:
    import httpx

    from .config import Config
    from .events import EventBus
    from .images import Images

log = logging.getLogger(__name__)
T = TypeVar("T")

MEDIA_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_TYPES = (MEDIA_OCI_MANIFEST, MEDIA_OCI_INDEX, MEDIA_DOCKER_MANIFEST, MEDIA_DOCKER_LIST)
ACCEPT = ", ".join(MANIFEST_TYPES)

MAX_MANIFEST = 4 << 20  # as containerd: a manifest larger than this is refused
READ_CHUNK = 1 << 20
DEFAULT_CHUNK_SIZE = 32 << 20  # blobs larger than this are uploaded in PATCH chunks of this size
PROGRESS_STEP = 1 << 19  # report a transfer's progress at most every 512 KiB
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class Unauthorized(FailedPrecondition):
    """The registry refused us: no credentials, wrong ones, or no access to the repository."""


class DigestMismatch(InvalidArgument):
    """What the registry sent (or stored) does not match the digest it was asked for."""


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    base_delay: float = 0.2
    max_delay: float = 5.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based): 0.2, 0.4, 0.8, ..."""
        return float(min(self.max_delay, self.base_delay * (2**attempt)))


Progress = Callable[[dict[str, Any]], None]


def _no_progress(event: dict[str, Any]) -> None:
    pass


class BlobSink(Protocol):
    """Where a downloaded blob goes (the image store's writer)."""

    async def write(self, data: bytes) -> None: ...


def make_http_client(timeout: float = 60.0) -> httpx.AsyncClient:
    """One HTTP client for an operation: connection pooling across its requests, redirects
    followed (blobs may live behind a CDN; httpx drops Authorization across origins)."""
    import httpx

    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout, connect=min(10.0, timeout)),
        follow_redirects=True,
        limits=httpx.Limits(max_connections=16, max_keepalive_connections=8),
        headers={"User-Agent": "tugboat/0.1"},
    )


# ---------------------------------------------------------------------------------- session


@dataclass
class Session:
    """HTTP to one registry (``host`` as the user names it, e.g. ``127.0.0.1:5000``), with its
    credentials, its auth state (the challenge seen, tokens by scope) and a retry policy."""

    http: httpx.AsyncClient
    host: str
    scheme: str = "https"
    credentials: Credentials | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    _challenge: Challenge | None = None
    _tokens: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        auth = self._challenge.scheme if self._challenge else "anonymous"
        return f"<Session {self.scheme}://{self.host} auth={auth} tokens={len(self._tokens)}>"

    @property
    def base(self) -> str:
        return f"{self.scheme}://{endpoint_host(self.host)}"

    def url(self, path: str) -> str:
        return path if path.startswith(("http://", "https://")) else self.base + path

    def _auth_header(self, scope: str) -> dict[str, str]:
        ch = self._challenge
        if ch is None:
            return {}
        if ch.scheme == "basic" and self.credentials is not None:
            raw = f"{self.credentials.username}:{self.credentials.password}".encode()
            return {"Authorization": "Basic " + base64.b64encode(raw).decode()}
        if ch.scheme == "bearer" and scope in self._tokens:
            return {"Authorization": "Bearer " + self._tokens[scope]}
        return {}

    async def request(
        self,
        method: str,
        path: str,
        *,
        scope: str,
        headers: dict[str, str] | None = None,
        content: bytes | Callable[[], AsyncIterator[bytes]] | None = None,
        stream: bool = False,
    ) -> httpx.Response:
        """Send a request, answering an auth challenge once and retrying transient failures.

        ``content`` is bytes or a factory of a fresh body stream (called again for a retry).
        With ``stream``, the caller reads the body and must ``aclose()`` the response.
        Raises Unauthorized, or Unavailable when the registry cannot be reached."""
        import httpx

        url = self.url(path)
        authorized = False
        attempt = 0
        while True:
            bearer = self._challenge is not None and self._challenge.scheme == "bearer"
            if bearer and scope not in self._tokens:
                await self._fetch_token(scope)
            hdrs = {**(headers or {}), **self._auth_header(scope)}
            body = content() if callable(content) else content
            try:
                req = self.http.build_request(method, url, headers=hdrs, content=body)
                resp = await self.http.send(req, stream=True)
            except httpx.TransportError as exc:
                if self.scheme == "https" and _is_tls_error(exc):
                    # Not transient: most often a plain-HTTP registry spoken to over TLS.
                    raise Unavailable(
                        f"cannot reach registry {self.host} over HTTPS ({exc}); if it serves plain "
                        f"HTTP, start tugd with --insecure-registry {self.host}",
                        registry=self.host,
                    ) from exc
                if attempt + 1 >= self.retry.attempts:
                    raise Unavailable(
                        f"cannot reach registry {self.host}: {type(exc).__name__}: {exc}", registry=self.host
                    ) from exc
                log.info("%s %s: %s; retrying", method, url, exc)
                await anyio.sleep(self.retry.delay(attempt))
                attempt += 1
                continue
            if resp.status_code == 401 and not authorized:
                authorized = True
                await resp.aclose()
                await self._answer_challenge(resp.headers.get("www-authenticate", ""), scope)
                continue
            if resp.status_code in RETRYABLE_STATUS and attempt + 1 < self.retry.attempts:
                await resp.aclose()
                log.info("%s %s: HTTP %d; retrying", method, url, resp.status_code)
                await anyio.sleep(self.retry.delay(attempt))
                attempt += 1
                continue
            if resp.status_code in (401, 403):
                await resp.aread()
                await resp.aclose()
                raise Unauthorized(
                    f"{self.host}: {'access denied' if resp.status_code == 403 else 'unauthorized'}"
                    f" ({_error_text(resp)}); "
                    + ("check the saved credentials" if self.credentials else f"run `tug login {self.host}`"),
                    state="unauthorized",
                    registry=self.host,
                )
            if not stream:
                try:
                    await resp.aread()
                except httpx.TransportError as exc:
                    await resp.aclose()
                    if attempt + 1 >= self.retry.attempts:
                        raise Unavailable(f"registry {self.host}: {exc}", registry=self.host) from exc
                    await anyio.sleep(self.retry.delay(attempt))
                    attempt += 1
                    continue
                await resp.aclose()
            return resp

    async def _answer_challenge(self, header: str, scope: str) -> None:
        challenges = parse_challenges(header)
        bearer = next((c for c in challenges if c.scheme == "bearer" and "realm" in c.params), None)
        basic = next((c for c in challenges if c.scheme == "basic"), None)
        if bearer is not None:
            self._challenge = bearer
            self._tokens.pop(scope, None)
            await self._fetch_token(scope)
        elif basic is not None:
            if self.credentials is None:
                raise Unauthorized(
                    f"{self.host} requires a login: run `tug login {self.host}`",
                    state="unauthorized",
                    registry=self.host,
                )
            self._challenge = basic
        else:
            raise Unauthorized(
                f"{self.host} asked for an authentication we do not speak: {header!r}",
                state="unauthorized",
                registry=self.host,
            )

    async def _fetch_token(self, scope: str) -> None:
        """The bearer flow: GET realm?service=...&scope=... (basic auth with our credentials, if
        any); the answer's ``token`` (or ``access_token``) is used for ``scope`` from now on."""
        import httpx

        ch = self._challenge
        assert ch is not None
        params: list[tuple[str, str | int | float | bool | None]] = []
        if "service" in ch.params:
            params.append(("service", ch.params["service"]))
        params += [("scope", s) for s in scope.split(" ") if s]
        auth = None
        if self.credentials is not None:
            params.append(("account", self.credentials.username))
            auth = httpx.BasicAuth(self.credentials.username, self.credentials.password)
        realm = ch.params["realm"]
        for attempt in range(self.retry.attempts):
            try:
                resp = await self.http.get(realm, params=params, auth=auth)
            except httpx.TransportError as exc:
                if attempt + 1 >= self.retry.attempts:
                    raise Unavailable(f"cannot reach the token server {realm}: {exc}") from exc
                await anyio.sleep(self.retry.delay(attempt))
                continue
            if resp.status_code in RETRYABLE_STATUS and attempt + 1 < self.retry.attempts:
                await anyio.sleep(self.retry.delay(attempt))
                continue
            break
        if resp.status_code in (401, 403):
            raise Unauthorized(
                f"{self.host}: the token server refused "
                + ("the credentials" if self.credentials else "anonymous access")
                + f" ({_error_text(resp)})",
                state="unauthorized",
                registry=self.host,
            )
        if resp.status_code != 200:
            raise Unavailable(f"token server {realm} answered HTTP {resp.status_code}", registry=self.host)
        try:
            doc = resp.json()
            token = doc.get("token") or doc.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise Unavailable(f"token server {realm} sent no token", registry=self.host)
        self._tokens[scope] = token

    async def ping(self) -> None:
        """``GET /v2/``: checks that this is a registry and that we may use it (a login)."""
        resp = await self.request("GET", "/v2/", scope="")
        if resp.status_code != 200:
            raise Unavailable(
                f"{self.host} does not look like a registry: GET /v2/ answered HTTP {resp.status_code}",
                registry=self.host,
            )


def _is_tls_error(exc: BaseException) -> bool:
    """Whether a transport error is a TLS failure (handshake, certificate), not a network one."""
    import ssl

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return "SSL" in str(exc) or "CERTIFICATE" in str(exc).upper()


def _error_text(resp: httpx.Response) -> str:
    """The registry's own error message (``{"errors": [{"code", "message"}]}``), else the status."""
    try:
        errs = resp.json().get("errors") or []
        parts = [f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in errs]
        if parts:
            return "; ".join(parts)
    except (ValueError, AttributeError, TypeError):
        pass
    return f"HTTP {resp.status_code}"


def _check_name(repo: str) -> str:
    if not repo or repo.startswith("/") or ".." in repo.split("/"):
        raise InvalidArgument(f"invalid repository name {repo!r}", field="image")
    return repo


# ---------------------------------------------------------------------------------- pulling


class RegistrySource:
    """An ``ImageSource`` on one repository of a registry: manifests and blobs, verified."""

    def __init__(self, session: Session, repository: str, progress: Progress | None = None) -> None:
        self.session = session
        self.repository = _check_name(repository)
        self.progress = progress or _no_progress
        self.scope = f"repository:{repository}:pull"

    def __repr__(self) -> str:
        return f"<RegistrySource {self.session.host}/{self.repository}>"

    async def get_manifest(self, reference: str) -> tuple[bytes, str]:
        """The bytes and media type of the manifest or index named by a tag or a digest; its
        digest is checked against the one asked for, else against ``Docker-Content-Digest``."""
        resp = await self.session.request(
            "GET",
            f"/v2/{self.repository}/manifests/{reference}",
            scope=self.scope,
            headers={"Accept": ACCEPT},
        )
        if resp.status_code == 404:
            raise NotFound(
                f"{self.session.host}/{self.repository}:{reference}: manifest unknown ({_error_text(resp)})",
                field="image",
            )
        if resp.status_code != 200:
            raise Unavailable(
                f"{self.session.host}: GET manifest {reference} answered HTTP {resp.status_code} "
                f"({_error_text(resp)})",
                registry=self.session.host,
            )
        body = resp.content
        if len(body) > MAX_MANIFEST:
            raise InvalidArgument(f"the manifest of {reference} is over {MAX_MANIFEST} bytes")
        actual = sha256_digest(body)
        expected = reference if reference.startswith("sha256:") else resp.headers.get("docker-content-digest")
        if expected and expected.startswith("sha256:") and expected != actual:
            raise DigestMismatch(
                f"{self.session.host}/{self.repository}: manifest {reference} has digest {actual}, "
                f"expected {expected}"
            )
        media = resp.headers.get("content-type", "").split(";")[0].strip()
        if media not in MANIFEST_TYPES:
            try:
                declared = json.loads(body).get("mediaType")
            except (ValueError, AttributeError):
                declared = None
            media = declared if isinstance(declared, str) and declared else MEDIA_OCI_MANIFEST
        return body, media

    async def fetch_blob(self, desc: dict[str, Any], writer: BlobSink) -> None:
        """Stream the blob ``desc`` into ``writer``; a connection broken midway resumes with a
        ``Range`` request. The size is checked here; the digest by the writer as it commits."""
        import httpx

        digest = str(desc["digest"])
        size = int(desc.get("size", -1))
        written = 0
        last_report = 0
        event = {"id": digest[7:19], "digest": digest, "action": "downloading", "current": 0, "total": size}
        self.progress(dict(event))
        resumes = 0
        while True:
            headers = {"Range": f"bytes={written}-"} if written else {}
            resp = await self.session.request(
                "GET", f"/v2/{self.repository}/blobs/{digest}", scope=self.scope, headers=headers, stream=True
            )
            try:
                if resp.status_code == 404:
                    raise NotFound(f"{self.session.host}/{self.repository}: blob {digest} unknown")
                if written and resp.status_code != 206:
                    raise Unavailable(f"{self.session.host} cannot resume blob {digest} (no Range support)")
                if resp.status_code not in (200, 206):
                    await resp.aread()
                    raise Unavailable(
                        f"{self.session.host}: GET blob {digest} answered HTTP {resp.status_code} "
                        f"({_error_text(resp)})"
                    )
                try:
                    async for chunk in resp.aiter_raw(READ_CHUNK):
                        written += len(chunk)
                        if size >= 0 and written > size:
                            raise DigestMismatch(f"blob {digest} is larger than its stated {size} bytes")
                        await writer.write(chunk)
                        if written - last_report >= PROGRESS_STEP:
                            last_report = written
                            self.progress({**event, "current": written})
                except httpx.TransportError as exc:
                    resumes += 1
                    if resumes >= self.session.retry.attempts:
                        raise Unavailable(f"{self.session.host}: blob {digest}: {exc}") from exc
                    log.info("blob %s broke after %d bytes (%s): resuming", digest, written, exc)
                    await anyio.sleep(self.session.retry.delay(resumes - 1))
                    continue
            finally:
                await resp.aclose()
            break
        if size >= 0 and written != size:
            raise DigestMismatch(f"blob {digest} has {written} bytes, expected {size}")
        self.progress({**event, "action": "downloaded", "current": written})


# ---------------------------------------------------------------------------------- pushing


@dataclass(frozen=True)
class PushBlob:
    """A blob to push: its descriptor and where its bytes are on disk."""

    digest: str
    size: int
    path: str
    media_type: str = "application/octet-stream"


@dataclass(frozen=True)
class PushResult:
    digest: str
    uploaded: list[str]
    existing: list[str]
    mounted: list[str]


def _file_body(path: str, start: int = 0, length: int | None = None) -> Callable[[], AsyncIterator[bytes]]:
    """A factory of async iterators over (part of) a file, for a request body that a retry can
    send again."""

    async def body() -> AsyncIterator[bytes]:
        left = length
        with open(path, "rb") as f:
            f.seek(start)
            while left is None or left > 0:
                n = READ_CHUNK if left is None else min(READ_CHUNK, left)
                chunk = f.read(n)
                if not chunk:
                    break
                if left is not None:
                    left -= len(chunk)
                yield chunk
                await anyio.lowlevel.checkpoint()

    return body


class RegistryTarget:
    """Pushing to one repository of a registry."""

    def __init__(
        self,
        session: Session,
        repository: str,
        *,
        progress: Progress | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        if chunk_size < 1024:
            raise InvalidArgument("chunk_size must be at least 1024 bytes", field="chunk_size")
        self.session = session
        self.repository = _check_name(repository)
        self.progress = progress or _no_progress
        self.chunk_size = chunk_size
        self.scope = f"repository:{repository}:pull,push"

    def __repr__(self) -> str:
        return f"<RegistryTarget {self.session.host}/{self.repository}>"

    def _blob_path(self, digest: str) -> str:
        return f"/v2/{self.repository}/blobs/{digest}"

    async def has_blob(self, digest: str) -> bool:
        resp = await self.session.request("HEAD", self._blob_path(digest), scope=self.scope)
        if resp.status_code == 200:
            return True
        if resp.status_code == 404:
            return False
        raise Unavailable(f"{self.session.host}: HEAD blob {digest} answered HTTP {resp.status_code}")

    async def push_blob(self, blob: PushBlob, mount_from: Iterable[str] = ()) -> str:
        """Make the repository hold ``blob``: ``exists``, ``mounted`` or ``uploaded``."""
        event = {"id": blob.digest[7:19], "digest": blob.digest, "current": 0, "total": blob.size}
        if await self.has_blob(blob.digest):
            self.progress({**event, "action": "exists", "current": blob.size})
            return "exists"
        location: str | None = None
        for source in mount_from:
            if source == self.repository:
                continue
            q = urllib.parse.urlencode({"mount": blob.digest, "from": source})
            scope = f"{self.scope} repository:{source}:pull"
            resp = await self.session.request(
                "POST", f"/v2/{self.repository}/blobs/uploads/?{q}", scope=scope
            )
            if resp.status_code == 201:
                self.progress({**event, "action": "mounted", "current": blob.size})
                return "mounted"
            if resp.status_code == 202:
                location = resp.headers.get("location")  # no mount: an upload session instead
                break
        for attempt in range(self.session.retry.attempts):
            try:
                await self._upload(blob, location, event)
                break
            except (Unavailable, _UploadFailed) as exc:
                location = None
                if attempt + 1 >= self.session.retry.attempts:
                    if isinstance(exc, TugError):
                        raise
                    raise Unavailable(str(exc)) from exc
                log.info("upload of %s failed (%s); starting it again", blob.digest, exc)
                await anyio.sleep(self.session.retry.delay(attempt))
        self.progress({**event, "action": "pushed", "current": blob.size})
        return "uploaded"

    async def _start_upload(self) -> str:
        resp = await self.session.request("POST", f"/v2/{self.repository}/blobs/uploads/", scope=self.scope)
        if resp.status_code != 202 or "location" not in resp.headers:
            raise _UploadFailed(f"POST blobs/uploads answered HTTP {resp.status_code} ({_error_text(resp)})")
        return resp.headers["location"]

    async def _upload(self, blob: PushBlob, location: str | None, event: dict[str, Any]) -> None:
        if location is None:
            location = await self._start_upload()
        self.progress({**event, "action": "uploading"})
        if blob.size > self.chunk_size:
            offset = 0
            while offset < blob.size:
                n = min(self.chunk_size, blob.size - offset)
                resp = await self.session.request(
                    "PATCH",
                    location,
                    scope=self.scope,
                    headers={
                        "Content-Type": "application/octet-stream",
                        "Content-Range": f"{offset}-{offset + n - 1}",
                        "Content-Length": str(n),
                    },
                    content=_file_body(blob.path, offset, n),
                )
                if resp.status_code != 202 or "location" not in resp.headers:
                    raise _UploadFailed(
                        f"PATCH chunk {offset}-{offset + n - 1} of {blob.digest} answered HTTP "
                        f"{resp.status_code} ({_error_text(resp)})"
                    )
                location = resp.headers["location"]
                offset += n
                self.progress({**event, "action": "uploading", "current": offset})
            body: bytes | Callable[[], AsyncIterator[bytes]] | None = b""
            length = 0
        else:
            body = _file_body(blob.path)
            length = blob.size
        sep = "&" if "?" in location else "?"
        resp = await self.session.request(
            "PUT",
            f"{location}{sep}{urllib.parse.urlencode({'digest': blob.digest})}",
            scope=self.scope,
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(length)},
            content=body,
        )
        if resp.status_code != 201:
            text = _error_text(resp)
            if "DIGEST_INVALID" in text:
                raise DigestMismatch(
                    f"the registry says blob {blob.digest} does not match its digest: {text}"
                )
            raise _UploadFailed(f"PUT blob {blob.digest} answered HTTP {resp.status_code} ({text})")

    async def put_manifest(self, reference: str, body: bytes, media_type: str) -> str:
        """PUT the manifest under a tag (or its digest); returns its digest, checked against the
        one the registry states."""
        digest = sha256_digest(body)
        resp = await self.session.request(
            "PUT",
            f"/v2/{self.repository}/manifests/{reference}",
            scope=self.scope,
            headers={"Content-Type": media_type},
            content=body,
        )
        if resp.status_code not in (200, 201):
            raise Unavailable(
                f"{self.session.host}: PUT manifest {reference} answered HTTP {resp.status_code} "
                f"({_error_text(resp)})",
                registry=self.session.host,
            )
        stated = resp.headers.get("docker-content-digest")
        if stated and stated != digest:
            raise DigestMismatch(f"the registry stored manifest {stated}, we sent {digest}")
        return digest

    async def push(
        self,
        tag: str,
        manifest: bytes,
        media_type: str,
        blobs: list[PushBlob],
        *,
        concurrency: int = 3,
        mount_from: Iterable[str] = (),
    ) -> PushResult:
        """Push the blobs (at most ``concurrency`` at a time), then the manifest under ``tag``."""
        if concurrency < 1:
            raise InvalidArgument("concurrency must be at least 1", field="concurrency")
        sources = list(mount_from)
        outcome: dict[str, str] = {}
        limiter = anyio.CapacityLimiter(concurrency)
        unique = list({b.digest: b for b in blobs}.values())

        async def one(blob: PushBlob) -> None:
            async with limiter:
                outcome[blob.digest] = await self.push_blob(blob, sources)

        await run_all(one, unique)
        digest = await self.put_manifest(tag, manifest, media_type)
        return PushResult(
            digest=digest,
            uploaded=[d for d, o in outcome.items() if o == "uploaded"],
            existing=[d for d, o in outcome.items() if o == "exists"],
            mounted=[d for d, o in outcome.items() if o == "mounted"],
        )


class _UploadFailed(Exception):
    """An upload session went wrong in a way that starting it again may fix."""


async def run_all(fn: Callable[[T], Awaitable[None]], items: Iterable[T]) -> None:
    """``fn(item)`` for every item, concurrently in a task group; the first TugError cancels the
    others and is raised as itself (not wrapped in an exception group)."""
    failure: list[TugError] = []
    async with anyio.create_task_group() as tg:

        async def guarded(item: T) -> None:
            try:
                await fn(item)
            except TugError as exc:
                if not failure:
                    failure.append(exc)
                tg.cancel_scope.cancel()

        for item in items:
            tg.start_soon(guarded, item)
    if failure:
        raise failure[0]


# ---------------------------------------------------------------------------------- the service


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


def _store_progress(event: dict[str, Any]) -> dict[str, Any]:
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
                relay.update(_store_progress(event))

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
