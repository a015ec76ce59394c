"""Starting shims, talking to them, and cleaning up after dead ones. Every call has a deadline.

How a shim is born is decided here and only here (:class:`ShimLauncher`): by the pre-imported
template (default), or by a cold ``tug-shim start`` per container. Everything tugd says to a
shim afterwards goes through one :class:`ShimClient` (containers, execs, attach, stats, health,
build, metrics), in the terms of the shim contract, :mod:`tugwire.shimapi`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import AsyncIterator
from typing import Any, Protocol

import anyio
import anyio.abc

from tugwire import errors, frames, fsutil, jsonrpc, shimapi
from tugwire.rawchannel import RawChannel
from tugwire.shimapi import (
    ExecParams,
    ExitRecord,
    LaunchReply,
    LogsParams,
    ShimConfig,
    TaskState,
    UpdateParams,
)

log = logging.getLogger("tugboat.shims")


def shim_command() -> list[str]:
    """``tug-shim`` next to our interpreter (so ps shows it by name), else ``python -m shimd``."""
    script = os.path.join(os.path.dirname(sys.executable), "tug-shim")
    if os.access(script, os.X_OK):
        return [script]
    return [sys.executable, "-m", "shimd"]


def _parse_reply(raw: bytes, what: str) -> LaunchReply:
    line = raw.strip().splitlines()[-1] if raw.strip() else b""
    if not line:
        raise errors.Internal(f"{what}: the shim died before it answered (see its shim.log)")
    try:
        reply = json.loads(line)
    except ValueError as exc:
        raise errors.Internal(f"{what}: bad answer from the shim: {line[:200]!r}") from exc
    if not isinstance(reply, dict):
        raise errors.Internal(f"{what}: bad answer from the shim: {line[:200]!r}")
    if "error" in reply:
        raise errors.from_json(reply["error"])
    return LaunchReply.from_json(reply)


class ShimLauncher(Protocol):
    async def launch(self, config: ShimConfig) -> LaunchReply:
        """Start a shim for ``config``; return its reply once the container runs, or raise the
        runtime's error."""
        ...

    async def aclose(self) -> None: ...


class ExecLauncher:
    """A cold interpreter per shim: ``tug-shim start`` (simple, ~20 MB per shim)."""

    name = "exec"

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout

    async def launch(self, config: ShimConfig) -> LaunchReply:
        with anyio.fail_after(self.timeout):
            result = await anyio.run_process(
                [*shim_command(), "start", config.id],
                input=json.dumps(config.to_json()).encode(),
                check=False,
            )
        return _parse_reply(result.stdout, "shim start")

    async def aclose(self) -> None:
        pass


class TemplateLauncher:
    """Forks shims from a pre-imported template process (see :mod:`shimd.birth`).

    The template is tugd's child and dies with it (PDEATHSIG); the shims it forks are not its
    children and outlive both. If the template dies, the next launch starts a new one.
    """

    name = "template"

    def __init__(self, socket_path: str, timeout: float, backend: str = "asyncio") -> None:
        self.socket_path = socket_path
        self.backend = backend
        self.timeout = timeout
        self._proc: anyio.abc.Process | None = None
        self._lock = anyio.Lock()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def _ensure(self) -> None:
        async with self._lock:
            if self._proc is not None and self._proc.returncode is None:
                return
            if self._proc is not None:
                await self._proc.aclose()
            proc = await anyio.open_process(
                [
                    *shim_command(),
                    "template",
                    "--socket",
                    self.socket_path,
                    "--parent",
                    str(os.getpid()),
                    "--backend",
                    self.backend,
                ],
                stdin=None,
                stderr=None,
            )
            assert proc.stdout is not None
            try:
                with anyio.fail_after(self.timeout):
                    reader = jsonrpc.LineReader(proc.stdout, 1024)
                    line = await reader.receive_line()
            except (TimeoutError, anyio.EndOfStream) as exc:
                proc.kill()
                await proc.aclose()
                raise errors.Internal("the shim template did not start") from exc
            if line.strip() != b"ready":
                proc.kill()
                await proc.aclose()
                raise errors.Internal(f"the shim template said {line!r}")
            self._proc = proc

    async def launch(self, config: ShimConfig) -> LaunchReply:
        await self._ensure()
        try:
            return await self._ask(config)
        except OSError:
            # The template died since: start a new one and try once more.
            if self._proc is not None:
                self._proc.kill()
            await self._ensure()
            return await self._ask(config)

    async def _ask(self, config: ShimConfig) -> LaunchReply:
        stream = await anyio.connect_unix(self.socket_path)
        async with stream:
            await stream.send(json.dumps(config.to_json()).encode() + b"\n")
            reader = jsonrpc.LineReader(stream, 1 << 20)
            with anyio.fail_after(self.timeout):
                try:
                    line = await reader.receive_line()
                except anyio.EndOfStream:
                    line = b""
        return _parse_reply(line, "shim start")

    async def aclose(self) -> None:
        if self._proc is not None:
            if self._proc.returncode is None:
                self._proc.kill()
            with anyio.CancelScope(shield=True):
                await self._proc.aclose()
            self._proc = None


async def _call(
    socket_path: str, method: str, params: dict[str, Any] | None = None, *, timeout: float = 10.0
) -> Any:
    """One call to a shim on a connection of its own, under a deadline."""
    try:
        with anyio.fail_after(timeout):
            async with jsonrpc.connect(socket_path, timeout=timeout) as client:
                return await client.call(method, params)
    except TimeoutError as exc:
        raise errors.Unavailable(f"shim at {socket_path} did not answer {method} in {timeout:g}s") from exc


def _dict(reply: Any) -> dict[str, Any]:
    return reply if isinstance(reply, dict) else {}


class LogStream:
    """The shim's ``task.logs`` stream: the base64 text of whole CRI records, chunk by chunk,
    passed on as the shim encoded it; then :meth:`result`."""

    def __init__(self, stream: jsonrpc.Stream) -> None:
        self._stream = stream

    def __aiter__(self) -> AsyncIterator[str]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[str]:
        async for note in self._stream:
            yield str(note.get("data", ""))

    async def result(self) -> dict[str, Any]:
        """``{"dropped_bytes": N}`` once the stream has ended."""
        result = _dict(await self._stream.result())
        return result or {"dropped_bytes": 0}


def started_pid(data: bytes) -> int:
    """The pid in a ``started`` control frame of the shim (0 in any other control frame)."""
    started = frames.started_of(data)
    return int(started.get("pid") or 0) if started else 0


class ExecSession:
    """A running ``task.exec`` on its raw stream (docs/api.md, "Raw streams"): iterate its frames
    (``(stream, bytes)``: control ``{"started": ...}``, stdout, stderr) until the end frame,
    whose result is then :attr:`result`; its input goes as frames on the same stream, in order."""

    def __init__(self, channel: RawChannel, exec_id: str) -> None:
        self.channel = channel
        self.exec_id = exec_id
        self.result: dict[str, Any] | None = None

    def __aiter__(self) -> AsyncIterator[tuple[int, bytes]]:
        return self._frames()

    async def _frames(self) -> AsyncIterator[tuple[int, bytes]]:
        while self.result is None:
            try:
                kind, data = await self.channel.receive()
            except anyio.EndOfStream:
                raise errors.Unavailable("the shim closed the exec stream before its end") from None
            if kind == frames.END:
                self.result = _dict(frames.end_result(data))
                return
            yield kind, data

    async def stdin(self, data: bytes) -> None:
        """Write ``data`` to the exec's stdin (an empty ``data`` is nothing)."""
        if data:
            await self.channel.send(frames.STDIN, data)

    async def close_stdin(self) -> None:
        """Close the exec's stdin, after the data sent before."""
        await self.channel.send(frames.STDIN, b"")

    async def resize(self, rows: int, cols: int) -> None:
        """Set the size of the exec's terminal."""
        await self.channel.send(frames.CONTROL, json.dumps({"resize": [rows, cols]}).encode())


class ShimClient:
    """The one way tugd talks to the shim whose state directory is ``directory``: each method of
    the shim contract (:mod:`tugwire.shimapi`), typed, on a connection of its own. Short calls
    have a deadline (``timeout``); ``wait``, ``logs`` and ``exec`` last as long as the task."""

    def __init__(self, directory: str, timeout: float = 10.0) -> None:
        self.dir = directory
        self.socket = shimapi.path(directory, shimapi.SOCKET)
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"<ShimClient {self.dir}>"

    async def call(
        self, method: str, params: dict[str, Any] | None = None, *, timeout: float | None = None
    ) -> Any:
        """One call under a deadline (the client's, unless ``timeout`` is given)."""
        return await _call(self.socket, method, params, timeout=self.timeout if timeout is None else timeout)

    async def state(self, *, timeout: float | None = None) -> TaskState:
        """``task.state``: the task's status, pids and exit record (if it has exited)."""
        return TaskState.from_json(await self.call(shimapi.TASK_STATE, timeout=timeout))

    async def wait(self, *, timeout: float | None = None) -> ExitRecord:
        """``task.wait``: the exit record, once PID 1 has exited and its output is on disk (with
        ``timeout``: Unavailable if that takes longer)."""
        if timeout is not None:
            reply = await self.call(shimapi.TASK_WAIT, timeout=timeout)
        else:
            async with jsonrpc.connect(self.socket) as client:
                reply = await client.call(shimapi.TASK_WAIT)
        try:
            return ExitRecord.from_json(reply)
        except ValueError as exc:
            raise errors.Internal(f"the shim at {self.dir} answered a bad exit record: {exc}") from exc

    async def kill(self, sig: int, *, all_processes: bool = False, timeout: float | None = None) -> None:
        """``task.kill``: signal PID 1 (or every process of the task)."""
        await self.call(
            shimapi.TASK_KILL, shimapi.params(shimapi.KillParams(sig, all_processes)), timeout=timeout
        )

    async def delete(self, *, force: bool = True) -> ExitRecord | None:
        """``task.delete``: the shim deletes the runtime's state and exits; its exit record."""
        reply = _dict(await self.call(shimapi.TASK_DELETE, shimapi.params(shimapi.DeleteParams(force))))
        return ExitRecord.optional(reply.get("exit"))

    async def pause(self) -> None:
        """``task.pause``: freeze the container."""
        await self.call(shimapi.TASK_PAUSE)

    async def resume(self) -> None:
        """``task.resume``: thaw the container."""
        await self.call(shimapi.TASK_RESUME)

    async def update(self, params: UpdateParams) -> None:
        """``task.update``: new limits, now (``runc update``)."""
        await self.call(shimapi.TASK_UPDATE, shimapi.params(params))

    async def reopen_log(self) -> None:
        """``task.reopen_log``: the shim opens its log file again at its path (a new file, once
        whoever rotates it renamed the old one); no record is lost or split between them."""
        await self.call(shimapi.TASK_REOPEN_LOG)

    async def top(self) -> dict[str, Any]:
        """``task.top``: ``{titles, processes}`` as ``ps -ef`` shows them."""
        return _dict(await self.call(shimapi.TASK_TOP))

    async def stats(self) -> dict[str, Any]:
        """``task.stats``: one sample of the cgroup's figures."""
        return _dict(await self.call(shimapi.TASK_STATS))

    async def metrics(self, *, timeout: float | None = None) -> str:
        """``task.metrics``: the container's figures in the Prometheus text format."""
        text = _dict(await self.call(shimapi.TASK_METRICS, timeout=timeout)).get("text")
        return text if isinstance(text, str) else ""

    @contextlib.asynccontextmanager
    async def attach(self) -> AsyncIterator[RawChannel]:
        """``task.attach``: a raw stream whose stdin and control frames are PID 1's input."""
        async with jsonrpc.open_raw(self.socket, shimapi.TASK_ATTACH, {}) as channel:
            yield channel

    async def input(self, kind: int, data: bytes) -> None:
        """One frame of input for PID 1 (stdin, an empty one closing it; a control resize) on a
        ``task.attach`` of its own, under the deadline; raises the error if it was dropped."""
        try:
            with anyio.fail_after(self.timeout):
                async with self.attach() as channel:
                    await channel.send(kind, data)
                    await channel.stream.send_eof()
                    await jsonrpc.end_of(channel)
        except TimeoutError:
            raise errors.Unavailable(f"the shim at {self.dir} did not take the input in time") from None

    @contextlib.asynccontextmanager
    async def logs(self, params: LogsParams) -> AsyncIterator[LogStream]:
        """``task.logs``: the log as the shim streams it."""
        async with (
            jsonrpc.connect(self.socket) as client,
            client.stream(shimapi.TASK_LOGS, shimapi.params(params)) as stream,
        ):
            yield LogStream(stream)

    @contextlib.asynccontextmanager
    async def logs_raw(self, params: LogsParams) -> AsyncIterator[RawChannel]:
        """``task.logs`` as a raw stream: stdout and stderr frames, then the ``end`` frame."""
        async with jsonrpc.open_raw(self.socket, shimapi.TASK_LOGS, shimapi.params(params)) as channel:
            yield channel

    @contextlib.asynccontextmanager
    async def exec(self, params: ExecParams) -> AsyncIterator[ExecSession]:
        """``task.exec``: a process run in the container, its output and input as frames."""
        async with jsonrpc.open_raw(self.socket, shimapi.TASK_EXEC, shimapi.params(params)) as channel:
            yield ExecSession(channel, params.exec_id or "")

    def read_exit(self) -> ExitRecord | None:
        """The exit record the shim left in its directory, if any."""
        return ExitRecord.read(self.dir)

    def alive(self) -> bool:
        """Whether the shim whose pid its directory records still runs (not a zombie, and a shim:
        its command line says so, also for one forked from the template)."""
        try:
            with open(shimapi.path(self.dir, shimapi.PID_FILE)) as f:
                pid = int(f.read().strip())
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return False
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                return b"shim" in f.read()
        except (OSError, ValueError, IndexError):
            return False

    async def release(self, cid: str, runtime: str, runtime_root: str) -> bool:
        """Delete the task (the shim runs ``runc delete`` and exits), or clean up after a shim
        that does not answer; then remove its state dir. False, leaving the dir for the next
        start of tugd to retry, if the cleanup failed too."""
        if not os.path.isdir(self.dir):
            return True
        try:
            await self.delete(force=True)
        except errors.TugError as exc:
            log.info("shim of %s did not delete (%s): cleaning up after it", cid[:12], exc)
            try:
                await self.delete_dead(cid, runtime, runtime_root)
            except Exception as cleanup_exc:
                log.warning("cleanup after the shim of %s failed: %s", cid[:12], cleanup_exc)
                return False
        # In a worker thread: a handful of unlinks, each of which waits for the disk's journal
        # on a busy host (cProfile of 100 `run --rm`: 9.6 ms per container on the event loop).
        # Every caller holds the container's lock, so no start of it can meet a half-removed dir.
        await anyio.to_thread.run_sync(fsutil.remove_tree, self.dir)
        return True

    async def delete_dead(
        self, cid: str, runtime: str, runtime_root: str, *, timeout: float = 60.0
    ) -> ExitRecord | None:
        """``tug-shim delete``: clean up after a shim that is gone; its exit record, if any."""
        return await delete_dead(self.dir, cid, runtime, runtime_root, timeout=timeout)


async def delete_dead(
    directory: str, cid: str, runtime: str, runtime_root: str, *, timeout: float = 60.0
) -> ExitRecord | None:
    """``tug-shim delete``: clean up after a shim that is gone; returns its exit record, if any."""
    with anyio.fail_after(timeout):
        result = await anyio.run_process(
            [
                *shim_command(),
                "delete",
                "--dir",
                directory,
                "--id",
                cid,
                "--runtime",
                runtime,
                "--runtime-root",
                runtime_root,
            ],
            check=False,
        )
    if result.returncode != 0:
        raise errors.Internal(f"tug-shim delete failed: {result.stderr.decode(errors='replace')[-500:]}")
    try:
        reply = json.loads(result.stdout)
    except ValueError:
        return None
    return ExitRecord.optional(reply.get("exit")) if isinstance(reply, dict) else None
