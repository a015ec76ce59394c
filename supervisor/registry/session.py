"""A session with one registry: HTTP through ``httpx.AsyncClient`` (on asyncio and trio alike,
through anyio), the authentication flow (anonymous first; on ``401`` the ``WWW-Authenticate``
challenge decides: ``Basic``, or ``Bearer`` with a token fetched from the challenge's realm per
scope), and retries with exponential backoff on connection errors, ``429`` and ``5xx``.

httpx is imported lazily (57 ms): only a pull, push or login pays for it.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from tugwire.errors import FailedPrecondition, InvalidArgument, Unavailable

from ..auth import Challenge, Credentials, endpoint_host, parse_challenges

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("supervisor.registry")

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


def no_progress(event: dict[str, Any]) -> None:
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
    # One pull's own (CRI's AuthConfig, never saved): an OAuth2 refresh token for the token
    # server, or a bearer token sent to the registry as it is.
    identity_token: str | None = field(default=None, repr=False)
    registry_token: str | None = field(default=None, repr=False)
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
        if self.registry_token:
            return {"Authorization": "Bearer " + self.registry_token}
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
            if resp.status_code == 401 and not authorized and not self.registry_token:
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
                    f" ({error_text(resp)}); "
                    + (
                        "check the credentials"
                        if self.credentials or self.registry_token or self.identity_token
                        else f"run `tug login {self.host}`"
                    ),
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
                    f"{self.host} requires a login: run `tug login {self.host}`"
                    + (" (a token is no answer to its Basic challenge)" if self.identity_token else ""),
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
        form: dict[str, str] | None = None
        if self.identity_token:
            # OAuth2 (as docker and containerd do): the refresh token exchanged by a POST
            form = {
                "grant_type": "refresh_token",
                "refresh_token": self.identity_token,
                "client_id": "tugboat",
                "service": str(ch.params.get("service", "")),
                "scope": scope,
            }
        elif self.credentials is not None:
            params.append(("account", self.credentials.username))
            auth = httpx.BasicAuth(self.credentials.username, self.credentials.password)
        realm = ch.params["realm"]
        for attempt in range(self.retry.attempts):
            try:
                if form is not None:
                    resp = await self.http.post(realm, data=form)
                else:
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
                + ("the credentials" if self.credentials or form else "anonymous access")
                + f" ({error_text(resp)})",
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


def error_text(resp: httpx.Response) -> str:
    """The registry's own error message (``{"errors": [{"code", "message"}]}``), else the status."""
    try:
        errs = resp.json().get("errors") or []
        parts = [f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in errs]
        if parts:
            return "; ".join(parts)
    except (ValueError, AttributeError, TypeError):
        pass
    return f"HTTP {resp.status_code}"


def check_name(repo: str) -> str:
    if not repo or repo.startswith("/") or ".." in repo.split("/"):
        raise InvalidArgument(f"invalid repository name {repo!r}", field="image")
    return repo
