"""The container's init process as the shim sees it: started through runc, supervised (its
output drained to the log, its exit reaped and recorded in ``exit.json``), signalled, deleted."""

from __future__ import annotations

import os
import signal
from typing import Any

import anyio
import anyio.abc

from tugwire import crilog, fsutil, shimapi
from tugwire.errors import FailedPrecondition, TugError
from tugwire.shimapi import EXIT_FILE, INIT_PID_FILE, RUNC_LOG, ShimConfig
from tugwire.timefmt import rfc3339

from . import console, stats
from . import io as shimio
from .process import ExitRecord, State, check, oom_kills, signal_name
from .reaper import Reaper, exit_code
from .runc import Runc, classify

DRAIN_GRACE = 10.0  # after PID 1 exits, how long the pipes may stay open (a leaked fd elsewhere)


class Task:
    """The container's init process as the shim sees it."""

    def __init__(self, cfg: ShimConfig, reaper: Reaper) -> None:
        self.cfg = cfg
        self.reaper = reaper
        self.runc = Runc(reaper, cfg.runtime, cfg.runtime_root, cfg.path(RUNC_LOG), cfg.runtime_timeout)
        self.state = State.CREATING
        self.pid = 0
        self.reaped = False
        self.exit: ExitRecord | None = None
        self.exited = anyio.Event()
        self.runtime_deleted = anyio.Event()
        self.delete_error: TugError | None = None
        self.sink: shimio.LogSink | None = None
        self.input = console.TaskInput(cfg.dir, tty=cfg.tty, stdin=cfg.stdin)
        self._labels = ""  # of the metrics, made when first asked for

    def __repr__(self) -> str:
        return f"<Task {self.cfg.id[:12]} {self.state.value} pid={self.pid}>"

    async def start(self, tg: anyio.abc.TaskGroup) -> None:
        """Create and start the container; its supervision then runs in ``tg``."""
        pipes = shimio.StdioPipes()
        writer = crilog.LogWriter(self.cfg.log_path, self.cfg.log_max_size, self.cfg.log_max_files)
        pid_file = self.cfg.path(INIT_PID_FILE)

        async def run(stdin: int, console_socket: str | None) -> None:
            await self.runc.run_detached(
                self.cfg.id,
                self.cfg.bundle,
                pid_file,
                stdin=stdin,
                stdout=pipes.stdout_w,
                stderr=pipes.stderr_w,
                console_socket=console_socket,
            )

        try:
            await self.input.start(run, pipes.stdin)
            pipes.close_child_ends()
            with open(pid_file) as f:
                self.pid = int(f.read().strip())
        except BaseException:
            pipes.close()
            self.input.close()
            writer.close()
            raise
        self.sink = shimio.LogSink(writer)
        self.state = State.RUNNING
        tg.start_soon(self._supervise, pipes)

    async def _supervise(self, pipes: shimio.StdioPipes) -> None:
        await self._wait_exit(pipes)
        # The runtime's state is of no use once PID 1 is gone: delete it now, so that tugd's
        # task.delete finds it done (it overlaps with tugd recording the exit).
        await self._delete_runtime()

    async def _delete_runtime(self) -> None:
        try:
            await self.runc.delete(self.cfg.id, force=True)
        except TugError as exc:
            err = classify(exc)
            if err.kind != "not_found":
                self.delete_error = err
        finally:
            self.runtime_deleted.set()

    async def _wait_exit(self, pipes: shimio.StdioPipes) -> None:
        assert self.sink is not None
        sink = self.sink
        try:
            async with anyio.create_task_group() as drains:
                drains.start_soon(shimio.drain, pipes.stdout_r, b"stdout", sink)
                drains.start_soon(shimio.drain, pipes.stderr_r, b"stderr", sink)
                if self.input.master >= 0:
                    drains.start_soon(console.copy_to_log, self.input.master, sink)
                status = await self.reaper.wait(self.pid)
                self.reaped = True  # from here on the pid may be reused: never signal it again
                exited_at = rfc3339()
                oom = oom_kills(self.cfg.cgroup_path) > 0  # before runc delete removes the cgroup
                # The exit is reported only after the pipes are drained to their end.
                drains.cancel_scope.deadline = anyio.current_time() + DRAIN_GRACE
        finally:
            pipes.close()
            self.input.close()
        # No fsync of the log: the bytes are in the page cache, which outlives every process
        # (shim, tugd); only a power loss could take them, and it takes the container too.
        sink.close()
        code, sig = exit_code(status)
        record = ExitRecord(self.pid, code, signal_name(sig), exited_at, oom, sink.writer.dropped_bytes)
        # Atomic (temp file + rename), not fsynced: the state dir is a tmpfs by design, and the
        # record must survive crashes of processes, not of the host.
        fsutil.write_atomic(self.cfg.path(EXIT_FILE), record.encode(), durable=False)
        self.exit = record
        self.state = State.STOPPED
        self.exited.set()

    async def signal(self, sig: int) -> None:
        """Signal PID 1. A paused container queues the signal; SIGKILL also thaws it, so that it
        dies (with the cgroup v1 freezer a frozen task only acts on a signal once thawed)."""
        paused = self.state is State.PAUSED
        self.kill(sig)
        if paused and sig == signal.SIGKILL:
            await self.thaw()

    async def thaw(self) -> None:
        """``runc resume``; a task whose PID 1 went meanwhile has nothing left to thaw."""
        try:
            await self.runc.resume(self.cfg.id)
        except TugError as exc:
            err = classify(exc)
            if not self.reaped:
                raise err from exc
        if self.state is State.PAUSED:
            self.state = State.RUNNING

    def kill(self, sig: int) -> None:
        """Signal PID 1 now (FailedPrecondition once it has exited)."""
        check(self.state, "kill")
        if self.reaped or self.reaper.exited(self.pid):
            raise FailedPrecondition("cannot kill: task is stopped", state="stopped")
        # The pid is our own child and not reaped yet, so it cannot have been reused.
        os.kill(self.pid, sig)

    async def delete(self, *, force: bool) -> ExitRecord | None:
        if self.state in (State.RUNNING, State.PAUSED) and not self.exited.is_set():
            if not force:
                raise FailedPrecondition(f"cannot delete: task is {self.state.value}", state=self.state.value)
            await self.signal(signal.SIGKILL)  # thaws a paused task, so that it dies
            await self.exited.wait()
        await self.runtime_deleted.wait()
        if self.delete_error is not None:
            raise self.delete_error
        self.state = State.DELETED
        return self.exit

    def reopen_log(self) -> None:
        """Open the log file again at its path; only while the container's output can come."""
        sink = self.sink
        if sink is None or sink.closed:
            raise FailedPrecondition(
                "cannot reopen the log: the container is not running", state=self.state.value
            )
        try:
            sink.writer.reopen()
        except OSError as exc:
            raise FailedPrecondition(f"cannot reopen the log {sink.writer.path}: {exc.strerror}") from None
        sink.wake()

    def describe(self) -> dict[str, Any]:
        sink = self.sink
        return shimapi.TaskState(
            id=self.cfg.id,
            pid=self.pid,
            status=self.state.value,
            shim_pid=os.getpid(),
            exit=self.exit,
            log_bytes={k.decode(): v for k, v in sink.writer.bytes.items()} if sink else {},
            log_dropped_bytes=sink.writer.dropped_bytes if sink else 0,
        ).to_json()

    def metrics(self) -> str:
        """The container's figures in the Prometheus text format (see :mod:`shimd.stats`). The
        cgroup and the network namespace are read only while PID 1 is ours and not reaped: after
        that the cgroup is going and the pid may be anybody's."""
        live = self.state in (State.RUNNING, State.PAUSED) and not self.reaped and self.pid > 0
        cgroup = stats.read_cgroup(self.cfg.cgroup_path) if live and self.cfg.cgroup_path else None
        net = stats.read_net(self.pid) if live else []
        sink = self.sink
        log_bytes = {k.decode(): v for k, v in sink.writer.bytes.items()} if sink else {}
        dropped = sink.writer.dropped_bytes if sink else None
        if not self._labels:
            cfg = self.cfg
            self._labels = stats.labels(id=cfg.id, name=cfg.name or cfg.id[:12], image=cfg.image)
        return stats.render(self._labels, cgroup, log_bytes, dropped, net)
