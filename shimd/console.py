"""Terminals: the console socket runc sends a pty's master to, and the master's window size.

With ``process.terminal`` runc makes the pty inside the container and sends its master over the
``--console-socket`` (one message, the fd in SCM_RIGHTS). The shim holds the master: it reads the
process's output from it, writes the input to it and sets its window size.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
import termios
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

import anyio

from tugwire import frames, jsonrpc, shimapi
from tugwire.errors import FailedPrecondition, Internal, InvalidArgument, TugError

from .io import READ_SIZE, LogSink

MAX_SUN_PATH = 107  # bytes of a Unix socket path, without the terminating NUL
RECEIVE_TIMEOUT = 10.0


def set_size(master: int, rows: int, cols: int) -> None:
    """Set the terminal's window size (the kernel sends SIGWINCH to its foreground group)."""
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class ConsoleSocket:
    """A listening Unix socket for one ``runc --console-socket``; ``receive`` returns the master.

    It lives in ``state_dir`` when the path fits a socket address, else in a private temp dir."""

    def __init__(self, state_dir: str, name: str) -> None:
        self._tmp: str | None = None
        path = os.path.join(state_dir, name)
        if len(path.encode()) > MAX_SUN_PATH:
            import tempfile  # rare (a long state dir): not in every shim's template

            self._tmp = tempfile.mkdtemp(prefix="tug-console-")
            path = os.path.join(self._tmp, "s")
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)
        try:
            self.sock.bind(path)
        finally:
            os.umask(old)
        self.sock.listen(1)
        self.sock.setblocking(False)

    def __enter__(self) -> ConsoleSocket:
        return self

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        if self._tmp is not None:
            import shutil

            shutil.rmtree(self._tmp, ignore_errors=True)

    async def collect(self, start: Callable[[str], Awaitable[None]]) -> int:
        """Run ``start(console_path)`` (a runc call) while taking the master runc sends; the
        master fd. runc's error is raised as itself."""
        master = -1
        failure: BaseException | None = None

        async def take() -> None:
            nonlocal master
            master = await self.receive()

        async with anyio.create_task_group() as tg:
            tg.start_soon(take)
            try:
                await start(self.path)
            except Exception as exc:  # raised as itself below, not in the task group's group
                failure = exc
                tg.cancel_scope.cancel()
            else:
                # runc has sent the master before it exits: it waits in the socket's buffer.
                tg.cancel_scope.deadline = anyio.current_time() + RECEIVE_TIMEOUT
        if failure is not None:
            if master >= 0:
                os.close(master)
            raise failure
        if master < 0:
            raise Internal("the runtime sent no terminal on the console socket")
        return master

    async def receive(self) -> int:
        """Accept runc's connection and return the master fd it sends (non-blocking, CLOEXEC)."""
        while True:
            await anyio.wait_readable(self.sock.fileno())
            try:
                conn, _ = self.sock.accept()
                break
            except BlockingIOError:
                continue
        with conn:
            conn.setblocking(False)
            while True:
                await anyio.wait_readable(conn.fileno())
                try:
                    _msg, fds, _flags, _addr = socket.recv_fds(conn, 4096, 1)
                    break
                except BlockingIOError:
                    continue
        if not fds:
            raise Internal("the runtime sent no terminal on the console socket")
        master = fds[0]
        os.set_inheritable(master, False)
        os.set_blocking(master, False)
        return master


async def write_all(fd: int, data: bytes) -> bool:
    """Write all of ``data`` to the non-blocking ``fd``; False if its reader has gone."""
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            await anyio.wait_writable(fd)
            continue
        except (BrokenPipeError, OSError) as exc:
            if isinstance(exc, BrokenPipeError) or exc.errno == errno.EIO:
                return False
            raise
        view = view[n:]
    return True


async def copy_to_log(master: int, sink: LogSink) -> None:
    """Copy a pty's output into the log (stream ``stdout``) until every slave fd has closed."""
    while True:
        await anyio.wait_readable(master)
        try:
            data = os.read(master, READ_SIZE)
        except BlockingIOError:
            continue
        except OSError as exc:
            if exc.errno == errno.EIO:
                return  # the master's EOF: no process holds the terminal any more
            raise
        if not data:
            return
        sink.write(b"stdout", data)


class TaskInput:
    """PID 1's terminal or stdin pipe, held by the shim (``tty``/``stdin`` of the shim config).

    Input from attached clients goes to the master (or the pipe) in order, one writer at a time."""

    def __init__(self, state_dir: str, *, tty: bool, stdin: bool) -> None:
        self.dir = state_dir
        self.tty = tty
        self.stdin = stdin
        self.master = -1
        self.stdin_w = -1
        self.lock = anyio.Lock()

    def __repr__(self) -> str:
        return f"<TaskInput tty={self.tty} stdin={self.stdin} master={self.master} pipe={self.stdin_w}>"

    async def start(self, run: Callable[[int, str | None], Awaitable[None]], default_stdin: int) -> None:
        """``run(stdin_fd, console_socket)``: the runc call that starts PID 1, with its stdin."""
        if self.tty:
            with ConsoleSocket(self.dir, "console.sock") as console:
                self.master = await console.collect(lambda path: run(default_stdin, path))
        elif self.stdin:
            read_end, self.stdin_w = os.pipe2(os.O_CLOEXEC)
            os.set_blocking(self.stdin_w, False)
            try:
                await run(read_end, None)
            except BaseException:
                self.close()
                raise
            finally:
                os.close(read_end)
        else:
            await run(default_stdin, None)

    async def write(self, data: bytes) -> None:
        """Write to PID 1's terminal or stdin; FailedPrecondition if it has none (or closed)."""
        async with self.lock:
            fd = self.master if self.master >= 0 else self.stdin_w
            if fd < 0:
                raise FailedPrecondition("the container's stdin is not open (create it with stdin)")
            if not await write_all(fd, data) and fd == self.stdin_w:
                os.close(self.stdin_w)  # its reader has gone: as a pipe would, drop the rest
                self.stdin_w = -1

    async def close_stdin(self) -> None:
        """EOF on PID 1's stdin pipe after what was written (nothing on a terminal)."""
        async with self.lock:
            if self.stdin_w >= 0:
                os.close(self.stdin_w)
                self.stdin_w = -1

    def resize(self, rows: int, cols: int) -> None:
        if self.master < 0:
            raise FailedPrecondition("the container has no terminal")
        set_size(self.master, rows, cols)

    def close(self) -> None:
        for name in ("master", "stdin_w"):
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)


def register(d: jsonrpc.Dispatcher, task_input: TaskInput) -> None:
    """Add ``task.attach``: PID 1's input and terminal size as frames (docs/api.md, "Raw
    streams")."""

    async def attach(call: jsonrpc.Call) -> Any:
        """A raw stream of input for PID 1: stdin frames to its terminal or stdin, one after the
        other (an empty one closes its stdin), control ``{"resize": [rows, cols]}`` to its
        terminal. Input it cannot take is dropped; once the client has sent all (its half-close)
        the end frame is ``{}``, or the error of the first input that was dropped."""
        if not call.wants_raw():
            raise InvalidArgument("task.attach is a raw stream: ask for it with stream 'raw'", field="stream")
        channel = await call.switch()
        first: TugError | None = None
        while True:
            try:
                kind, data = await channel.receive()
            except (anyio.EndOfStream, frames.MalformedFrame):
                break
            try:
                if kind == frames.STDIN and data:
                    await task_input.write(data)
                elif kind == frames.STDIN:
                    await task_input.close_stdin()
                elif kind == frames.CONTROL and (size := frames.resize_of(data)):
                    rows, cols = size
                    if not (0 < rows < 65536 and 0 < cols < 65536):
                        raise InvalidArgument(f"bad terminal size {rows}x{cols}", field="rows")
                    task_input.resize(rows, cols)
            except TugError as exc:
                first = first or exc
        if first is not None:
            raise first
        return {}

    d.add(shimapi.TASK_ATTACH, attach, accept_late=True)  # accepted by the switch: no line read after
