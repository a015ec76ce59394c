"""One async function per runc verb, with typed options, as go-runc does.

runc is started through the shim's reaper (posix_spawn; the reaper alone calls waitpid). runc
writes its own log as JSON (``--log FILE --log-format json``); on failure the last error line of
this call is read back and carried in :class:`RuncError`, so that the user sees runc's own words.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import anyio

from tugwire import shimapi
from tugwire.errors import FailedPrecondition, NotFound, RuntimeFailed, TugError

from .reaper import Reaper, exit_code

DEFAULT_TIMEOUT = shimapi.DEFAULT_RUNTIME_TIMEOUT  # no runc call may hang the shim for ever


class RuncError(RuntimeFailed):
    def __init__(self, verb: str, status: int, message: str, runtime: str = "runc") -> None:
        super().__init__(
            f"{runtime} {verb} failed (exit status {status}): {message}", verb=verb, status=status
        )
        self.verb = verb
        self.status = status
        self.runc_message = message


def classify(err: TugError) -> TugError:
    """The one place that matches runc's error text (tested against real runc output)."""
    if not isinstance(err, RuncError):
        return err
    text = err.runc_message.lower()
    if "does not exist" in text or "not exist" in text:
        return NotFound(err.message, verb=err.verb)
    if "not running" in text or "is stopped" in text or "container not running" in text:
        return FailedPrecondition(err.message, verb=err.verb)
    return err


@dataclass
class Runc:
    reaper: Reaper
    binary: str
    root: str  # runc --root: per tugd instance, so that instances never see each other's state
    log_path: str
    timeout: float = DEFAULT_TIMEOUT

    @property
    def name(self) -> str:
        return os.path.basename(self.binary)

    def _base(self) -> list[str]:
        return [self.binary, "--root", self.root, "--log", self.log_path, "--log-format", "json"]

    def _log_offset(self) -> int:
        try:
            return os.stat(self.log_path).st_size
        except FileNotFoundError:
            return 0

    def _last_error(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                lines = f.read().splitlines()
        except FileNotFoundError:
            return "no error message from the runtime"
        message = ""
        for raw in lines:
            try:
                entry = json.loads(raw)
            except ValueError:
                message = raw.decode(errors="replace")
                continue
            if isinstance(entry, dict) and entry.get("level") in ("error", "fatal"):
                message = str(entry.get("msg", ""))
        return message or "no error message from the runtime"

    async def _run(
        self,
        verb: str,
        args: list[str],
        *,
        stdin: int | None = None,
        stdout: int | None = None,
        stderr: int | None = None,
        capture: bool = False,
    ) -> bytes:
        """Run ``runc VERB ARGS`` and wait for it; raise RuncError with runc's message on failure."""
        offset = self._log_offset()
        null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        out_r = out_w = -1
        try:
            if capture:
                out_r, out_w = os.pipe2(os.O_CLOEXEC)
            pid = self.reaper.spawn(
                [*self._base(), verb, *args],
                stdin=null if stdin is None else stdin,
                stdout=out_w if capture else (null if stdout is None else stdout),
                stderr=null if stderr is None else stderr,
            )
        finally:
            os.close(null)
            if out_w >= 0:
                os.close(out_w)
        output = b""
        try:
            with anyio.fail_after(self.timeout):
                if capture:
                    output = await _read_all(out_r)
                status = await self.reaper.wait(pid)
        except TimeoutError:
            # A hung runc: kill it (it is our child, not yet reaped, so the pid is still ours).
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
            with anyio.CancelScope(shield=True):
                await self.reaper.wait(pid)
            raise RuncError(verb, -1, f"timed out after {self.timeout:g}s", self.name) from None
        finally:
            if out_r >= 0:
                os.close(out_r)
        code, _ = exit_code(status)
        if code != 0:
            raise RuncError(verb, code, self._last_error(offset), self.name)
        return output

    async def run_detached(
        self,
        cid: str,
        bundle: str,
        pid_file: str,
        *,
        stdin: int,
        stdout: int,
        stderr: int,
        console_socket: str | None = None,
    ) -> None:
        """``runc run --detach``: create and start in one runc process (one fork and exec fewer
        than create + start). With a terminal runc sends its master to ``console_socket``."""
        console = ["--console-socket", console_socket] if console_socket else []
        await self._run(
            "run",
            ["--detach", *console, "--bundle", bundle, "--pid-file", pid_file, cid],
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
        )

    async def exec_detached(
        self,
        cid: str,
        process: str,
        pid_file: str,
        *,
        stdin: int,
        stdout: int,
        stderr: int,
        console_socket: str | None = None,
    ) -> None:
        """``runc exec --detach --process FILE``: runc exits once the process has started; the
        process is then re-parented to the shim (the subreaper), which reaps it. With a terminal
        runc sends the pty's master to ``console_socket``."""
        console = ["--console-socket", console_socket] if console_socket else []
        await self._run(
            "exec",
            ["--detach", *console, "--process", process, "--pid-file", pid_file, cid],
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
        )

    async def kill(self, cid: str, signal: int, *, all_processes: bool = False) -> None:
        await self._run("kill", [*(["--all"] if all_processes else []), cid, str(signal)])

    async def pause(self, cid: str) -> None:
        """``runc pause``: freeze every process of the container (the cgroup freezer)."""
        await self._run("pause", [cid])

    async def resume(self, cid: str) -> None:
        """``runc resume``: thaw a paused container."""
        await self._run("resume", [cid])

    async def update(
        self,
        cid: str,
        *,
        memory: int | None = None,
        cpu_quota: int | None = None,
        cpu_period: int | None = None,
        pids_limit: int | None = None,
        resources: dict[str, Any] | None = None,
    ) -> None:
        """``runc update``: change the resource limits of a running container; ``resources``
        (an OCI ``linux.resources`` object, given to ``runc update -r -`` on its stdin) replaces
        the single limits."""
        if resources is not None:
            data = json.dumps(resources).encode()
            r, w = os.pipe2(os.O_CLOEXEC)
            try:
                os.write(w, data)  # a few hundred bytes: within the pipe's buffer
                os.close(w)
                w = -1
                await self._run("update", ["-r", "-", cid], stdin=r)
            finally:
                os.close(r)
                if w >= 0:
                    os.close(w)
            return
        args: list[str] = []
        if memory is not None:
            # the swap limit follows memory (as docker does without --memory-swap): -1 is no limit
            args += ["--memory", str(memory), "--memory-swap", "-1"]
        if cpu_quota is not None:
            args += ["--cpu-quota", str(cpu_quota)]
        if cpu_period is not None:
            args += ["--cpu-period", str(cpu_period)]
        if pids_limit is not None:
            args += ["--pids-limit", str(pids_limit)]
        await self._run("update", [*args, cid])

    async def delete(self, cid: str, *, force: bool = False) -> None:
        await self._run("delete", [*(["--force"] if force else []), cid])

    async def state(self, cid: str) -> dict[str, object]:
        out = await self._run("state", [cid], capture=True)
        result = json.loads(out)
        if not isinstance(result, dict):
            raise RuncError("state", 0, "runc state printed no object")
        return result


async def _read_all(fd: int) -> bytes:
    os.set_blocking(fd, False)
    chunks: list[bytes] = []
    while True:
        await anyio.wait_readable(fd)
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            continue
        if not data:
            return b"".join(chunks)
        chunks.append(data)
