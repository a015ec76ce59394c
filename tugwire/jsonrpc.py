"""JSON-RPC 2.0 over a byte stream, one JSON text per line: an async server and an async client.

Used between clients and tugd and between tugd and its shims (the CLI has a blocking twin in
:mod:`tugwire.syncclient`). What the specification says holds: batches, notifications (no reply),
the standard error codes, ``id`` echoed back exactly.

Two choices of ours on top of the specification:

* Requests on one connection are *accepted* in the order they arrive and may be *answered* out of
  order. A handler runs in its own task; the reader does not read the next request until the
  handler has accepted (by default at once; a streaming method accepts after it has registered its
  interest, so that ``logs -f`` and ``wait`` sent before ``start`` on the same connection cannot
  miss what ``start`` causes).
* A streaming method sends notifications whose ``params.request`` is the id of the request they
  belong to, and ends with an ordinary response.
* A raw streaming method (asked for with ``"stream": "raw"``) answers ``{"stream": "raw"}`` once
  it is ready and then switches its connection to the frames of :mod:`tugwire.frames`, ending
  with an ``end`` frame that carries its result (:meth:`Call.switch`, :func:`open_raw`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from . import errors, frames
from .errors import InvalidParams, InvalidRequest, TugError
from .rawchannel import RawChannel

log = logging.getLogger("tugboat.rpc")

MAX_LINE = 1 << 20  # bytes in one request line; a longer one is refused, the connection kept
CLIENT_MAX_LINE = 64 << 20  # what a client accepts from a server (log chunks are large)
_READ_SIZE = 1 << 16


# What a JSON string cannot hold as is: control characters, the quote and the backslash.
_JSON_ESCAPED = bytes(range(0x20)) + b'"\\'


def encode(obj: Any) -> bytes:
    """One JSON text and its newline, compact and ASCII-only (binary data travels as base64)."""
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


class LineReader:
    """Splits a byte stream into lines, with a bound on the length of one line.

    ``receive_line`` returns a line without its newline, raises :class:`LineTooLong` once for a
    line over the bound (and then skips the rest of it), and :class:`anyio.EndOfStream` at the end.
    """

    def __init__(self, stream: anyio.abc.ByteReceiveStream, max_line: int) -> None:
        self._stream = stream
        self._max = max_line
        self._buf = bytearray()
        self._discarding = False
        self._eof = False

    async def receive_line(self) -> bytes:
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                line = bytes(self._buf[:nl])
                del self._buf[: nl + 1]
                if self._discarding:
                    self._discarding = False
                    continue
                return line
            if self._discarding:
                self._buf.clear()
            elif len(self._buf) > self._max:
                self._buf.clear()
                self._discarding = True
                raise LineTooLong(self._max)
            if self._eof:
                # A last line without its newline still counts as a line.
                if self._buf and not self._discarding:
                    line = bytes(self._buf)
                    self._buf.clear()
                    return line
                raise anyio.EndOfStream
            try:
                chunk = await self._stream.receive(_READ_SIZE)
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._eof = True
                continue
            self._buf += chunk


class LineTooLong(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"request line exceeds {limit} bytes")


# ----------------------------------------------------------------------------------- server side


class Params:
    """Typed access to a request's named parameters; every mistake is an InvalidParams."""

    def __init__(self, raw: Any) -> None:
        if raw is None or raw == []:
            raw = {}
        if not isinstance(raw, dict):
            raise InvalidParams("params must be an object of named parameters")
        self.raw: dict[str, Any] = raw

    def _get(self, key: str, kinds: tuple[type, ...], what: str, default: Any, required: bool) -> Any:
        if key not in self.raw or self.raw[key] is None:
            if required:
                raise InvalidParams(f"missing parameter {key!r}", param=key)
            return default
        value = self.raw[key]
        # bool is an int in Python, never in JSON-RPC params of ours.
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise InvalidParams(f"parameter {key!r} must be {what}", param=key)
        return value

    def string(self, key: str, default: str | None = None, *, required: bool = False) -> Any:
        return self._get(key, (str,), "a string", default, required)

    def integer(self, key: str, default: int | None = None, *, required: bool = False) -> Any:
        return self._get(key, (int,), "an integer", default, required)

    def number(self, key: str, default: float | None = None, *, required: bool = False) -> Any:
        value = self._get(key, (int, float), "a number", default, required)
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidParams(f"parameter {key!r} must be finite", param=key)
        return value

    def boolean(self, key: str, default: bool = False) -> bool:
        return bool(self._get(key, (bool,), "a boolean", default, False))

    def list_of_str(self, key: str) -> list[str]:
        value = self._get(key, (list,), "a list of strings", [], False)
        if not all(isinstance(v, str) for v in value):
            raise InvalidParams(f"parameter {key!r} must be a list of strings", param=key)
        return list(value)

    def dict_of_str(self, key: str) -> dict[str, str]:
        value = self._get(key, (dict,), "an object of strings", {}, False)
        if not all(isinstance(v, str) for v in value.values()):
            raise InvalidParams(f"parameter {key!r} must map names to strings", param=key)
        return dict(value)

    def list_of_dict(self, key: str) -> list[dict[str, Any]]:
        value = self._get(key, (list,), "a list of objects", [], False)
        if not all(isinstance(v, dict) for v in value):
            raise InvalidParams(f"parameter {key!r} must be a list of objects", param=key)
        return list(value)


_T = TypeVar("_T")


class Call:
    """One request being handled: its id, a way to send notifications, and its acceptance."""

    def __init__(self, conn: ServerConnection, req_id: Any, params: Params) -> None:
        self.conn = conn
        self.id = req_id
        self.params = params
        self._task_status: anyio.abc.TaskStatus[None] | None = None
        self.channel: RawChannel | None = None

    @property
    def is_notification(self) -> bool:
        return self.id is _NO_ID

    def accept(self) -> None:
        """Let the connection read its next request (see the module docstring). Idempotent."""
        status, self._task_status = self._task_status, None
        if status is not None:
            status.started()

    async def notify(self, method: str, params: dict[str, Any]) -> None:
        """Send a notification that belongs to this request (``params.request`` is our id)."""
        body = dict(params)
        body["request"] = None if self.is_notification else self.id
        await self.conn.send({"jsonrpc": "2.0", "method": method, "params": body})

    async def until_disconnected(self, fn: Callable[[], Awaitable[_T]]) -> tuple[bool, _T | None]:
        """Run ``fn`` until it returns or the client's connection closes, whichever is first
        (a client that goes away, by ctrl-c or a crash, cancels what it asked for). Returns
        ``(True, result)``, or ``(False, None)`` when the client went away first. An exception
        of ``fn`` is raised as itself, not wrapped in the task group's ExceptionGroup (the API
        maps TugError subclasses to their codes)."""
        done = False
        result: _T | None = None
        failure: Exception | None = None
        async with anyio.create_task_group() as tg:

            async def until_closed() -> None:
                await self.conn.closed.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(until_closed)
            try:
                result = await fn()
                done = True
            except Exception as exc:
                failure = exc
            tg.cancel_scope.cancel()
        if failure is not None:
            raise failure
        return done, result

    def wants_raw(self) -> bool:
        """Whether the client asked for a raw stream (``"stream": "raw"``); any other value of
        ``stream`` is an InvalidParams."""
        mode: str | None = self.params.string("stream")
        if mode not in (None, frames.RAW):
            raise InvalidParams(f"unknown stream mode {mode!r}: want 'raw'", param="stream")
        return mode == frames.RAW

    async def switch(self, answer: dict[str, Any] | None = None) -> RawChannel:
        """Answer ``{"stream": "raw"}`` (with the fields of ``answer`` beside it), accept, and
        take the connection over: from now on it carries frames (the reader reads no more
        requests). The handler's result, or its error, becomes the ``end`` frame; then the
        connection is closed."""
        if self.is_notification:
            raise InvalidRequest("a raw stream needs a request id")
        conn = self.conn
        if conn.in_flight > 1:
            # Their answers would land in the middle of the frames.
            raise InvalidRequest("a raw stream needs a connection of its own (other calls are running on it)")
        reader = conn.reader
        leftover = b""
        if reader is not None:
            leftover = bytes(reader._buf)
            reader._buf.clear()
        conn.switched = True
        result = {**(answer or {}), "stream": frames.RAW}
        await conn.send({"jsonrpc": "2.0", "id": self.id, "result": result})
        self.channel = RawChannel(conn.stream, leftover, conn._send_lock)
        self.accept()
        return self.channel

    async def notify_data(self, method: str, data: bytes | str) -> None:
        """:meth:`notify` with ``{"data": data}``, for the log streams' base64 chunks (256 KiB of
        log is 350 KB of base64): the line is put together around the data instead of passing
        it through ``json.dumps``, which scans and copies it again (0.65 against 0.02 ms a
        chunk, measured). ``bytes`` must be base64 already (the caller encoded them); a ``str``
        (relayed from a shim) is checked for anything JSON would escape, and goes through
        :meth:`notify` if it has any."""
        if isinstance(data, str):
            raw = data.encode("ascii") if data.isascii() else None  # isascii() is O(1)
            if raw is None or len(raw.translate(None, _JSON_ESCAPED)) != len(raw):
                await self.notify(method, {"data": data})
                return
            data = raw
        request = b"null" if self.is_notification else json.dumps(self.id).encode()
        head = b'{"jsonrpc":"2.0","method":%s,"params":{"data":"' % json.dumps(method).encode()
        await self.conn.send_raw(b"".join((head, data, b'","request":', request, b"}}\n")))


Handler = Callable[[Call], Awaitable[Any]]


@dataclass(frozen=True)
class Method:
    fn: Handler
    accept_late: bool = False  # the handler calls call.accept() itself, once registered


class Dispatcher:
    """The table of methods a server offers."""

    def __init__(self) -> None:
        self.methods: dict[str, Method] = {}
        self.on_call: Callable[[str, str, float], None] | None = None  # (method, outcome, seconds)
        # Turns an unexpected exception into a typed error when it is a known condition (a full
        # disk: supervisor/diskfull.py); None: an internal error, logged with its traceback.
        self.map_error: Callable[[BaseException], TugError | None] | None = None

    def add(self, name: str, fn: Handler, *, accept_late: bool = False) -> None:
        self.methods[name] = Method(fn, accept_late)


class _NoId:
    def __repr__(self) -> str:
        return "<no id>"


_NO_ID: Any = _NoId()


class ServerConnection:
    """The server's end of one client connection."""

    def __init__(self, stream: anyio.abc.ByteStream, dispatcher: Dispatcher) -> None:
        self.stream = stream
        self.dispatcher = dispatcher
        self._send_lock = anyio.Lock()
        self.closed = anyio.Event()  # set once the client's side is gone (EOF or error)
        self.reader: LineReader | None = None
        self.switched = False  # a call took the connection over for a raw stream
        self.in_flight = 0  # calls running (a batch's count twice): a switch needs to be alone

    async def send(self, obj: Any) -> None:
        await self.send_raw(encode(obj))

    async def send_raw(self, line: bytes) -> None:
        """One complete JSON-RPC line, newline included."""
        async with self._send_lock:
            await self.stream.send(line)

    async def serve(self, max_line: int = MAX_LINE) -> None:
        """Read and dispatch requests until the client goes away; in-flight calls then finish."""
        reader = self.reader = LineReader(self.stream, max_line)
        try:
            async with anyio.create_task_group() as tg:
                while not self.switched:
                    try:
                        line = await reader.receive_line()
                    except LineTooLong as exc:
                        await self._send_quietly(_error_response(None, InvalidRequest(str(exc))))
                        continue
                    except anyio.EndOfStream:
                        break
                    if line.strip():
                        await self._handle_line(tg, line)
                if not self.switched:
                    self.closed.set()
        finally:
            self.closed.set()
            with anyio.CancelScope(shield=True):
                await self.stream.aclose()

    async def _send_quietly(self, obj: Any) -> None:
        try:
            await self.send(obj)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass

    async def _handle_line(self, tg: anyio.abc.TaskGroup, line: bytes) -> None:
        try:
            msg = json.loads(line)
        except (ValueError, RecursionError):
            await self._send_quietly(_error_response(None, errors.ParseError("parse error")))
            return
        if isinstance(msg, list):
            if not msg:
                await self._send_quietly(_error_response(None, InvalidRequest("empty batch")))
                return
            await tg.start(self._run_batch, msg)
        else:
            await tg.start(self._run_one, msg, None)

    async def _run_batch(self, msgs: list[Any], *, task_status: anyio.abc.TaskStatus[None]) -> None:
        replies: list[Any] = []

        async def one(msg: Any, *, task_status: anyio.abc.TaskStatus[None]) -> None:
            await self._run_one(msg, replies, task_status=task_status)

        self.in_flight += 2  # until its reply is sent: no switch meanwhile
        try:
            async with anyio.create_task_group() as tg:
                for msg in msgs:
                    await tg.start(one, msg)
                task_status.started()
            if replies:
                await self._send_quietly(replies)
        finally:
            self.in_flight -= 2

    async def _run_one(
        self, msg: Any, batch: list[Any] | None, *, task_status: anyio.abc.TaskStatus[None]
    ) -> None:
        weight = 1 if batch is None else 2  # a call of a batch can never switch
        self.in_flight += weight
        try:
            reply = await self._execute(msg, task_status)
            if reply is None:
                return
            if batch is not None:
                batch.append(reply)
            else:
                await self._send_quietly(reply)
        finally:
            self.in_flight -= weight

    async def _execute(self, msg: Any, task_status: anyio.abc.TaskStatus[None]) -> Any:
        """Run one request object; returns the response object, or None for a notification."""
        if not isinstance(msg, dict):
            task_status.started()
            return _error_response(None, InvalidRequest("a request must be an object"))
        req_id = msg.get("id", _NO_ID)
        if req_id is not _NO_ID and (
            isinstance(req_id, bool) or not isinstance(req_id, (str, int, type(None)))
        ):
            task_status.started()
            return _error_response(None, InvalidRequest("id must be a string, integer or null"))
        reply_id = None if req_id is _NO_ID else req_id
        method = msg.get("method")
        if msg.get("jsonrpc") != "2.0" or not isinstance(method, str):
            task_status.started()
            return _error_response(reply_id, InvalidRequest("not a JSON-RPC 2.0 request"))
        started = anyio.current_time()
        outcome = "ok"
        call: Call | None = None
        try:
            entry = self.dispatcher.methods.get(method)
            if entry is None:
                raise errors.MethodNotFound(f"method not found: {method}")
            raw = msg.get("params")
            if raw is not None and not isinstance(raw, (dict, list)):
                raise InvalidRequest("params must be an object or an array")
            call = Call(self, req_id, Params(raw))
            if entry.accept_late:
                call._task_status = task_status
            else:
                task_status.started()
            try:
                result = await entry.fn(call)
            except Exception as exc:
                if call.channel is None:
                    raise
                await call.channel.fail(exc, self.dispatcher.map_error, method)
                return None
            finally:
                call.accept()
            if call.channel is not None:
                await call.channel.end(result)
                return None
            if req_id is _NO_ID:
                return None
            return {"jsonrpc": "2.0", "id": req_id, "result": result}
        except TugError as exc:
            outcome = exc.kind
            if call is None:
                task_status.started()
            if req_id is _NO_ID and not isinstance(exc, InvalidRequest):
                return None
            return _error_response(reply_id, exc)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            outcome = "disconnected"
            if call is None:
                task_status.started()
            return None
        except Exception as exc:
            mapped = self.dispatcher.map_error(exc) if self.dispatcher.map_error is not None else None
            outcome = mapped.kind if mapped is not None else "internal"
            if call is None:
                task_status.started()
            if mapped is None:
                log.exception("method %s failed", method)
            else:
                log.warning("method %s failed: %s", method, mapped.message)
            if req_id is _NO_ID:
                return None
            return _error_response(reply_id, mapped or errors.Internal(f"internal error in {method}: {exc}"))
        finally:
            if self.dispatcher.on_call is not None and method in self.dispatcher.methods:
                self.dispatcher.on_call(method, outcome, anyio.current_time() - started)


def _error_response(req_id: Any, exc: TugError) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": req_id, "error": exc.to_json()}


async def _refuse(stream: anyio.abc.SocketStream, exc: TugError) -> None:
    """Send ``exc`` to a peer we will not serve, then read (and drop) what it sent, for a second
    at most: closing with its request unread would reset the connection before it reads why."""
    with (
        anyio.move_on_after(1),
        contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, OSError),
    ):
        await stream.send(encode(_error_response(None, exc)))
        await stream.send_eof()
        drained = 0
        while drained < MAX_LINE:
            drained += len(await stream.receive(_READ_SIZE))


async def serve_listener(
    listener: anyio.abc.SocketListener,
    dispatcher: Dispatcher,
    *,
    accept: Callable[[anyio.abc.SocketStream], bool] | None = None,
) -> None:
    """Serve every connection of ``listener`` until cancelled; the listener is closed after."""

    async def handle(stream: anyio.abc.SocketStream) -> None:
        if accept is not None:
            # ``accept`` returns False (closed at once) or raises a TugError (sent, then closed).
            try:
                allowed = accept(stream)
            except TugError as exc:
                await _refuse(stream, exc)
                allowed = False
            except OSError:  # the peer is gone already
                allowed = False
            if not allowed:
                await stream.aclose()
                return
        try:
            await ServerConnection(stream, dispatcher).serve()
        except Exception:  # one connection's failure is never the server's
            log.exception("connection failed")

    last_warning = -1e9
    async with listener, anyio.create_task_group() as tg:
        while True:
            try:
                stream = await listener.accept()
            except (anyio.BrokenResourceError, OSError) as exc:
                # Out of file descriptors (or memory): the connection waits in the backlog; try
                # again shortly (as trio's serve_listeners), never end the server over it.
                cause = exc.__cause__ if isinstance(exc, anyio.BrokenResourceError) else exc
                if isinstance(cause, OSError) and cause.errno in _ACCEPT_CAPACITY_ERRNOS:
                    if anyio.current_time() - last_warning > 10:  # one warning per 10 s at most
                        last_warning = anyio.current_time()
                        log.warning("cannot accept a connection: %s; retrying", cause.strerror)
                    await anyio.sleep(ACCEPT_RETRY)
                    continue
                raise
            tg.start_soon(handle, stream)


ACCEPT_RETRY = 0.1  # seconds between tries to accept while out of file descriptors
_ACCEPT_CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


@asynccontextmanager
async def open_raw(
    path: str, method: str, params: dict[str, Any], *, timeout: float = 10.0
) -> AsyncIterator[RawChannel]:
    """Call ``method`` with ``"stream": "raw"`` on a connection of its own and yield its channel
    once the server has switched (its JSON answer, checked; an error is raised as itself)."""
    try:
        with anyio.fail_after(timeout):
            stream = await anyio.connect_unix(path)
    except (OSError, TimeoutError) as exc:
        raise errors.Unavailable(f"cannot connect to {path}: {exc}") from exc
    async with stream:
        msg = {"jsonrpc": "2.0", "id": 1, "method": method, "params": {**params, "stream": frames.RAW}}
        try:
            await stream.send(encode(msg))
            reader = LineReader(stream, MAX_LINE)
            line = await reader.receive_line()
            reply = json.loads(line)
        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError, LineTooLong, ValueError) as exc:
            raise errors.Unavailable(f"{method}: no raw stream from {path}: {exc}") from exc
        if not isinstance(reply, dict):
            raise errors.Unavailable(f"{method}: unexpected answer from {path}")
        if "error" in reply:
            raise errors.from_json(reply["error"])
        channel = RawChannel(stream, bytes(reader._buf))
        yield channel


async def end_of(channel: RawChannel) -> Any:
    """Skip to the ``end`` frame and return its result (or raise its error)."""
    while True:
        try:
            kind, data = await channel.receive()
        except anyio.EndOfStream:
            raise errors.Unavailable("the raw stream ended without its end frame") from None
        if kind == frames.END:
            return frames.end_result(data)


# ----------------------------------------------------------------------------------- client side


class RpcClient:
    """An async client on one connection: concurrent calls, and streams of notifications."""

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self._stream = stream
        self._next_id = 1
        self._pending: dict[int, _Pending] = {}
        self._send_lock = anyio.Lock()
        self._closed_exc: BaseException | None = None
        self.unrouted: MemoryObjectSendStream[dict[str, Any]] | None = None
        self.path = ""  # the socket it was connected to (a raw stream needs its own connection)

    async def _reader(self) -> None:
        reader = LineReader(self._stream, CLIENT_MAX_LINE)
        try:
            while True:
                try:
                    line = await reader.receive_line()
                except anyio.EndOfStream:
                    break
                msg = json.loads(line)
                await self._route(msg)
        except (LineTooLong, ValueError) as exc:
            self._closed_exc = errors.Unavailable(f"bad message from server: {exc}")
        finally:
            self._fail_all()

    def _fail_all(self) -> None:
        exc = self._closed_exc or errors.Unavailable("connection closed")
        self._closed_exc = exc
        for pending in self._pending.values():
            if not pending.done.is_set():
                pending.error = exc
                pending.done.set()
            if pending.notes is not None:
                pending.notes.close()

    async def _route(self, msg: Any) -> None:
        if isinstance(msg, list):
            for item in msg:
                await self._route(item)
            return
        if not isinstance(msg, dict):
            return
        if "method" in msg and "id" not in msg:
            params = msg.get("params")
            req = params.get("request") if isinstance(params, dict) else None
            pending = self._pending.get(req) if isinstance(req, int) else None
            if pending is not None and pending.notes is not None:
                try:
                    await pending.notes.send(msg)  # backpressure: a slow consumer slows the reader
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    pass
            elif self.unrouted is not None:
                await self.unrouted.send(msg)
            return
        req_id = msg.get("id")
        pending = self._pending.get(req_id) if isinstance(req_id, int) else None
        if pending is None:
            return
        if "error" in msg:
            pending.error = errors.from_json(msg["error"])
        else:
            pending.result = msg.get("result")
        pending.done.set()
        if pending.notes is not None:
            pending.notes.close()

    async def _send_request(self, method: str, params: dict[str, Any] | None, pending: _Pending) -> int:
        if self._closed_exc is not None:
            raise self._closed_exc
        req_id = self._next_id
        self._next_id += 1
        self._pending[req_id] = pending
        msg: dict[str, Any] = {"jsonrpc": "2.0", "id": req_id, "method": method}
        if params is not None:
            msg["params"] = params
        try:
            async with self._send_lock:
                await self._stream.send(encode(msg))
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            self._pending.pop(req_id, None)
            raise errors.Unavailable(f"connection lost: {exc}") from exc
        return req_id

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """Call ``method`` and return its result, raising the matching TugError on error."""
        pending = _Pending()
        req_id = await self._send_request(method, params, pending)
        try:
            await pending.done.wait()
        finally:
            self._pending.pop(req_id, None)
        if pending.error is not None:
            raise pending.error
        return pending.result

    async def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            msg["params"] = params
        async with self._send_lock:
            await self._stream.send(encode(msg))

    @asynccontextmanager
    async def stream(
        self, method: str, params: dict[str, Any] | None = None, buffer: int = 16
    ) -> AsyncIterator[Stream]:
        """Call a streaming method: iterate its notifications, then read ``.result()``."""
        send, receive = anyio.create_memory_object_stream[dict[str, Any]](buffer)
        pending = _Pending(send)
        req_id = await self._send_request(method, params, pending)
        try:
            with receive:
                yield Stream(pending, receive)
        finally:
            self._pending.pop(req_id, None)
            send.close()

    async def aclose(self) -> None:
        await self._stream.aclose()


class _Pending:
    def __init__(self, notes: MemoryObjectSendStream[dict[str, Any]] | None = None) -> None:
        self.done = anyio.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self.notes = notes


class Stream:
    """The notifications of one streaming call, then its result."""

    def __init__(self, pending: _Pending, notes: MemoryObjectReceiveStream[dict[str, Any]]) -> None:
        self._pending = pending
        self._notes = notes

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        try:
            msg = await self._notes.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise StopAsyncIteration from None
        params: dict[str, Any] = msg.get("params") or {}
        return params

    async def result(self) -> Any:
        await self._pending.done.wait()
        if self._pending.error is not None:
            raise self._pending.error
        return self._pending.result


@asynccontextmanager
async def connect(path: str, *, timeout: float = 5.0) -> AsyncIterator[RpcClient]:
    """Connect to a Unix socket and run the client's reader for the life of the block."""
    try:
        with anyio.fail_after(timeout):
            stream = await anyio.connect_unix(path)
    except (OSError, TimeoutError) as exc:
        raise errors.Unavailable(f"cannot connect to {path}: {exc}") from exc
    client = RpcClient(stream)
    client.path = path
    # The body's exception is raised as itself, not wrapped in the reader's task group's
    # ExceptionGroup: callers catch TugError subclasses.
    body_exc: BaseException | None = None
    async with anyio.create_task_group() as tg:
        tg.start_soon(client._reader)
        try:
            yield client
        except BaseException as exc:
            body_exc = exc
        finally:
            tg.cancel_scope.cancel()
            with anyio.CancelScope(shield=True):
                await stream.aclose()
    if body_exc is not None:
        raise body_exc
