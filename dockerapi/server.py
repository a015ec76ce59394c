"""The request loop: accept (root and the tugboat group only), parse with :mod:`.http`, strip
and check the ``/v1.NN`` prefix, route to an adapter, map errors to docker's status codes."""

from __future__ import annotations

import json
import logging
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import h11
from anyio.abc import SocketAttribute

from tugwire import errors, jsonrpc, peers

from . import API_VERSION, MIN_API_VERSION
from .http import MAX_BODY, ClientGone, HttpConnection, HttpError, Request

log = logging.getLogger("tugboat.dockerapi")

Handler = Callable[..., Awaitable[None]]
_VERSION_PREFIX = re.compile(r"^/v(\d+)\.(\d+)(/.*)$")


def parse_version(text: str) -> tuple[int, int]:
    major, minor = text.split(".")
    return int(major), int(minor)


@dataclass
class Shared:
    """What every request of one server shares: tugd's socket."""

    tugd: str


@dataclass
class Ctx:
    """One request being served."""

    conn: HttpConnection
    req: Request
    version: tuple[int, int]
    shared: Shared

    @asynccontextmanager
    async def rpc(self) -> AsyncIterator[jsonrpc.RpcClient]:
        """A connection to tugd for the life of the block."""
        async with jsonrpc.connect(self.shared.tugd) as client:
            yield client

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """One tugd call on a connection of its own."""
        async with self.rpc() as client:
            return await client.call(method, params or {})

    async def body_json(self, *, required: bool = False) -> Any:
        """The body as JSON (None when empty and not ``required``); 400 if it is not JSON."""
        body = await self.conn.read_body()
        if not body.strip():
            if required:
                raise HttpError(400, "bad request: a JSON body is required")
            return None
        try:
            return json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise HttpError(400, f"invalid JSON body: {exc}") from None

    def at_least(self, version: str) -> bool:
        return self.version >= parse_version(version)


class Router:
    """Routes: method and a path pattern (named groups become the handler's keyword args)."""

    def __init__(self) -> None:
        self.routes: list[tuple[str, re.Pattern[str], Handler]] = []

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        self.routes.append((method, re.compile(f"^{pattern}$"), handler))

    def match(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        allowed = False
        for m, pattern, handler in self.routes:
            found = pattern.match(path)
            if found is None:
                continue
            if m == method or (m == "GET" and method == "HEAD"):
                return handler, found.groupdict()
            allowed = True
        if allowed:
            raise HttpError(405, f"method {method} not allowed for {path}")
        raise HttpError(404, f"page not found: {path}")


def make_router() -> Router:
    from . import archive, build, containers, execs, images, networks, stats, system

    router = Router()
    for module in (system, containers, execs, images, networks, archive, build, stats):
        module.register(router)
    return router


def error_status(exc: errors.TugError) -> int:
    """The HTTP status of a tugd error (adapters give docker's own messages where they differ)."""
    if isinstance(exc, errors.NotFound):
        return 404
    if isinstance(exc, (errors.AlreadyExists, errors.FailedPrecondition)):
        return 409
    if isinstance(exc, (errors.InvalidArgument, errors.InvalidParams)):
        return 400
    if isinstance(exc, errors.PermissionDenied):
        return 403
    if isinstance(exc, errors.Unavailable):
        return 503
    return 500


def split_version(path: str) -> tuple[tuple[int, int], str]:
    """``(version, path)`` of a request path, checking a ``/v1.NN`` prefix against the range."""
    found = _VERSION_PREFIX.match(path)
    if found is None:
        return parse_version(API_VERSION), path
    version = (int(found.group(1)), int(found.group(2)))
    text = f"{version[0]}.{version[1]}"
    if version > parse_version(API_VERSION):
        raise HttpError(
            400, f"client version {text} is too new. Maximum supported API version is {API_VERSION}"
        )
    if version < parse_version(MIN_API_VERSION):
        raise HttpError(
            400,
            f"client version {text} is too old. Minimum supported API version is {MIN_API_VERSION}, "
            "please upgrade your client to a newer version",
        )
    return version, found.group(3)


class Server:
    """Serves one listener until cancelled."""

    def __init__(self, tugd_socket: str, gid: int | None) -> None:
        self.shared = Shared(tugd_socket)
        self.gid = gid
        self.router = make_router()

    async def serve(self, listener: anyio.abc.SocketListener) -> None:
        """Accept and serve connections until cancelled."""
        async with listener, anyio.create_task_group() as tg:
            while True:
                try:
                    stream = await listener.accept()
                except (anyio.BrokenResourceError, OSError) as exc:
                    log.warning("cannot accept a connection: %s", exc)
                    await anyio.sleep(0.1)
                    continue
                tg.start_soon(self.connection, stream)

    async def connection(self, stream: anyio.abc.SocketStream) -> None:
        """One client connection: requests until it closes, or a hijack."""
        conn = HttpConnection(stream)
        try:
            sock: socket.socket = stream.extra(SocketAttribute.raw_socket)
            allowed, peer = peers.is_allowed(sock, self.gid)
            if not allowed:
                log.warning("refused a connection from uid %d gid %d (pid %d)", peer.uid, peer.gid, peer.pid)
                # Read its request first (a second at most, a bounded body) so that it gets the
                # answer instead of a reset, then answer 403 and close.
                with anyio.move_on_after(1):
                    try:
                        await conn.next_request()
                        await conn.drain_body(limit=1 << 20)
                    except HttpError:
                        pass
                message = (
                    f"permission denied: only {peers.who_may(self.gid)} may use this socket "
                    f"(you are uid {peer.uid})"
                )
                if conn.can_respond:
                    body = json.dumps({"message": message}).encode() + b"\n"
                    await conn.respond(403, body, headers=[("Connection", "close")])
                return
            while True:
                try:
                    req = await conn.next_request()
                except HttpError as exc:
                    if conn.can_respond:
                        await conn.respond_error(exc.status, exc.message)
                    return
                if req is None:
                    return
                await self.handle(conn, req)
                if not conn.hijacked and conn.h11.our_state is h11.DONE:
                    # A body the handler left unread (or only its end): read it to keep the
                    # connection, a bounded amount only; else the connection is closed.
                    try:
                        await conn.drain_body(limit=MAX_BODY)
                    except HttpError:
                        return
                if not _reusable(conn):
                    return
        except (ClientGone, HttpError, OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            log.debug("connection ended: %r", exc)
        except Exception:
            log.exception("connection failed")
        finally:
            with anyio.CancelScope(shield=True):
                # One turn of the loop first: a receive cancelled just now (watch_disconnect)
                # clears its future from a callback, and aclose() before that callback raises
                # InvalidStateError on asyncio (anyio issue #1267).
                await anyio.lowlevel.checkpoint()
                await stream.aclose()

    async def handle(self, conn: HttpConnection, req: Request) -> None:
        """Route one request and answer it; errors become docker's JSON error bodies."""
        log.debug("%s %s", req.method, req.target)
        try:
            version, path = split_version(req.path)
            handler, args = self.router.match(req.method, path)
            ctx = Ctx(conn, req, version, self.shared)
            await handler(ctx, **args)
        except HttpError as exc:
            await self._fail(conn, exc.status, exc.message)
        except errors.TugError as exc:
            await self._fail(conn, error_status(exc), exc.message if hasattr(exc, "message") else str(exc))
        except ClientGone:
            raise
        except Exception as exc:
            log.exception("%s %s failed", req.method, req.path)
            await self._fail(conn, 500, f"internal error: {exc}")

    async def _fail(self, conn: HttpConnection, status: int, message: str) -> None:
        if conn.can_respond:
            if status not in (400, 413):
                # The rest of a body that was fine: read it, so the connection can be kept.
                with anyio.move_on_after(5):
                    try:
                        await conn.drain_body(limit=MAX_BODY)
                    except HttpError:
                        pass
            if conn.can_respond:
                if status in (400, 413):  # the rest of the request cannot be trusted: close
                    await conn.respond(
                        status,
                        json.dumps({"message": message}).encode() + b"\n",
                        headers=[("Connection", "close")],
                    )
                else:
                    await conn.respond_error(status, message)
                return
        # The head went out already (a stream that failed half-way): close the connection, so
        # the client sees a truncated body rather than a complete one.
        raise ClientGone(message)


def _reusable(conn: HttpConnection) -> bool:
    return not conn.hijacked and conn.h11.our_state is h11.DONE and conn.h11.their_state is h11.DONE
