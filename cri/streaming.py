"""tug-cri's streaming server: where the URLs of Exec, Attach and PortForward lead.

kubelet (or crictl) calls Exec/Attach/PortForward over gRPC and gets a URL on this server
(``http://127.0.0.1:PORT/exec/TOKEN``); it then opens an HTTP/1.1 connection there and upgrades
it, either to SPDY/3.1 (what kubelet and crictl speak: the channel protocols
``v5``/``v4``/``v3``/``v2.channel.k8s.io`` and ``channel.k8s.io`` for exec and attach,
``portforward.k8s.io`` for port-forward), or to a WebSocket (``v5.channel.k8s.io`` and
``v4.channel.k8s.io``, exec and attach). A token is random, single use, and expires after a
minute (:class:`Tokens`).

The HTTP request and the 101 answer are h11's; WebSocket framing is wsproto's; SPDY framing is
:mod:`cri.spdy` and its sessions :mod:`cri.spdysession`. The bytes of the processes come from
tugd through :mod:`cri.tugstreams` only.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import h11
import wsproto.events as wse
from wsproto.connection import Connection as WsConnection
from wsproto.connection import ConnectionState, ConnectionType
from wsproto.utilities import LocalProtocolError, RemoteProtocolError, generate_accept_token

from . import portforward, spdysession, tugstreams

log = logging.getLogger("tugboat.cri.streaming")

TOKEN_TTL = 60.0  # seconds a URL stays valid (kubelet's and containerd's value)
MAX_TOKENS = 1000  # URLs in flight at most
STREAM_WAIT = 30.0  # seconds the client has to open every stream it must
CLOSE_WAIT = 5.0  # seconds the client has to close its side once everything is sent

SPDY_EXEC_PROTOCOLS = (
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
)
WS_EXEC_PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")
PORTFORWARD_PROTOCOLS = ("portforward.k8s.io",)

STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255
CHANNEL = {"stdout": STDOUT, "stderr": STDERR}


@dataclass
class StreamRequest:
    """What a token stands for: an exec, an attach or a port-forward, as its RPC asked."""

    kind: str  # exec | attach | portforward
    container_id: str = ""
    cmd: list[str] = field(default_factory=list)
    tty: bool = False
    stdin: bool = False
    stdout: bool = False
    stderr: bool = False
    pod_id: str = ""
    stdin_once: bool = False  # attach: the container's stdin closes with the client's


class TooManyRequests(Exception):
    """More than MAX_TOKENS URLs are waiting to be used."""


class Tokens:
    """Single-use tokens that expire ``ttl`` seconds after they are made (``clock`` is
    monotonic time; a test may give its own)."""

    def __init__(self, ttl: float = TOKEN_TTL, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.clock = clock
        self._items: dict[str, tuple[float, StreamRequest]] = {}

    def _expire(self) -> None:
        now = self.clock()
        for token in [t for t, (deadline, _) in self._items.items() if deadline <= now]:
            del self._items[token]

    def issue(self, request: StreamRequest) -> str:
        self._expire()
        if len(self._items) >= MAX_TOKENS:
            raise TooManyRequests(f"{MAX_TOKENS} streaming requests are already waiting")
        token = base64.urlsafe_b64encode(secrets.token_bytes(8)).decode().rstrip("=")
        self._items[token] = (self.clock() + self.ttl, request)
        return token

    def consume(self, token: str) -> StreamRequest | None:
        """The request of ``token``, once: a second use, or a use after its time, is None."""
        self._expire()
        item = self._items.pop(token, None)
        return None if item is None else item[1]


def exit_status(proc: tugstreams.Process, failure: str | None) -> tuple[dict[str, Any], str | None]:
    """The metav1.Status the error channel carries (v4 and later), and the plain message of the
    older protocols (None on success)."""
    if failure is None and proc.error:
        failure = proc.error
    code = proc.exit_code
    if failure is None and not code:
        return {"metadata": {}, "status": "Success"}, None
    if failure is None:
        message = f"command terminated with non-zero exit code: exit status {code}"
        return {
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
        }, message
    return {"metadata": {}, "status": "Failure", "message": failure, "reason": "InternalError"}, failure


class Channels(Protocol):
    """One transport's side of an exec or attach: output out, input in (see run_process)."""

    async def send(self, channel: int, data: bytes) -> None:
        """Send output of ``channel`` (STDOUT, STDERR)."""

    async def feed(self, proc: tugstreams.Process) -> None:
        """Pass the client's stdin, stdin close and resizes to ``proc`` until cancelled."""

    async def finish(self, status: dict[str, Any], message: str | None) -> None:
        """Close the output, send the status (v4, v5) or the message (older), end."""

    async def lost(self) -> None:
        """Return when the client has gone away."""


async def run_process(tugd_socket: str, req: StreamRequest, io: Channels) -> None:
    """Run the exec or attach of ``req`` with ``io`` as its stdio; the status at the end."""
    if req.kind == "exec":
        opener = tugstreams.exec_process(tugd_socket, req.container_id, req.cmd, stdin=req.stdin, tty=req.tty)
    else:
        opener = tugstreams.attach_process(tugd_socket, req.container_id, stdin_once=req.stdin_once)
    failure: str | None = None
    async with opener as proc:

        async def pump() -> None:
            async for name, data in proc.output():
                if req.tty or (req.stdout and name == "stdout"):
                    await io.send(STDOUT, data)
                elif req.stderr and name == "stderr":
                    await io.send(STDERR, data)

        feeder = asyncio.ensure_future(io.feed(proc))
        output = asyncio.ensure_future(pump())
        gone = asyncio.ensure_future(io.lost())
        try:
            await asyncio.wait([output, gone], return_when=asyncio.FIRST_COMPLETED)
            if not output.done():
                log.info("%s in %s: the client went away", req.kind, req.container_id[:12])
                return
            exc = output.exception()
            if exc is not None:
                failure = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
                log.info("%s in %s failed: %s", req.kind, req.container_id[:12], failure)
        finally:
            for task in (feeder, output, gone):
                task.cancel()
            await asyncio.gather(feeder, output, gone, return_exceptions=True)
    status, message = exit_status(proc, failure)
    await io.finish(status, message)


# -- WebSocket ------------------------------------------------------------------------------


class WebSocketChannels:
    """exec/attach over a WebSocket: each message is a channel byte and data (k8s wsstream).
    v5 adds the close signal: ``[255, channel]`` closes that channel (stdin)."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes, protocol: str
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.protocol = protocol
        self.ws = WsConnection(ConnectionType.SERVER)
        if data:
            self.ws.receive_data(data)
        self.inbox: asyncio.Queue[tuple[int, bytes] | None] = asyncio.Queue()
        self.closed = asyncio.Event()
        self._lock = asyncio.Lock()  # one writer at a time (output, pongs, the close)
        self.reader_task = asyncio.ensure_future(self._read())

    async def _write(self, event: Any) -> None:
        async with self._lock:
            if self.ws.state is not ConnectionState.OPEN and not isinstance(event, wse.CloseConnection):
                return
            self.writer.write(self.ws.send(event))
            await self.writer.drain()

    async def _read(self) -> None:
        partial = bytearray()
        try:
            while True:
                for event in self.ws.events():
                    if isinstance(event, wse.BytesMessage):
                        partial += event.data
                        if event.message_finished:
                            if partial:
                                await self.inbox.put((partial[0], bytes(partial[1:])))
                            partial = bytearray()
                    elif isinstance(event, wse.Ping):
                        await self._write(event.response())
                    elif isinstance(event, wse.CloseConnection):
                        with contextlib.suppress(Exception):
                            await self._write(event.response())
                        return
                data = await self.reader.read(65536)
                if not data:
                    return
                self.ws.receive_data(data)
        except (ConnectionError, LocalProtocolError, RemoteProtocolError):
            return
        finally:
            self.closed.set()
            await self.inbox.put(None)

    async def send(self, channel: int, data: bytes) -> None:
        await self._write(wse.BytesMessage(data=bytes([channel]) + data))

    async def feed(self, proc: tugstreams.Process) -> None:
        while (item := await self.inbox.get()) is not None:
            channel, data = item
            if channel == STDIN and data:
                await proc.send_stdin(data)
            elif channel == RESIZE:
                for size in json_values(data):
                    await proc.resize(int(size.get("Width") or 0), int(size.get("Height") or 0))
            elif channel == CLOSE and data[:1] == bytes([STDIN]) and self.protocol.startswith("v5."):
                await proc.close_stdin()

    async def finish(self, status: dict[str, Any], message: str | None) -> None:
        with contextlib.suppress(ConnectionError):
            await self.send(ERROR, json.dumps(status).encode())
            await self._write(wse.CloseConnection(code=1000))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.closed.wait(), CLOSE_WAIT)
        self.reader_task.cancel()

    async def lost(self) -> None:
        await self.closed.wait()


def json_values(data: bytes) -> list[dict[str, Any]]:
    """The JSON objects in ``data`` (a resize channel may carry several back to back)."""
    text, out, pos = data.decode(errors="replace"), [], 0
    decoder = json.JSONDecoder()
    while pos < len(text):
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            break
        try:
            value, pos = decoder.raw_decode(text, pos)
        except ValueError:
            break
        if isinstance(value, dict):
            out.append(value)
    return out


# -- the HTTP server ------------------------------------------------------------------------


def _header(req: h11.Request, name: bytes) -> list[str]:
    """Every value of header ``name``, comma lists split."""
    out = []
    for key, value in req.headers:
        if key == name:
            out += [v.strip() for v in value.decode("latin-1").split(",") if v.strip()]
    return out


def choose(offered: list[str], supported: tuple[str, ...]) -> str | None:
    """The first protocol the client offers that we speak (the client's order, as k8s's
    httpstream.Handshake chooses)."""
    return next((p for p in offered if p in supported), None)


class StreamServer:
    """The HTTP server of the streaming URLs, on ``address`` (127.0.0.1) and a random port."""

    def __init__(self, tugd_socket: str, address: str = "127.0.0.1", ttl: float = TOKEN_TTL) -> None:
        self.tugd_socket = tugd_socket
        self.address = address
        self.tokens = Tokens(ttl)
        self.server: asyncio.Server | None = None
        self.port = 0
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._connection, self.address, 0)
        self.port = self.server.sockets[0].getsockname()[1]
        log.info("streaming server on %s", self.base_url)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.server is not None:
            await self.server.wait_closed()

    @property
    def base_url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}"

    def url(self, request: StreamRequest) -> str:
        """A URL for ``request``, usable once within the token's time."""
        return f"{self.base_url}/{request.kind}/{self.tokens.issue(request)}"

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:
            log.exception("streaming connection failed")
        finally:
            self.tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        req: h11.Request | None = None
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                return await _refuse(writer, conn, 400, f"bad request: {exc}")
            if event is h11.NEED_DATA:
                data = await asyncio.wait_for(reader.read(65536), STREAM_WAIT)
                if not data:
                    return
                conn.receive_data(data)
            elif isinstance(event, h11.Request):
                req = event
            elif isinstance(event, h11.EndOfMessage) or event is h11.PAUSED:
                break
        assert req is not None
        parts = req.target.decode("latin-1").split("?")[0].strip("/").split("/")
        if (
            req.method not in (b"GET", b"POST")
            or len(parts) != 2
            or parts[0] not in ("exec", "attach", "portforward")
        ):
            return await _refuse(writer, conn, 404, "not found")
        request = self.tokens.consume(parts[1])
        if request is None or request.kind != parts[0]:
            return await _refuse(writer, conn, 404, "unknown or expired token")
        upgrade = [u.lower() for u in _header(req, b"upgrade")]
        if "websocket" in upgrade:
            return await self._websocket(reader, writer, conn, req, request)
        if "spdy/3.1" not in upgrade:
            return await _refuse(writer, conn, 400, "this URL takes an upgrade to SPDY/3.1 or websocket")
        supported = PORTFORWARD_PROTOCOLS if request.kind == "portforward" else SPDY_EXEC_PROTOCOLS
        protocol = choose(_header(req, b"x-stream-protocol-version"), supported)
        if protocol is None:
            extra = [("X-Accepted-Stream-Protocol-Versions", ", ".join(supported))]
            return await _refuse(writer, conn, 403, "no protocol in common", extra)
        writer.write(
            conn.send(
                h11.InformationalResponse(
                    status_code=101,
                    headers=[
                        ("Connection", "Upgrade"),
                        ("Upgrade", "SPDY/3.1"),
                        ("X-Stream-Protocol-Version", protocol),
                    ],
                )
            )
        )
        await writer.drain()
        log.info(
            "%s %s over SPDY/3.1, %s",
            request.kind,
            request.container_id[:12] or request.pod_id[:12],
            protocol,
        )
        session = spdysession.Session(reader, writer, conn.trailing_data[0])
        async with session:
            if request.kind == "portforward":
                await portforward.serve(session, self.tugd_socket, request.pod_id)
            else:
                io = spdysession.ExecChannels(session, request, protocol, STREAM_WAIT)
                if await io.wait_streams():
                    await run_process(self.tugd_socket, request, io)

    async def _websocket(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        conn: h11.Connection,
        req: h11.Request,
        request: StreamRequest,
    ) -> None:
        if request.kind == "portforward":
            return await _refuse(writer, conn, 400, "port-forward takes SPDY/3.1, not websocket")
        protocol = choose(_header(req, b"sec-websocket-protocol"), WS_EXEC_PROTOCOLS)
        keys = _header(req, b"sec-websocket-key")
        if protocol is None or len(keys) != 1:
            return await _refuse(
                writer, conn, 400, f"websocket needs a key and one of {', '.join(WS_EXEC_PROTOCOLS)}"
            )
        accept = generate_accept_token(keys[0].encode()).decode()
        headers = [
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Accept", accept),
            ("Sec-WebSocket-Protocol", protocol),
        ]
        writer.write(conn.send(h11.InformationalResponse(status_code=101, headers=headers)))
        await writer.drain()
        log.info("%s %s over websocket, %s", request.kind, request.container_id[:12], protocol)
        io = WebSocketChannels(reader, writer, conn.trailing_data[0], protocol)
        await run_process(self.tugd_socket, request, io)


async def _refuse(
    writer: asyncio.StreamWriter,
    conn: h11.Connection,
    code: int,
    message: str,
    extra: list[tuple[str, str]] | None = None,
) -> None:
    body = (message + "\n").encode()
    headers = [
        ("Content-Type", "text/plain"),
        ("Content-Length", str(len(body))),
        ("Connection", "close"),
        *(extra or []),
    ]
    with contextlib.suppress(h11.LocalProtocolError):
        writer.write(conn.send(h11.Response(status_code=code, headers=headers)))
        writer.write(conn.send(h11.Data(data=body)))
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()
