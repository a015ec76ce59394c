"""The task service for one container: runc, the reaper, the logs, the exit record, the socket.

Life of a shim: it is born (see :mod:`shimd.birth`) with its config; it binds its socket, runs
``runc run --detach`` with the container's stdio on pipes it holds, reports ``{pid}`` (or runc's
error) on the notify fd, then serves its socket. When PID 1 exits it reaps it, drains the pipes
to the end, fsyncs the log, writes ``exit.json`` atomically, and only then answers ``task.wait``.
The record stays until ``task.delete``, after which the shim exits. Nothing here depends on tugd
being alive.
"""

from __future__ import annotations

import base64
import ctypes
import json
import logging
import os
import signal
import socket
import time
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel

from tugwire import crilog, fsutil, httpserve, jsonrpc, shimapi
from tugwire.errors import InvalidArgument, InvalidParams, TugError
from tugwire.shimapi import PID_FILE, SOCKET, ShimConfig

from . import console, control
from . import exec as shimexec
from . import io as shimio
from .process import State, check
from .reaper import Reaper
from .reaper import environ as reaper_environ
from .runc import classify
from .task import Task

log = logging.getLogger("tugboat.shim")

PR_SET_CHILD_SUBREAPER = 36
# After delete, how long connections may take to finish. Log followers read the file at their
# client's pace: cutting them off early would lose the end of `tug run`'s output (a 5 s grace did,
# for 200 MB through a terminal), so the shim outlives its container while someone still reads.
SHUTDOWN_GRACE = 3600.0


class Service:
    """The shim's JSON-RPC methods."""

    def __init__(self, task: Task) -> None:
        self.task = task
        self.shutdown = anyio.Event()
        self.dispatcher = jsonrpc.Dispatcher()
        d = self.dispatcher
        d.add(shimapi.TASK_STATE, self.state)
        d.add(shimapi.TASK_WAIT, self.wait)
        d.add(shimapi.TASK_KILL, self.kill)
        d.add(shimapi.TASK_DELETE, self.delete)
        d.add(shimapi.TASK_LOGS, self.logs, accept_late=True)
        d.add(shimapi.TASK_METRICS, self.metrics)
        d.add(shimapi.TASK_PAUSE, self.pause)
        d.add(shimapi.TASK_RESUME, self.resume)
        d.add(shimapi.TASK_UPDATE, self.update)
        d.add(shimapi.TASK_TOP, self.top)
        d.add(shimapi.TASK_STATS, self.stats)
        d.add(shimapi.TASK_REOPEN_LOG, self.reopen_log)
        cfg = task.cfg
        self.execs = shimexec.Execs(task.runc, task.reaper, cfg.id, cfg.bundle, cfg.dir)
        shimexec.register(d, self.execs, lambda: State.STOPPED if task.reaped else task.state)
        console.register(d, task.input)

    async def pause(self, call: jsonrpc.Call) -> Any:
        """Freeze the container (``runc pause``); only a running task."""
        await control.pause(self.task)
        return {}

    async def resume(self, call: jsonrpc.Call) -> Any:
        """Thaw a paused container (``runc resume``)."""
        await control.resume(self.task)
        return {}

    async def update(self, call: jsonrpc.Call) -> Any:
        """``runc update``: ``memory`` (bytes), ``cpu_quota``/``cpu_period`` (µs), ``pids_limit``;
        or ``resources``, an OCI ``linux.resources`` object."""
        p = call.params
        await control.update(
            self.task,
            memory=p.integer("memory"),
            cpu_quota=p.integer("cpu_quota"),
            cpu_period=p.integer("cpu_period"),
            pids_limit=p.integer("pids_limit"),
            resources=_resources(p.raw.get("resources")),
        )
        return {}

    async def top(self, call: jsonrpc.Call) -> Any:
        """The container's processes: ``{titles, processes}`` as ``ps -ef`` (host pids)."""
        return control.top(self.task)

    async def stats(self, call: jsonrpc.Call) -> Any:
        """The container's cgroup figures as JSON (CPU seconds, memory, pids, read time)."""
        return control.task_stats(self.task)

    async def reopen_log(self, call: jsonrpc.Call) -> Any:
        """Open the log file again at its path (kubelet's ReopenContainerLog, after it renamed
        the file): FailedPrecondition once the container has stopped."""
        self.task.reopen_log()
        return {}

    async def state(self, call: jsonrpc.Call) -> Any:
        """The task's state, pid and exit record (if it has exited)."""
        return self.task.describe()

    async def metrics(self, call: jsonrpc.Call) -> Any:
        """The container's figures in the Prometheus text format: ``{"text": ...}``."""
        return {"text": self.task.metrics()}

    async def render_metrics(self, headers: dict[str, str]) -> bytes:
        """The same text for the shim's own HTTP listener."""
        return self.task.metrics().encode()

    async def wait(self, call: jsonrpc.Call) -> Any:
        """Returns the exit record once PID 1 has exited and its output is on disk."""
        await self.task.exited.wait()
        assert self.task.exit is not None
        return self.task.exit.to_json()

    async def kill(self, call: jsonrpc.Call) -> Any:
        """Send ``signal`` (a number) to PID 1, or with ``all`` to every process of the task."""
        sig = call.params.integer("signal", int(signal.SIGKILL))
        if not 0 < sig < 65:
            raise InvalidArgument(f"invalid signal {sig}")
        if call.params.boolean("all"):
            check(self.task.state, "kill")
            await self.task.runc.kill(self.task.cfg.id, sig, all_processes=True)
        else:
            await self.task.signal(sig)
        return {}

    async def delete(self, call: jsonrpc.Call) -> Any:
        """Delete the runtime's state (``force`` kills a running task first); then the shim exits."""
        record = await self.task.delete(force=call.params.boolean("force"))
        self.shutdown.set()
        return {"exit": record.to_json() if record else None}

    async def logs(self, call: jsonrpc.Call) -> Any:
        """Stream the log as ``logs.data`` notifications (base64 of whole CRI records), or with
        ``"stream": "raw"`` as stdout and stderr frames of the container's bytes (decoded here,
        ``timestamps`` before each line as ``logs -t``), ending with the result's ``end`` frame."""
        sink = self.task.sink
        tail = call.params.integer("tail")
        since = call.params.string("since")
        if call.wants_raw():
            channel = await call.switch()
            if sink is None:
                return {"dropped_bytes": 0}
            timestamps = call.params.boolean("timestamps")
            decoder = crilog.LogDecoder(timestamps=timestamps)

            async def send(data: bytes) -> None:
                for kind, out in decoder.feed(data):
                    await channel.send(kind, out)

            # Without timestamps, a follower that has caught up takes the pipes' bytes as read.
            live = None if timestamps else channel.send
        else:
            if sink is None:
                call.accept()
                return {"dropped_bytes": 0}

            async def send(data: bytes) -> None:
                call.accept()
                await call.notify_data(shimapi.LOGS_DATA, base64.b64encode(data))

            live = None

        await shimio.follow(
            sink,
            send,
            tail=tail,
            since=since.encode() if since else None,
            follow=call.params.boolean("follow"),
            ready=call.accept,
            live=live,
        )
        return {"dropped_bytes": sink.writer.dropped_bytes}


def bind_unix(path: str) -> socket.socket:
    """A listening Unix socket, mode 0600, made synchronously: anyio's create_unix_listener binds
    in a worker thread, which would cost every shim a thread (measured: ~5 ms and its memory)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    sock.listen(64)
    return sock


async def warm_up() -> None:
    """Walk the anyio paths a shim takes, so that their lazy imports and one-time set-up happen
    once in the template (before ``gc.freeze()`` and the forks), not in every shim."""
    reaper_environ()
    with anyio.open_signal_receiver(signal.SIGCHLD):
        pass
    r, w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        os.write(w, b"x")
        await anyio.wait_readable(r)
    finally:
        os.close(r)
        os.close(w)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    stream = await anyio.abc.SocketStream.from_socket(a)
    b.close()
    await stream.aclose()
    async with anyio.create_task_group() as tg:
        tg.start_soon(anyio.sleep, 0)
    with anyio.move_on_after(1):
        await anyio.lowlevel.checkpoint()
    with anyio.fail_after(1):
        event = anyio.Event()
        event.set()
        await event.wait()
    send, receive = anyio.create_memory_object_stream[bytes](1)
    send.close()
    receive.close()
    anyio.Lock()


# Looked up once, on import (in the template): a ``ctypes.CDLL`` made in every shim would make a
# new function-pointer class there, and run ctypes' Python code, at the cost of their pages.
prctl = ctypes.CDLL(None, use_errno=True).prctl


def set_subreaper() -> None:
    if prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def bind_metrics(address: str) -> socket.socket | None:
    """The shim's own HTTP listener for its container's metrics, when its config asks for one.
    Bound before the container starts, so that a port in use fails the start with a clear error."""
    if not address:
        return None
    try:
        return httpserve.bind_tcp(*httpserve.parse_address(address))
    except httpserve.AddressError as exc:
        raise InvalidArgument(str(exc), field="metrics_address") from exc
    except OSError as exc:
        raise InvalidArgument(
            f"cannot serve the container's metrics on {address}: {exc.strerror}", field="metrics_address"
        ) from exc


def _file_id(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _unlink_if(path: str, file_id: tuple[int, int]) -> None:
    """Unlink ``path`` if it is still the file ``file_id`` (see ``serve``)."""
    try:
        if _file_id(path) == file_id:
            os.unlink(path)
    except FileNotFoundError:
        pass


def _note(message: str) -> None:
    """An INFO line in ``shim.log``, as the logging module would write it (``shim.birth``'s
    format), for the one line every shim writes: logging would build a record through some 25
    functions of the template, and each shim would pay for the pages they live on."""
    now = time.time()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
    line = f"{stamp},{int(now % 1 * 1000):03d} shim[{os.getpid()}] INFO {message}\n"
    try:
        os.write(2, line.encode())
    except OSError:
        pass


def _notify(fd: int | None, obj: dict[str, Any]) -> None:
    if fd is None:
        return
    try:
        os.write(fd, json.dumps(obj).encode() + b"\n")
    except OSError:
        pass  # whoever asked for this shim is gone; the shim carries on regardless
    finally:
        os.close(fd)


async def serve(cfg: ShimConfig, notify_fd: int | None) -> None:
    """Run the shim: start the container, report on ``notify_fd``, serve until deleted."""
    set_subreaper()
    fsutil.write_atomic(cfg.path(PID_FILE), f"{os.getpid()}\n".encode(), durable=False)
    sock_path = cfg.path(SOCKET)
    try:
        http_sock = bind_metrics(cfg.metrics_address)
    except TugError as exc:
        _notify(notify_fd, {"error": exc.to_json()})  # before the container exists: nothing to undo
        return
    listener = await anyio.abc.SocketListener.from_socket(bind_unix(sock_path))
    # The socket file is unlinked at the end only while it is still ours: once tugd has deleted
    # the task it may remove this directory and start the next shim in a new one at the same
    # path; unlinking by path then would take the new shim's socket (found by the load test).
    own_socket = _file_id(sock_path)
    reaper = Reaper()
    async with anyio.create_task_group() as tg:
        await tg.start(reaper.run)
        task = Task(cfg, reaper)
        t_runc = time.monotonic()
        try:
            await task.start(tg)
        except TugError as exc:
            err = classify(exc)
            # runc may have got as far as creating the container before it failed, was killed or
            # timed out: leave neither its state nor its processes behind (no state: not_found).
            try:
                await task.runc.delete(cfg.id, force=True)
            except TugError:
                pass
            _notify(notify_fd, {"error": err.to_json()})
            await listener.aclose()
            if http_sock is not None:
                http_sock.close()
            _unlink_if(sock_path, own_socket)
            tg.cancel_scope.cancel()
            return
        _notify(notify_fd, shimapi.LaunchReply(task.pid, os.getpid(), sock_path).to_json())
        now = time.monotonic()
        to_runc = (t_runc - cfg.requested_at) * 1000 if cfg.requested_at else -1
        _note(
            f"container {cfg.id[:12]} running as pid {task.pid}: {to_runc:.1f} ms from request to runc, "
            f"runc run {(now - t_runc) * 1000:.1f} ms"
        )
        service = Service(task)
        if http_sock is not None:
            http = await anyio.abc.SocketListener.from_socket(http_sock)
            tg.start_soon(httpserve.serve, http, service.render_metrics)
        async with anyio.create_task_group() as conns:
            accepting = anyio.CancelScope()

            async def accept() -> None:
                with accepting:
                    while True:
                        try:
                            stream = await listener.accept()
                        except anyio.ClosedResourceError:
                            # Closed at shutdown below: trio wakes a pending accept with this
                            # rather than with the cancellation (which would have failed the
                            # shim and cut its log followers off mid-message).
                            return
                        conns.start_soon(jsonrpc.ServerConnection(stream, service.dispatcher).serve)

            conns.start_soon(accept)
            await service.shutdown.wait()
            # Deleted: accept no one new; let the last answers and log followers finish, under a
            # deadline (tugd closes its connections once it has the answer).
            accepting.cancel()
            await listener.aclose()
            conns.cancel_scope.deadline = anyio.current_time() + SHUTDOWN_GRACE
        _unlink_if(sock_path, own_socket)
        tg.cancel_scope.cancel()


def _resources(value: Any) -> dict[str, Any] | None:
    """``task.update``'s ``resources``: an object, or None."""
    if value is not None and not isinstance(value, dict):
        raise InvalidParams("parameter 'resources' must be an object", param="resources")
    return value
