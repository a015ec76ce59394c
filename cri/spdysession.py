"""A SPDY/3.1 session on an upgraded connection, as a server of spdystream clients (kubelet,
crictl): the client opens the streams (SYN_STREAM, answered at once with SYN_REPLY, which its
writes wait for), each named by its headers; we read and write them and half-close them with
FIN. Frames are :mod:`cri.spdy`'s.

spdystream does no flow control (it neither sends nor heeds WINDOW_UPDATE), so neither does
this side: WINDOW_UPDATE and SETTINGS are read and ignored. PING is answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from . import spdy, tugstreams

log = logging.getLogger("tugboat.cri.streaming")

CHUNK = 32 << 10  # bytes of one DATA frame we send at most
CLOSE_WAIT = 5.0  # seconds the client has to close the connection after our GOAWAY


class Stream:
    """One stream the client opened."""

    def __init__(self, session: Session, stream_id: int, headers: spdy.Headers) -> None:
        self.session = session
        self.id = stream_id
        self.headers = headers
        self.inbox: asyncio.Queue[bytes] = asyncio.Queue()  # b"": the client half-closed it
        self.closed = False  # our side: FIN sent (or reset)

    def header(self, name: str) -> str:
        values = self.headers.get(name.lower()) or [""]
        return values[0]

    async def read(self) -> bytes:
        """The next bytes the client sent; b"" once it has half-closed (or reset) the stream."""
        data = await self.inbox.get()
        if not data:
            self.inbox.put_nowait(b"")  # stays at its end
        return data

    async def write(self, data: bytes) -> None:
        for i in range(0, len(data), CHUNK):
            if self.closed:
                return
            await self.session.send(spdy.Data(self.id, data[i : i + CHUNK]))

    async def close(self) -> None:
        """Half-close our side (FIN)."""
        if not self.closed:
            self.closed = True
            await self.session.send(spdy.Data(self.id, b"", fin=True))


class Session:
    """The frames of one connection: :attr:`new_streams` gets each stream the client opens;
    :attr:`gone` is set when the connection ends (EOF, GOAWAY, a protocol error)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, initial: bytes) -> None:
        self.reader = reader
        self.writer = writer
        self.codec = spdy.Codec()
        self.streams: dict[int, Stream] = {}
        self.new_streams: asyncio.Queue[Stream | None] = asyncio.Queue()
        self.gone = asyncio.Event()
        self.eof = asyncio.Event()
        self._initial = initial
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._last_id = 0
        self._goaway_sent = False

    async def __aenter__(self) -> Session:
        self._task = asyncio.ensure_future(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        """GOAWAY, give the client a moment to read everything and close, then stop."""
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self._goaway(0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.eof.wait(), CLOSE_WAIT)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _goaway(self, status: int) -> None:
        if not self._goaway_sent:
            self._goaway_sent = True
            await self.send(spdy.GoAway(self._last_id, status))

    async def send(self, frame: spdy.Frame) -> None:
        async with self._lock:  # one frame at a time, in the compression context's order
            if self.writer.is_closing():
                raise ConnectionError("the connection is closed")
            self.writer.write(self.codec.encode(frame))
            await self.writer.drain()

    async def _run(self) -> None:
        data = self._initial
        try:
            while True:
                if data:
                    for frame in self.codec.feed(data):
                        await self._handle(frame)
                data = await self.reader.read(65536)
                if not data:
                    break
        except spdy.ProtocolError as exc:
            log.info("SPDY protocol error from the client: %s", exc)
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self._goaway(1)
        except ConnectionError:
            pass
        finally:
            self.eof.set()
            self.gone.set()
            for stream in self.streams.values():
                stream.inbox.put_nowait(b"")
            self.new_streams.put_nowait(None)

    async def _handle(self, frame: spdy.Frame) -> None:
        stream: Stream | None
        if isinstance(frame, spdy.SynStream):
            if (
                frame.stream_id in self.streams
                or frame.stream_id % 2 == 0
                or frame.stream_id <= self._last_id
            ):
                await self.send(spdy.RstStream(frame.stream_id, spdy.PROTOCOL_ERROR))
                return
            self._last_id = frame.stream_id
            stream = Stream(self, frame.stream_id, frame.headers)
            self.streams[frame.stream_id] = stream
            await self.send(spdy.SynReply(frame.stream_id, {}))
            if frame.fin:
                stream.inbox.put_nowait(b"")
            self.new_streams.put_nowait(stream)
        elif isinstance(frame, spdy.Data):
            stream = self.streams.get(frame.stream_id)
            if stream is None:
                await self.send(spdy.RstStream(frame.stream_id, spdy.INVALID_STREAM))
                return
            if frame.data:
                stream.inbox.put_nowait(frame.data)
            if frame.fin:
                stream.inbox.put_nowait(b"")
        elif isinstance(frame, spdy.RstStream):
            stream = self.streams.get(frame.stream_id)
            if stream is not None:
                stream.closed = True
                stream.inbox.put_nowait(b"")
        elif isinstance(frame, spdy.Ping):
            await self.send(frame)
        elif isinstance(frame, spdy.GoAway):
            self.gone.set()
        # SETTINGS, WINDOW_UPDATE, HEADERS: nothing to do (no flow control; see the module)

    async def next_stream(self, timeout: float) -> Stream | None:
        """The next stream the client opens; None when the connection ends or time runs out."""
        try:
            return await asyncio.wait_for(self.new_streams.get(), timeout)
        except TimeoutError:
            return None


class ExecChannels:
    """exec/attach over SPDY: a stream per ``streamType`` (error, stdin, stdout, stderr,
    resize), as k8s's remotecommand protocols v1 to v5 make them."""

    def __init__(self, session: Session, request: Any, protocol: str, wait: float) -> None:
        self.session = session
        self.protocol = protocol
        self.version = 1 if protocol == "channel.k8s.io" else int(protocol[1])
        expected = {"error"}
        if request.stdin:
            expected.add("stdin")
        if request.stdout:
            expected.add("stdout")
        if request.stderr and not request.tty:
            expected.add("stderr")
        if request.tty and self.version >= 3:
            expected.add("resize")
        self.expected = expected
        self.wait = wait
        self.streams: dict[str, Stream] = {}

    async def wait_streams(self) -> bool:
        """Wait for every stream the request needs; False (and the connection ends) without."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait
        while not self.expected <= self.streams.keys():
            stream = await self.session.next_stream(max(0.0, deadline - loop.time()))
            if stream is None:
                log.info(
                    "the client did not open the streams %s", sorted(self.expected - self.streams.keys())
                )
                return False
            self.streams[stream.header("streamtype")] = stream
        return True

    async def send(self, channel: int, data: bytes) -> None:
        stream = self.streams.get({1: "stdout", 2: "stderr"}[channel])
        if stream is not None:
            await stream.write(data)

    async def feed(self, proc: tugstreams.Process) -> None:
        async def stdin(stream: Stream) -> None:
            while data := await stream.read():
                await proc.send_stdin(data)
            if not self.session.gone.is_set():
                await proc.close_stdin()

        async def resize(stream: Stream) -> None:
            buf = b""
            decoder = json.JSONDecoder()
            while data := await stream.read():
                buf += data
                text = buf.decode(errors="replace").lstrip()
                while text:
                    try:
                        value, end = decoder.raw_decode(text)
                    except ValueError:
                        break
                    if isinstance(value, dict):
                        await proc.resize(int(value.get("Width") or 0), int(value.get("Height") or 0))
                    text = text[end:].lstrip()
                buf = text.encode()

        jobs = []
        if "stdin" in self.streams:
            jobs.append(stdin(self.streams["stdin"]))
        if "resize" in self.streams:
            jobs.append(resize(self.streams["resize"]))
        await asyncio.gather(*jobs)

    async def finish(self, status: dict[str, Any], message: str | None) -> None:
        with contextlib.suppress(ConnectionError):
            for name in ("stdout", "stderr"):
                if name in self.streams:
                    await self.streams[name].close()
            error = self.streams.get("error")
            if error is not None:
                if self.version >= 4:
                    await error.write(json.dumps(status).encode())
                elif message:
                    await error.write(message.encode())
                await error.close()

    async def lost(self) -> None:
        await self.session.gone.wait()
