"""A tiny HTTP/1.1 server for one page: ``GET /metrics`` in the Prometheus text format, on h11.

tugd serves its metrics with it, and a shim asked for a listener of its own too; both run it on
their anyio event loop (asyncio or trio), so no thread is needed. One request
per connection (``Connection: close``): a scraper asks every few seconds, and Prometheus opens a
new connection when the old one is closed. Each connection has a deadline, so a client that never
sends its request (or never reads the answer) holds nothing for long.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc

log = logging.getLogger("tugboat.http")

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
MAX_HEAD = 8192  # bytes of request line and headers
CONNECTION_DEADLINE = 30.0  # seconds for one whole exchange

# render(headers) -> body; headers with lower-case names.
Render = Callable[[dict[str, str]], Awaitable[bytes]]


class AddressError(ValueError):
    pass


def parse_address(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) to ``(host, port)``; the host must be an IP."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit() or not host:
        raise AddressError(f"invalid address {value!r}: want HOST:PORT, e.g. 127.0.0.1:9323")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise AddressError(f"invalid port in {value!r}")
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        raise AddressError(f"invalid address {value!r}: the host must be an IP address") from None
    return host, port


def bind_tcp(host: str, port: int) -> socket.socket:
    """A listening TCP socket, bound synchronously (anyio's ``create_tcp_listener`` resolves the
    host in a worker thread, which would cost a shim a thread). Raises OSError."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(64)
    except BaseException:
        sock.close()
        raise
    return sock


def bound_address(listener: anyio.abc.SocketListener) -> str:
    """``HOST:PORT`` a listener is bound to (the port the kernel chose for port 0)."""
    sock: socket.socket = listener.extra(anyio.abc.SocketAttribute.raw_socket)
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_REASONS = {
    200: b"OK",
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    500: b"Internal Server Error",
}


async def _reply(
    conn: Any,
    stream: anyio.abc.ByteStream,
    status: int,
    body: bytes,
    content_type: bytes,
    extra: list[tuple[bytes, bytes]] | None = None,
    *,
    head: bool = False,
) -> None:
    """One whole response through h11, then the connection is closed (``Connection: close``)."""
    import h11

    headers = [
        (b"Content-Type", content_type),
        (b"Content-Length", str(len(body)).encode()),
        (b"Connection", b"close"),
        *(extra or []),
    ]
    data = conn.send(h11.Response(status_code=status, reason=_REASONS.get(status, b""), headers=headers))
    if body and conn.our_state is h11.SEND_BODY and not head:
        data += conn.send(h11.Data(data=body))
    if conn.our_state is h11.SEND_BODY:
        data += conn.send(h11.EndOfMessage())
    await stream.send(data)


async def _request(conn: Any, stream: anyio.abc.ByteStream) -> Any:
    """The request's head, parsed by h11 (``h11.RemoteProtocolError`` for a bad one)."""
    import h11

    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            try:
                data = await stream.receive(4096)
            except anyio.EndOfStream:
                data = b""
            conn.receive_data(data)
            continue
        return event


async def handle(stream: anyio.abc.ByteStream, render: Render, path: str = "/metrics") -> None:
    """Answer one request on ``stream`` and close it. Never raises (a failure is logged).

    HTTP is parsed and framed by h11 (the parser under httpcore and uvicorn), the library of the
    Docker API front door too; imported at the first request, so that a shim that serves no
    metrics never loads it."""
    import h11

    text = b"text/plain; charset=utf-8"
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    try:
        async with stream:
            with anyio.move_on_after(CONNECTION_DEADLINE):
                try:
                    event = await _request(conn, stream)
                except h11.RemoteProtocolError as exc:
                    await _reply(conn, stream, 400, f"{exc}\n".encode(), text)
                    return
                if not isinstance(event, h11.Request):
                    return  # closed without a request
                method = event.method.decode("latin-1")
                target = event.target.decode("latin-1")
                headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in event.headers}
                if method not in ("GET", "HEAD"):
                    await _reply(conn, stream, 405, b"only GET\n", text, [(b"Allow", b"GET, HEAD")])
                elif target.split("?", 1)[0] != path:
                    await _reply(conn, stream, 404, f"try {path}\n".encode(), text, head=method == "HEAD")
                else:
                    try:
                        body = await render(headers)
                    except Exception:
                        log.exception("rendering %s failed", path)
                        await _reply(conn, stream, 500, b"see the log\n", text, head=method == "HEAD")
                    else:
                        await _reply(conn, stream, 200, body, CONTENT_TYPE, head=method == "HEAD")
    except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        pass  # the client went away
    except Exception:
        log.exception("HTTP connection failed")


async def serve(listener: anyio.abc.SocketListener, render: Render, path: str = "/metrics") -> None:
    """Serve ``path`` on every connection of ``listener`` until cancelled; the listener is closed
    after."""

    async def one(stream: anyio.abc.SocketStream) -> None:
        await handle(stream, render, path)

    async with listener:
        await listener.serve(one)
