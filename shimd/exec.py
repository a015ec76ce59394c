"""Exec processes: extra processes run in a running container with ``runc exec --detach``.

The shim owns every exec process as it owns PID 1: ``runc exec --detach`` exits once the process
has started, the process is re-parented to the shim (the child subreaper) and the shim's one
:class:`~shimd.reaper.Reaper` reaps it. Its exit can come before we have read its pid file: the
reaper then holds the status of the unknown pid and hands it over on ``wait`` (the race is
handled there, once, for PID 1 and for every exec alike).

An exec's stdout and stderr go to whoever asked for it, not to the container's log (as docker:
``docker logs`` shows only PID 1's output): ``task.exec`` is a raw stream (docs/api.md, "Raw
streams"), its stdout and stderr frames the exec's bytes as read, a control frame
``{"started": {exec_id, pid}}`` once it runs, the end frame its exit. The client's frames on it
are the exec's input: stdin frames to its stdin pipe or terminal (an empty one closes the pipe),
control ``{"resize": [rows, cols]}`` to its terminal.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

from tugwire import frames, jsonrpc, shimapi
from tugwire.errors import FailedPrecondition, InvalidArgument, NotFound, TugError
from tugwire.rawchannel import RawChannel

from .console import ConsoleSocket, set_size, write_all
from .process import State
from .reaper import Reaper, exit_code
from .runc import Runc, RuncError, classify

DRAIN_GRACE = 2.0  # after the exec exits, how long its pipes may stay open (a background child)
READ_SIZE = 1 << 16

Send = Callable[[int, bytes], Awaitable[None]]  # one frame: its stream id and payload


def failure_code(err: TugError) -> int:
    """The exit status docker gives an exec that runc could not start: 127 when the program is
    not found, 126 when it cannot be executed (runc's message names the cause)."""
    text = err.message.lower()
    if "not found" in text or "no such file" in text:
        return 127
    return 126


def process_spec(
    bundle: str,
    args: list[str],
    env: list[str],
    cwd: str | None,
    user: Any,
    size: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """The ``process`` of the bundle's config.json with the exec's args, env, cwd and user; with
    ``size`` (rows, cols) on a terminal of that size."""
    with open(os.path.join(bundle, "config.json")) as f:
        proc: dict[str, Any] = dict(json.load(f)["process"])
    merged: dict[str, str] = {}
    for item in [*proc.get("env", []), *env]:
        key, _, _ = item.partition("=")
        merged[key] = item
    proc["args"] = args
    proc["env"] = list(merged.values())
    proc["terminal"] = size is not None
    proc.pop("consoleSize", None)
    if size is not None:
        proc["consoleSize"] = {"height": size[0], "width": size[1]}
        if not any(item.startswith("TERM=") for item in proc["env"]):
            proc["env"].append("TERM=xterm")
    if cwd:
        proc["cwd"] = cwd
    if user is not None:
        proc["user"] = user
    return proc


@dataclass
class ExecProcess:
    id: str
    stdin: int = -1  # write end of the exec's stdin pipe (or the pty), -1 when closed or not asked for
    master: int = -1  # the pty's master, with a terminal
    lock: anyio.Lock = field(default_factory=anyio.Lock)

    def close_stdin(self, *, eof: bool = True) -> None:
        """Close the stdin pipe. On a terminal there is no EOF to give but ^D: the pty stays."""
        if self.master >= 0 and eof:
            return
        if self.stdin >= 0:
            os.close(self.stdin)
            self.stdin = -1


class Execs:
    """The exec processes of one task."""

    def __init__(self, runc: Runc, reaper: Reaper, cid: str, bundle: str, state_dir: str) -> None:
        self.runc = runc
        self.reaper = reaper
        self.cid = cid
        self.bundle = bundle
        self.dir = state_dir
        self.running: dict[str, ExecProcess] = {}

    def __repr__(self) -> str:
        return f"<Execs {self.cid[:12]} running={len(self.running)}>"

    async def run(
        self,
        state: State,
        args: list[str],
        *,
        channel: RawChannel,
        exec_id: str | None = None,
        env: list[str] | None = None,
        cwd: str | None = None,
        user: Any = None,
        stdin: bool = False,
        detach: bool = False,
        tty: tuple[int, int] | None = None,
    ) -> dict[str, Any]:
        """Run one exec to its end on ``channel`` (switched to frames): the ``started`` control
        frame, then its output as stdout and stderr frames, while the client's stdin and control
        frames go to its input; returns ``{exit_code, signal}`` (126/127 and ``error`` if runc
        could not start it). With ``detach`` its stdio is /dev/null and it returns ``{exec_id,
        pid}`` once started (the reaper still reaps it). With ``tty`` (rows, cols) it runs on a
        new pty whose master the shim holds: its output is ``stdout`` and input goes to the
        master. Raises FailedPrecondition unless the task is running."""
        if state is not State.RUNNING:
            raise FailedPrecondition(f"cannot exec: task is {state.value}", state=state.value)
        if not args:
            raise InvalidArgument("exec needs a command", field="args")
        eid = exec_id or os.urandom(16).hex()  # as uuid4().hex, without importing uuid
        if eid in self.running or not eid.isalnum():
            raise InvalidArgument(f"bad or duplicate exec id {eid!r}", field="exec_id")
        spec_path = os.path.join(self.dir, f"exec-{eid}.json")
        pid_path = os.path.join(self.dir, f"exec-{eid}.pid")
        with open(spec_path, "w") as f:
            json.dump(process_spec(self.bundle, args, env or [], cwd, user, tty), f)
        proc = ExecProcess(eid)
        if detach or tty:
            out_r, out_w = -1, os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
            err_r, err_w = -1, os.dup(out_w)
        else:
            out_r, out_w = os.pipe2(os.O_CLOEXEC)
            err_r, err_w = os.pipe2(os.O_CLOEXEC)
        if stdin and not detach and not tty:
            in_r, proc.stdin = os.pipe2(os.O_CLOEXEC)
        else:
            in_r = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self.running[eid] = proc
        send = _quiet(channel)
        console = ConsoleSocket(self.dir, f"c{eid[:8]}.sock") if tty else None
        try:
            try:
                await self._start(spec_path, pid_path, proc, console, in_r, out_w, err_w)
                with open(pid_path) as f:
                    pid = int(f.read().strip())
            finally:
                for fd in (in_r, out_w, err_w):
                    os.close(fd)
                if console is not None:
                    console.close()
            if proc.master >= 0:
                out_r = os.dup(proc.master)
                if stdin:
                    proc.stdin = os.dup(proc.master)
            if detach:
                self.reaper.discard(pid)
                return {"exec_id": eid, "pid": pid}
            await send(frames.CONTROL, frames.started_payload(eid, pid))
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._input, channel, eid)  # taken only now: the pty is there
                async with anyio.create_task_group() as drains:
                    drains.start_soon(_drain, out_r, frames.STDOUT, send)
                    if err_r >= 0:  # on a terminal stderr is the pty too
                        drains.start_soon(_drain, err_r, frames.STDERR, send)
                    status = await self.reaper.wait(pid)
                    drains.cancel_scope.deadline = anyio.current_time() + DRAIN_GRACE
                tg.cancel_scope.cancel()
        except RuncError as exc:
            err = classify(exc)
            if err is not exc:  # the container is gone or stopped: not the program's fault
                raise err from exc
            return {"exec_id": eid, "exit_code": failure_code(exc), "signal": None, "error": exc.message}
        finally:
            proc.close_stdin(eof=False)
            if proc.master >= 0:
                os.close(proc.master)
            del self.running[eid]
            for fd in (out_r, err_r):
                if fd >= 0:
                    os.close(fd)
            for path in (spec_path, pid_path):
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
        code, sig = exit_code(status)
        return {"exec_id": eid, "exit_code": code, "signal": sig}

    async def _start(
        self,
        spec_path: str,
        pid_path: str,
        proc: ExecProcess,
        console: ConsoleSocket | None,
        stdin: int,
        stdout: int,
        stderr: int,
    ) -> None:
        """``runc exec --detach``; with a console socket, take the pty's master runc sends."""

        async def start(console_path: str | None) -> None:
            await self.runc.exec_detached(
                self.cid,
                spec_path,
                pid_path,
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                console_socket=console_path,
            )

        if console is None:
            await start(None)
        else:
            proc.master = await console.collect(start)

    async def _input(self, channel: RawChannel, exec_id: str) -> None:
        """The client's frames to exec ``exec_id``: stdin (an empty one closes it) and control
        (resize). Input the exec cannot take is dropped; the end of the connection (the caller
        has gone) leaves the exec running, its output read and dropped."""
        while True:
            try:
                kind, data = await channel.receive()
            except (anyio.EndOfStream, frames.MalformedFrame):
                return
            try:
                if kind == frames.STDIN and data:
                    await self.write_stdin(exec_id, data)
                elif kind == frames.STDIN:
                    await self.close_stdin(exec_id)
                elif kind == frames.CONTROL and (size := frames.resize_of(data)):
                    self.resize(exec_id, *size)
            except (TugError, OSError):
                pass

    def resize(self, exec_id: str, rows: int, cols: int) -> None:
        """Set the window size of the exec's terminal."""
        proc = self.get(exec_id)
        if proc.master < 0:
            raise FailedPrecondition(f"exec {exec_id} has no terminal")
        set_size(proc.master, rows, cols)

    def get(self, exec_id: str) -> ExecProcess:
        try:
            return self.running[exec_id]
        except KeyError:
            raise NotFound(f"no running exec {exec_id!r}") from None

    async def write_stdin(self, exec_id: str, data: bytes) -> None:
        """Write all of ``data`` to the exec's stdin (in order: one writer at a time). Data for an
        exec whose stdin is closed or whose reader has gone is dropped, as a pipe would."""
        proc = self.get(exec_id)
        async with proc.lock:
            if proc.stdin >= 0:
                os.set_blocking(proc.stdin, False)
                if not await write_all(proc.stdin, data):
                    proc.close_stdin(eof=False)  # its reader has gone: drop the rest, as a pipe would

    async def close_stdin(self, exec_id: str) -> None:
        """Close the exec's stdin once what was written before has gone in (EOF for the reader)."""
        proc = self.get(exec_id)
        async with proc.lock:
            proc.close_stdin()


def _quiet(channel: RawChannel) -> Send:
    """Frames to ``channel`` until the caller has gone (``tug exec`` detached, or killed): the
    exec runs on, its output read and dropped, until it exits and is reaped."""
    gone = False

    async def deliver(kind: int, data: bytes) -> None:
        nonlocal gone
        if gone:
            return
        try:
            with anyio.CancelScope(shield=True):  # a frame is never cut (the drains' deadline)
                await channel.send(kind, data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            gone = True

    return deliver


async def _drain(fd: int, kind: int, send: Send) -> None:
    os.set_blocking(fd, False)
    while True:
        await anyio.wait_readable(fd)
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            continue
        except OSError as exc:
            if exc.errno == errno.EIO:
                return  # a pty's master once every slave fd has closed: its EOF
            raise
        if not data:
            return
        await send(kind, data)


def register(d: jsonrpc.Dispatcher, execs: Execs, state: Callable[[], State]) -> None:
    """Add ``task.exec`` (a raw stream) to the shim's methods; ``state`` is the task's current
    state (an exec needs a running task)."""

    async def task_exec(call: jsonrpc.Call) -> Any:
        """Run ``args`` in the container, on the raw stream this call switches to."""
        p = call.params
        if not call.wants_raw():
            raise InvalidArgument("task.exec is a raw stream: ask for it with stream 'raw'", field="stream")
        args = p.list_of_str("args")
        tty = _size(p) if p.boolean("tty") else None
        return await execs.run(
            state(),
            args,
            channel=await call.switch(),
            exec_id=p.string("exec_id"),
            env=p.list_of_str("env"),
            cwd=p.string("cwd"),
            user=p.raw.get("user"),
            stdin=p.boolean("stdin"),
            detach=p.boolean("detach"),
            tty=tty,
        )

    d.add(shimapi.TASK_EXEC, task_exec, accept_late=True)  # accepted by the switch: no line read after


def _size(p: jsonrpc.Params) -> tuple[int, int]:
    rows, cols = p.integer("rows", 24), p.integer("cols", 80)
    if not (0 < rows < 65536 and 0 < cols < 65536):
        raise InvalidArgument(f"bad terminal size {rows}x{cols}", field="rows")
    return rows, cols
