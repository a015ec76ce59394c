"""A blocking JSON-RPC 2.0 client over a Unix socket, one JSON text per line: the CLI's client.

The twin of :class:`tugwire.jsonrpc.RpcClient` for a process that must start fast: it imports only
cheap stdlib modules and :mod:`tugwire.errors` (no anyio).

Requests on one connection may be answered out of order, and streaming methods send notifications
(whose ``params.request`` is the request's id) before their final response. :meth:`Client.call`
waits for one response; :meth:`Client.stream` sends a streaming request and iterates over its
notifications until its response. Whatever arrives for another request meanwhile is kept for it,
so calls and streams can share a connection.
"""

from __future__ import annotations

import _socket as csocket  # not `socket`: see Client.__init__
import json
import select
from collections import deque

from . import errors, frames

# typing is not imported at run time: it costs ~2 ms of every `tug` command, and with
# `from __future__ import annotations` these names only appear in annotations.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

CLIENT_MAX_LINE = 64 << 20  # what we accept from tugd in one line (log chunks are large)
_READ_SIZE = 1 << 18


class Disconnected(errors.Unavailable):
    """The connection to tugd could not be made, broke, or was closed (as opposed to an
    ``unavailable`` error that tugd itself answered)."""


def _encode(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def response_result(msg: dict[str, Any]) -> Any:
    """The ``result`` of a response, or raise its error as the matching :class:`TugError`."""
    if "error" in msg:
        raise errors.from_json(msg["error"])
    return msg.get("result")


def is_response(msg: dict[str, Any]) -> bool:
    """Whether ``msg`` is a response (it has no ``method``) rather than a notification."""
    return "method" not in msg


class Client:
    """One blocking connection to tugd.

    Raises :class:`Disconnected` (an :class:`errors.Unavailable`) when it cannot connect, when the
    connection breaks, and when tugd closes it; a malformed message from tugd raises
    :class:`errors.Internal`.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        # The C socket type directly: the `socket` module (which wraps it) builds its IntEnums
        # from every constant at import and pulls in `selectors`, ~2 ms of every `tug` command;
        # connect, sendall, recv, fileno and close are the C type's own methods.
        sock = csocket.socket(csocket.AF_UNIX, csocket.SOCK_STREAM)
        try:
            sock.connect(path)
        except OSError as exc:
            sock.close()
            reason = exc.strerror or str(exc)
            raise Disconnected(f"cannot connect to tugd at {path}: {reason} (is tugd running?)") from exc
        self._sock: csocket.socket | None = sock
        self._buf = bytearray()
        self._scanned = 0  # bytes of _buf known to hold no newline
        self._eof = False
        self._next_id = 1
        self._held: deque[dict[str, Any]] = deque()  # read while call() waited for its answer
        self._forgotten: set[int] = set()  # requests whose answers are dropped when they come

    def __repr__(self) -> str:
        state = "closed" if self._sock is None else "open"
        return f"<Client {self.path} {state} next_id={self._next_id} held={len(self._held)}>"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fileno(self) -> int:
        """The socket's file descriptor (for ``select``)."""
        return self._socket().fileno()

    def close(self) -> None:
        """Close the connection; tugd ends the streams that belonged to it."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # ------------------------------------------------------------------------------- sending

    def send(self, method: str, params: dict[str, Any] | None = None) -> int:
        """Send a request without waiting for its answer; returns its id."""
        req_id = self._next_id
        self._next_id += 1
        msg: dict[str, Any] = {"jsonrpc": "2.0", "id": req_id, "method": method}
        if params is not None:
            msg["params"] = params
        self._write(_encode(msg))
        return req_id

    def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        """Send a JSON-RPC notification (no id, no answer)."""
        msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            msg["params"] = params
        self._write(_encode(msg))

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """Send a request and wait for its result; its error is raised as a :class:`TugError`."""
        return self.wait_for(self.send(method, params))

    def call_many(self, method: str, params: list[dict[str, Any]]) -> list[Any]:
        """Pipelined calls of ``method``, one per item of ``params``, on this connection (tugd
        runs them concurrently): each result, or the :class:`TugError` it raised, in order. A
        broken connection (:class:`Disconnected`) is raised."""
        ids = [self.send(method, p) for p in params]
        results: list[Any] = []
        for req_id in ids:
            try:
                results.append(self.wait_for(req_id))
            except Disconnected:
                raise
            except errors.TugError as exc:
                results.append(exc)
        return results

    def stream(
        self, method: str, params: dict[str, Any] | None = None, *, wakeup_fd: int | None = None
    ) -> Stream:
        """Send a request whose answer is preceded by notifications, and return its
        :class:`Stream`: iterate over it for the notifications, then read its ``result``."""
        return Stream(self, self.send(method, params), wakeup_fd)

    def raw_stream(self, method: str, params: dict[str, Any], *, wakeup_fd: int | None = None) -> RawStream:
        """Call ``method`` with ``"stream": "raw"`` on a connection of its own (to the same
        socket) and return its :class:`RawStream` once tugd has switched it to frames. This
        connection stays free for other calls; a :class:`RawStream` iterated with a
        ``wakeup_fd`` also wakes when a message arrives here (kept for its request)."""
        raw = Client(self.path)
        try:
            opened = raw.call(method, {**params, "stream": frames.RAW})
        except BaseException:
            raw.close()
            raise
        if not isinstance(opened, dict) or opened.get("stream") != frames.RAW:
            raw.close()
            raise errors.Internal(f"{method}: tugd did not switch to a raw stream")
        return RawStream(raw, self, wakeup_fd)

    def forget(self, req_id: int) -> None:
        """Drop the answer to ``req_id`` when it comes (a request sent for its effect only)."""
        for i, msg in enumerate(self._held):
            if is_response(msg) and msg.get("id") == req_id:
                del self._held[i]
                return
        self._forgotten.add(req_id)

    def answered(self, req_id: int) -> bool:
        """Whether the answer to ``req_id`` has arrived and is kept for :meth:`wait_for`."""
        return any(is_response(msg) and msg.get("id") == req_id for msg in self._held)

    def wait_for(self, req_id: int) -> Any:
        """Wait for the response to ``req_id`` and return its result (or raise its error).

        Other messages that arrive meanwhile are kept, in order, for :meth:`next_message`.
        """
        for i, msg in enumerate(self._held):
            if is_response(msg) and msg.get("id") == req_id:
                del self._held[i]
                return response_result(msg)
        while True:
            got = self._read_message(None)
            assert got is not None  # no wakeup fd: a message or an exception
            if is_response(got) and got.get("id") == req_id:
                return response_result(got)
            if is_response(got) and got.get("id") is None and "error" in got:
                # An error without an id (a refused peer, a line tugd could not parse) answers
                # what we sent: raise it rather than wait for an answer that will not come.
                return response_result(got)
            self._hold(got)

    # ------------------------------------------------------------------------------- reading

    def next_message(self, wakeup_fd: int | None = None) -> dict[str, Any] | None:
        """The next message from tugd: a response or a notification, as a dict.

        With ``wakeup_fd`` (e.g. the read end of a ``signal.set_wakeup_fd`` pipe), returns None as
        soon as that fd is readable and no whole message is buffered; the caller drains it.
        """
        if self._held:
            return self._held.popleft()
        return self._read_message(wakeup_fd)

    def _hold(self, msg: dict[str, Any]) -> None:
        """Keep ``msg`` for whoever waits for it, unless it answers a forgotten request."""
        if is_response(msg) and msg.get("id") in self._forgotten:
            self._forgotten.discard(msg["id"])
            return
        self._held.append(msg)

    def _hold_one_and_buffered(self) -> None:
        """Read one message (the socket is readable) and every whole one already buffered, and
        keep them for whoever waits for them."""
        msg = self._read_message(None)
        while msg is not None:
            self._hold(msg)
            msg = self._read_message(None) if b"\n" in self._buf else None

    def _take_held(self, req_id: int) -> dict[str, Any] | None:
        """The first kept message of request ``req_id`` (its notification or its answer)."""
        for i, msg in enumerate(self._held):
            if _belongs_to(msg, req_id):
                del self._held[i]
                return msg
        return None

    def _read_message(self, wakeup_fd: int | None) -> dict[str, Any] | None:
        while True:
            line = self._read_line(wakeup_fd)
            if line is None:
                return None
            if not line.strip():
                continue
            try:
                msg = json.loads(line)
            except ValueError as exc:
                raise errors.Internal(f"malformed message from tugd: {exc}") from exc
            if not isinstance(msg, dict):
                raise errors.Internal(f"unexpected message from tugd: {type(msg).__name__}")
            return msg

    def _read_line(self, wakeup_fd: int | None) -> bytes | None:
        sock = self._socket()
        while True:
            nl = self._buf.find(b"\n", self._scanned)
            if nl >= 0:
                line = bytes(self._buf[:nl])
                del self._buf[: nl + 1]  # cheap: bytearray deletes from the front in O(1)
                self._scanned = 0
                return line
            self._scanned = len(self._buf)
            if self._scanned > CLIENT_MAX_LINE:
                raise errors.Internal(f"a message from tugd is over {CLIENT_MAX_LINE} bytes")
            if self._eof:
                raise Disconnected("tugd closed the connection")
            if wakeup_fd is not None:
                readable, _, _ = select.select([sock.fileno(), wakeup_fd], [], [])
                if wakeup_fd in readable:
                    return None
            try:
                data = sock.recv(_READ_SIZE)
            except OSError as exc:
                raise Disconnected(f"lost the connection to tugd: {exc.strerror or exc}") from exc
            if not data:
                self._eof = True
            self._buf += data

    # ------------------------------------------------------------------------------- helpers

    def _socket(self) -> csocket.socket:
        if self._sock is None:
            raise Disconnected("the connection to tugd is closed")
        return self._sock

    def _write(self, data: bytes) -> None:
        try:
            self._socket().sendall(data)
        except OSError as exc:
            raise Disconnected(f"lost the connection to tugd: {exc.strerror or exc}") from exc


def _belongs_to(msg: dict[str, Any], req_id: int) -> bool:
    """Whether ``msg`` is the answer to request ``req_id`` or one of its notifications."""
    if is_response(msg):
        return msg.get("id") == req_id
    params = msg.get("params")
    return isinstance(params, dict) and params.get("request") == req_id


class Stream:
    """A request whose answer is preceded by notifications (``container.logs``, ``exec``,
    ``events.subscribe``, ``image.build``, ``image.pull``...), made by :meth:`Client.stream`.

    Iterating yields each notification of the request (the whole message: ``method`` and
    ``params``, whose ``request`` is :attr:`id`) until its answer arrives; then iteration stops
    with the answer's result in :attr:`result`, or raises its error as the matching
    :class:`errors.TugError` (and :class:`Disconnected` if the connection ends first).

    With a ``wakeup_fd``, it also yields an empty dict (no message) as soon as that fd is readable
    (the caller drains it), and whenever a message for another request arrived: that one is kept
    for it (see :meth:`Client.answered`), so that one loop can serve a stream and other requests.
    """

    def __init__(self, client: Client, req_id: int, wakeup_fd: int | None = None) -> None:
        self.client = client
        self.id = req_id
        self.wakeup_fd = wakeup_fd
        self.done = False
        self.result: Any = None

    def __repr__(self) -> str:
        return f"<Stream {self.id} {'done' if self.done else 'open'}>"

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> dict[str, Any]:
        msg = self._next(self.wakeup_fd)
        if msg is None:
            if self.done:
                raise StopIteration
            return {}  # woken
        return msg

    def _next(self, wakeup_fd: int | None) -> dict[str, Any] | None:
        """The next notification; None for a wakeup, or once the answer has come."""
        client = self.client
        while not self.done:
            msg = client._take_held(self.id) if client._held else None
            if msg is None:
                msg = client._read_message(wakeup_fd)
                if msg is None:
                    return None  # the wakeup fd is readable
                if not _belongs_to(msg, self.id):
                    if is_response(msg) and msg.get("id") is None and "error" in msg:
                        self.done = True  # an error without an id answers what we sent
                        response_result(msg)
                    client._hold(msg)
                    if wakeup_fd is not None:
                        return None  # for the caller's other requests
                    continue
            if not is_response(msg):
                return msg
            self.done = True
            self.result = response_result(msg)
        return None

    def wait(self) -> Any:
        """Skip the remaining notifications and return the result (or raise the error),
        blocking until it comes (the wakeup fd is not watched)."""
        while not self.done:
            self._next(None)
        return self.result


class RawStream:
    """A connection switched to frames (:mod:`tugwire.frames`), made by :meth:`Client.raw_stream`.

    Iterating yields ``(stream, bytes)`` for each stdout or stderr frame until the ``end`` frame:
    then iteration stops with its result in :attr:`result`, or raises its error as the matching
    :class:`errors.TugError` (:class:`Disconnected` if the connection ends first). With a
    ``wakeup_fd`` it also yields ``()`` as soon as that fd is readable, and when a message
    arrived on the ``control`` client (read and kept there for its request).
    """

    def __init__(self, raw: Client, control: Client | None = None, wakeup_fd: int | None = None) -> None:
        self._raw = raw
        self._sock = raw._socket()
        self._parser = frames.FrameParser()
        self._parser.feed(bytes(raw._buf))
        raw._buf.clear()
        self._control = control
        self.wakeup_fd = wakeup_fd
        self.done = False
        self.result: Any = None

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self._raw.close()

    def send(self, kind: int, data: bytes) -> None:
        """One frame to tugd (stdin, or a control object's JSON)."""
        self._raw._write(frames.header(kind, len(data)) + data)

    def __iter__(self) -> RawStream:
        return self

    def __next__(self) -> tuple[int, bytes] | tuple[()]:
        parser = self._parser
        while not self.done:
            got = parser.next()
            if got is not None:
                kind, data = got
                if kind == frames.END:
                    self.done = True
                    self.close()
                    self.result = frames.end_result(data)
                    break
                return got
            if self.wakeup_fd is not None:
                fds = [self._sock.fileno(), self.wakeup_fd]
                control = self._control
                if control is not None and control._sock is not None:
                    fds.append(control.fileno())
                readable, _, _ = select.select(fds, [], [])
                if self.wakeup_fd in readable:
                    return ()
                if control is not None and control._sock is not None and control.fileno() in readable:
                    control._hold_one_and_buffered()
                    return ()
            try:
                data = self._sock.recv(max(_READ_SIZE, parser.need()))
            except OSError as exc:
                raise Disconnected(f"lost the raw stream from tugd: {exc.strerror or exc}") from exc
            if not data:
                self.close()
                raise Disconnected("tugd closed the raw stream before its end")
            parser.feed(data)
        raise StopIteration
