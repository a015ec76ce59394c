"""A tiny HTTP/1.1 server for one page: ``GET /metrics`` in the Prometheus text format.

tugd serves its metrics with it, and a shim asked for a listener of its own too; both run it on
their anyio event loop (asyncio or trio), so no thread and no HTTP library is needed. One request
per connection (``Connection: close``): a scraper asks every few seconds, and Prometheus opens a
new connection when the old one is closed. Each connection has a deadline, so a client that never
sends its request (or never reads the answer) holds nothing for long.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable

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


def _response(status: bytes, body: bytes, content_type: bytes, *, head: bool, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n%s\r\n%s" % (
        status,
        content_type,
        len(body),
        extra,
        b"" if head else body,
    )


async def _read_head(stream: anyio.abc.ByteStream) -> bytes:
    buf = b""
    while b"\r\n\r\n" not in buf and b"\n\n" not in buf:
        if len(buf) > MAX_HEAD:
            raise ValueError("request head too long")
        buf += await stream.receive(4096)
    return buf


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    lines = head.replace(b"\r\n", b"\n").split(b"\n")
    parts = lines[0].decode("latin-1").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise ValueError("bad request line")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.decode("latin-1").partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return parts[0], parts[1], headers


async def handle(stream: anyio.abc.ByteStream, render: Render, path: str = "/metrics") -> None:
    """Answer one request on ``stream`` and close it. Never raises (a failure is logged)."""
    text = b"text/plain; charset=utf-8"
    try:
        async with stream:
            with anyio.move_on_after(CONNECTION_DEADLINE):
                try:
                    method, target, headers = _parse_head(await _read_head(stream))
                except ValueError as exc:
                    await stream.send(_response(b"400 Bad Request", f"{exc}\n".encode(), text, head=False))
                    return
                head = method == "HEAD"
                if method not in ("GET", "HEAD"):
                    allow = b"Allow: GET, HEAD\r\n"
                    reply = _response(b"405 Method Not Allowed", b"only GET\n", text, head=False, extra=allow)
                elif target.split("?", 1)[0] != path:
                    reply = _response(b"404 Not Found", f"try {path}\n".encode(), text, head=head)
                else:
                    try:
                        body = await render(headers)
                    except Exception:
                        log.exception("rendering %s failed", path)
                        reply = _response(b"500 Internal Server Error", b"see the log\n", text, head=head)
                    else:
                        reply = _response(b"200 OK", body, CONTENT_TYPE, head=head)
                await stream.send(reply)
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
