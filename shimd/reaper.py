"""The one owner of ``waitpid`` in a shim.

The shim is the child subreaper of its container: ``runc`` exits after ``create``/``run -d`` and the
container's PID 1 is re-parented to us. Every child (runc invocations, PID 1, exec processes) is
reaped here and nowhere else; code that wants an exit status asks the reaper.

An exit can arrive before whoever started the process has registered interest in it (PID 1 of
``true`` may be gone before ``runc run -d`` returns and its pid file is read): such exits are held
and handed over on ``wait`` (containerd's ``preStart`` does the same).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence

import anyio
import anyio.abc

# Python ignores these; an exec'd program must start with the default disposition (else a
# container's `yes | head` never sees SIGPIPE).
_RESET_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)


_ENVIRON: list[dict[str, str]] = []


def environ() -> dict[str, str]:
    """Our environment as a plain dict, copied once (in the template, by ``warm_up``):
    ``posix_spawn`` would otherwise walk ``os.environ`` through a dozen Python functions of
    ``os`` and ``collections.abc`` in every shim. Nothing in a shim changes its environment."""
    if not _ENVIRON:
        _ENVIRON.append(dict(os.environ))
    return _ENVIRON[0]


def exit_code(status: int) -> tuple[int, int | None]:
    """(docker-style exit code, signal number or None) from a raw wait status."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return 128 + sig, sig
    return os.WEXITSTATUS(status), None


class Reaper:
    def __init__(self) -> None:
        self._waiting: dict[int, anyio.Event] = {}
        self._exited: dict[int, int] = {}  # pid -> raw status, held until claimed
        self._started = False
        self._discarded: set[int] = set()  # pids nobody will wait for (detached execs)

    def __repr__(self) -> str:
        return f"<Reaper waiting={sorted(self._waiting)} held={sorted(self._exited)}>"

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Reap on every SIGCHLD until cancelled. Start it before spawning anything."""
        with anyio.open_signal_receiver(signal.SIGCHLD) as signals:
            self._started = True
            self.reap()  # whatever exited before the handler was installed
            task_status.started()
            async for _ in signals:
                self.reap()

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid in self._discarded:
                self._discarded.discard(pid)
                continue
            self._exited[pid] = status
            event = self._waiting.get(pid)
            if event is not None:
                event.set()

    def spawn(
        self,
        argv: Sequence[str],
        *,
        stdin: int,
        stdout: int,
        stderr: int,
        env: dict[str, str] | None = None,
    ) -> int:
        """Start a program (posix_spawn: no Python runs in the child) and return its pid."""
        assert self._started, "start the reaper before spawning"
        actions = [
            (os.POSIX_SPAWN_DUP2, stdin, 0),
            (os.POSIX_SPAWN_DUP2, stdout, 1),
            (os.POSIX_SPAWN_DUP2, stderr, 2),
        ]
        pid = os.posix_spawn(
            argv[0],
            list(argv),
            environ() if env is None else env,
            file_actions=actions,
            setsigdef=_RESET_SIGNALS,
        )
        self._waiting.setdefault(pid, anyio.Event())
        if pid in self._exited:
            self._waiting[pid].set()
        return pid

    async def wait(self, pid: int) -> int:
        """The raw wait status of ``pid`` (a child of ours), once it has exited."""
        if pid not in self._exited:
            event = self._waiting.setdefault(pid, anyio.Event())
            await event.wait()
        self._waiting.pop(pid, None)
        return self._exited.pop(pid)

    def exited(self, pid: int) -> bool:
        return pid in self._exited

    def watch(self, pid: int) -> anyio.Event:
        """An event set when ``pid`` exits (its status stays held for ``wait``)."""
        event = self._waiting.setdefault(pid, anyio.Event())
        if pid in self._exited:
            event.set()
        return event

    def discard(self, pid: int) -> None:
        """Nobody will wait for ``pid`` (a detached exec): reap it, and drop its status."""
        if self._exited.pop(pid, None) is None:
            self._discarded.add(pid)
