"""HTTP/1.1 for the Docker API, on h11 (the parser under httpcore and uvicorn) over an anyio byte
stream, so it runs on asyncio and trio alike. No HTTP is parsed by hand here: h11 parses requests
and frames responses (Content-Length, chunked), and hands over the raw connection after a
``101 UPGRADED`` for docker's hijacked attach and exec streams.

Limits: the request line and headers together at most :data:`MAX_HEAD` bytes (431 beyond), a body
read into memory at most :data:`MAX_BODY` bytes (413), a body spooled to a file (image tars, build
contexts) at most :data:`MAX_UPLOAD`. A request with both ``Content-Length`` and
``Transfer-Encoding`` (the classic smuggling shape) is refused with 400 before its body is read.
"""

from __future__ import annotations

import json
import select
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import IO, Any

import anyio
import anyio.abc
import h11

MAX_HEAD = 64 * 1024  # request line + headers (dockerd allows about 1 MiB; clients send < 4 KiB)
MAX_BODY = 8 << 20  # a JSON body
MAX_UPLOAD = 64 << 30  # a tar body spooled to disk
READ_SIZE = 1 << 16
_MIGHT_SWITCH = getattr(h11, "MIGHT_SWITCH_PROTOCOL")  # noqa: B009 (exported, not in the stubs' __all__)


class HttpError(Exception):
    """An error answered with ``status`` and docker's ``{"message": ...}`` body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ClientGone(Exception):
    """The client closed its connection (or broke it) before we were done."""


@dataclass
class Request:
    """One parsed request: the method, the path without its query, the query's values, the
    headers (names lower-case; a repeated header's last value)."""

    method: str
    target: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    header_list: list[tuple[str, str]] = field(default_factory=list)

    def arg(self, name: str, default: str | None = None) -> str | None:
        """The last value of query parameter ``name``."""
        values = self.query.get(name)
        return values[-1] if values else default

    def flag(self, name: str, default: bool = False) -> bool:
        """A boolean query parameter as docker reads them: ``1``/``true``/``True`` are true, ``0``,
        ``false`` and empty are false; anything else is a 400."""
        value = self.arg(name)
        if value is None:
            return default
        if value.lower() in ("1", "true", "yes"):
            return True
        if value.lower() in ("0", "false", "no", ""):
            return False
        raise HttpError(400, f"invalid boolean value {value!r} for query parameter {name!r}")

    def integer(self, name: str, default: int | None = None) -> int | None:
        """An integer query parameter (400 if it is not one)."""
        value = self.arg(name)
        if value is None or value == "":
            return default
        try:
            return int(value)
        except ValueError:
            raise HttpError(400, f"invalid value {value!r} for query parameter {name!r}") from None

    def json_arg(self, name: str) -> Any:
        """A query parameter holding JSON (docker's ``filters``), None when absent."""
        value = self.arg(name)
        if not value:
            return None
        try:
            return json.loads(value)
        except ValueError as exc:
            raise HttpError(400, f"invalid JSON in query parameter {name!r}: {exc}") from None

    @property
    def wants_upgrade(self) -> bool:
        return self.headers.get("upgrade", "").lower() == "tcp" and "upgrade" in self.headers.get(
            "connection", ""
        ).lower().replace(" ", "").split(",")


def _decode(value: bytes) -> str:
    return value.decode("latin-1")


class HttpConnection:
    """The server's end of one HTTP/1.1 connection: requests in, responses out, or a hijack."""

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self.hijacked = False
        self.method = "GET"  # of the request being answered (a HEAD's answer has no body)

    def __repr__(self) -> str:
        return f"<HttpConnection ours={self.h11.our_state} theirs={self.h11.their_state}>"

    async def _next_event(self) -> Any:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            try:
                data = await self.stream.receive(READ_SIZE)
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                data = b""
            self.h11.receive_data(data)

    async def _send(self, event: Any) -> None:
        data = self.h11.send(event)
        if data:
            try:
                await self.stream.send(data)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                raise ClientGone(str(exc)) from exc

    async def next_request(self) -> Request | None:
        """The next request's head (None once the client has closed a kept-alive connection).
        Raises :class:`HttpError` for a malformed or oversized one."""
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
        try:
            event = await self._next_event()
        except h11.RemoteProtocolError as exc:
            raise HttpError(exc.error_status_hint, f"bad request: {exc}") from None
        if isinstance(event, h11.ConnectionClosed):
            return None
        if not isinstance(event, h11.Request):
            raise HttpError(400, "bad request")
        header_list = [(_decode(k), _decode(v)) for k, v in event.headers]
        headers = dict(header_list)
        names = [k for k, _ in header_list]
        if "content-length" in names and "transfer-encoding" in names:
            raise HttpError(400, "bad request: both Content-Length and Transfer-Encoding")
        if names.count("content-length") > 1 or names.count("transfer-encoding") > 1:
            raise HttpError(400, "bad request: a repeated framing header")
        target = _decode(event.target)
        split = urllib.parse.urlsplit(target)
        try:
            query = urllib.parse.parse_qs(split.query, keep_blank_values=True, errors="strict")
        except (UnicodeDecodeError, ValueError) as exc:
            raise HttpError(400, f"bad query string: {exc}") from None
        self.method = _decode(event.method)
        return Request(
            method=self.method,
            target=target,
            path=urllib.parse.unquote(split.path),
            query=query,
            headers=headers,
            header_list=header_list,
        )

    async def body_chunks(self) -> AsyncIterator[bytes]:
        """The request's body as it arrives (nothing for a body-less request)."""
        while True:
            try:
                event = await self._next_event()
            except h11.RemoteProtocolError as exc:
                raise HttpError(400, f"bad request body: {exc}") from None
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                if isinstance(event, h11.ConnectionClosed):
                    raise HttpError(400, "bad request: the body ended early")
                return
            else:
                raise HttpError(400, "bad request body")

    async def read_body(self, limit: int = MAX_BODY) -> bytes:
        """The whole body, at most ``limit`` bytes (413 beyond)."""
        parts: list[bytes] = []
        size = 0
        async for chunk in self.body_chunks():
            size += len(chunk)
            if size > limit:
                raise HttpError(413, f"request body exceeds {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)

    async def body_to_file(self, out: IO[bytes], limit: int = MAX_UPLOAD) -> int:
        """Spool the body into ``out``; returns its size."""
        size = 0
        async for chunk in self.body_chunks():
            size += len(chunk)
            if size > limit:
                raise HttpError(413, f"request body exceeds {limit} bytes")
            out.write(chunk)
        return size

    async def drain_body(self, limit: int = MAX_UPLOAD) -> None:
        """Read and drop what is left of the request's body, at most ``limit`` bytes (413)."""
        if self.h11.their_state is h11.SEND_BODY:
            size = 0
            async for chunk in self.body_chunks():
                size += len(chunk)
                if size > limit:
                    raise HttpError(413, f"request body exceeds {limit} bytes")

    @property
    def can_respond(self) -> bool:
        return not self.hijacked and self.h11.our_state in (h11.IDLE, h11.SEND_RESPONSE)

    async def respond(
        self,
        status: int,
        body: bytes = b"",
        content_type: str | None = "application/json",
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        """A whole response with a Content-Length."""
        hdrs = [*_common_headers(), *(headers or [])]
        if content_type and (body or status not in (204, 304)):
            hdrs.append(("Content-Type", content_type))
        if status not in (204, 304):
            hdrs.append(("Content-Length", str(len(body))))
        await self._send(h11.Response(status_code=status, headers=hdrs))
        if body and status not in (204, 304) and self.method != "HEAD":
            await self._send(h11.Data(data=body))
        await self._send(h11.EndOfMessage())

    async def respond_json(self, status: int, obj: Any) -> None:
        """``obj`` as JSON, docker's way (a trailing newline)."""
        await self.respond(status, json.dumps(obj).encode() + b"\n")

    async def respond_error(self, status: int, message: str) -> None:
        """Docker's error body ``{"message": ...}``."""
        await self.respond_json(status, {"message": message})

    async def start_stream(
        self,
        status: int = 200,
        content_type: str | None = "application/json",
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        """Send a streaming response's head at once (chunked transfer encoding follows)."""
        hdrs = [*_common_headers(), *(headers or [])]
        if content_type:
            hdrs.append(("Content-Type", content_type))
        await self._send(h11.Response(status_code=status, headers=hdrs))

    async def send_chunk(self, data: bytes) -> None:
        """One chunk of a streaming response (nothing for empty data)."""
        if data:
            await self._send(h11.Data(data=data))

    async def end_stream(self) -> None:
        """The end of a streaming response."""
        await self._send(h11.EndOfMessage())

    async def hijack(self, content_type: str) -> tuple[anyio.abc.ByteStream, bytes]:
        """Answer ``101 UPGRADED`` (docker's reason phrase and headers) and hand over the raw
        connection, with the bytes the client already sent after its request. Without an
        ``Upgrade: tcp`` request, a plain ``200`` whose body is the raw stream (docker's fallback)."""
        await self.drain_body()
        if self.h11.their_state is _MIGHT_SWITCH:
            await self._send(
                h11.InformationalResponse(
                    status_code=101,
                    reason=b"UPGRADED",
                    headers=[("Content-Type", content_type), ("Connection", "Upgrade"), ("Upgrade", "tcp")],
                )
            )
        else:
            # h11 would frame the body; docker's fallback is a raw stream after a 200 head.
            data = (
                f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\n"
                f"{''.join(f'{k}: {v}' + chr(13) + chr(10) for k, v in _common_headers())}\r\n"
            ).encode()
            try:
                await self.stream.send(data)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                raise ClientGone(str(exc)) from exc
        self.hijacked = True
        trailing, _closed = self.h11.trailing_data
        return self.stream, bytes(trailing)


def _common_headers() -> list[tuple[str, str]]:
    from . import API_VERSION

    return [
        ("Api-Version", API_VERSION),
        ("Docker-Experimental", "false"),
        ("Ostype", "linux"),
        ("Server", "tugboat"),
    ]


async def read_raw(stream: anyio.abc.ByteStream, max_bytes: int = READ_SIZE) -> bytes:
    """What the client sent on a raw (or watched) connection, ``b""`` at its EOF or reset.

    Waits with ``anyio.wait_readable`` and reads without blocking, instead of a pending
    ``receive()``: cancelling that one on asyncio races with the socket becoming readable and
    logs ``InvalidStateError`` from the reader callback; ``wait_readable`` tolerates it."""
    sock = stream.extra(anyio.abc.SocketAttribute.raw_socket)
    while True:
        await anyio.wait_readable(sock)
        try:
            return bytes(sock.recv(max_bytes))
        except (BlockingIOError, InterruptedError):
            continue
        except OSError:
            return b""


def peer_closed(stream: anyio.abc.ByteStream) -> bool:
    """After an EOF from :func:`read_raw`: whether the client closed its whole connection
    (``POLLHUP``: it went away) rather than only its sending side (a half-close, as the docker
    CLI does at the end of stdin, or at once when it attaches none). Asked once, not polled."""
    sock = stream.extra(anyio.abc.SocketAttribute.raw_socket)
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN | select.POLLHUP)
    return any(events & (select.POLLHUP | select.POLLERR) for _, events in poller.poll(0))


@asynccontextmanager
async def watch_disconnect(conn: HttpConnection) -> AsyncIterator[anyio.CancelScope]:
    """A scope cancelled when the client closes (or writes to) its connection while a long
    response is under way: a dropped ``docker logs -f`` or ``wait`` leaves no task behind. The
    connection is not reused after (anything read here is dropped)."""
    gone = False
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            try:
                await read_raw(conn.stream, 1)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                pass
            tg.cancel_scope.cancel()

        tg.start_soon(watch)
        try:
            yield tg.cancel_scope
        except ClientGone:
            gone = True
        finally:
            tg.cancel_scope.cancel()
    if gone:
        raise ClientGone("the client went away")
