"""Starting shims, talking to them, and cleaning up after dead ones. Every call has a deadline.

How a shim is born is decided here and only here (:class:`ShimLauncher`): by the pre-imported
template (default), or by a cold ``tug-shim start`` per container.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any, Protocol

import anyio
import anyio.abc

from tugwire import errors, jsonrpc

log = logging.getLogger("tugboat.shims")


def shim_command() -> list[str]:
    """``tug-shim`` next to our interpreter (so ps shows it by name), else ``python -m shimd``."""
    script = os.path.join(os.path.dirname(sys.executable), "tug-shim")
    if os.access(script, os.X_OK):
        return [script]
    return [sys.executable, "-m", "shimd"]


def _parse_reply(raw: bytes, what: str) -> dict[str, Any]:
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
    return reply


class ShimLauncher(Protocol):
    async def launch(self, config: dict[str, Any]) -> dict[str, Any]:
        """Start a shim for ``config``; return ``{pid, shim_pid, socket}`` once the container runs,
        or raise the runtime's error."""
        ...

    async def aclose(self) -> None: ...


class ExecLauncher:
    """A cold interpreter per shim: ``tug-shim start`` (simple, ~20 MB per shim)."""

    name = "exec"

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout

    async def launch(self, config: dict[str, Any]) -> dict[str, Any]:
        with anyio.fail_after(self.timeout):
            result = await anyio.run_process(
                [*shim_command(), "start"], input=json.dumps(config).encode(), check=False
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

    async def launch(self, config: dict[str, Any]) -> dict[str, Any]:
        await self._ensure()
        try:
            return await self._ask(config)
        except OSError:
            # The template died since: start a new one and try once more.
            if self._proc is not None:
                self._proc.kill()
            await self._ensure()
            return await self._ask(config)

    async def _ask(self, config: dict[str, Any]) -> dict[str, Any]:
        stream = await anyio.connect_unix(self.socket_path)
        async with stream:
            await stream.send(json.dumps(config).encode() + b"\n")
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


async def call(
    socket_path: str, method: str, params: dict[str, Any] | None = None, *, timeout: float = 10.0
) -> Any:
    """One call to a shim on a connection of its own, under a deadline."""
    try:
        with anyio.fail_after(timeout):
            async with jsonrpc.connect(socket_path, timeout=timeout) as client:
                return await client.call(method, params)
    except TimeoutError as exc:
        raise errors.Unavailable(f"shim at {socket_path} did not answer {method} in {timeout:g}s") from exc


async def delete_dead(
    directory: str, cid: str, runtime: str, runtime_root: str, *, timeout: float = 60.0
) -> dict[str, Any]:
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
    reply = json.loads(result.stdout)
    return reply if isinstance(reply, dict) else {}
