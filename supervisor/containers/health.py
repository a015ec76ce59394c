"""Health checks: a command run in the container at an interval, as an exec of its shim
(``task.exec``, the one exec path), whose exit status makes the container ``starting``,
``healthy`` or ``unhealthy``.

A check passes when its command exits 0. ``retries`` failures in a row make the container
``unhealthy``; failures during ``start_period`` do not count (but a pass ends the start period,
as docker does). A check that runs longer than ``timeout`` fails and is killed. Each change of
status is published as a ``health_status`` event (attribute ``status``). The status is kept in
memory: a tugd that restarts starts again from ``starting`` for each running container.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
import anyio.abc

from tugwire import frames
from tugwire.errors import InvalidArgument, TugError
from tugwire.shimapi import ExecParams

from ..shims import ShimClient, started_pid
from ..store import ContainerRecord
from .state import ACTIVE, PAUSED

STARTING, HEALTHY, UNHEALTHY = "starting", "healthy", "unhealthy"
DEFAULT_INTERVAL = 30.0
DEFAULT_TIMEOUT = 30.0
DEFAULT_RETRIES = 3
OUTPUT_LIMIT = 4096  # bytes of a check's output kept in its log entry
LOG_ENTRIES = 5  # the last checks kept, as docker's inspect shows them


@dataclass(frozen=True)
class HealthRequest:
    """The ``health_*`` options of ``container.create`` (None: the image's, else the default)."""

    health_cmd: str | None = None
    health_interval: float | None = None
    health_timeout: float | None = None
    health_start_period: float | None = None
    health_retries: int | None = None


def parse(req: HealthRequest, image_config: dict[str, Any]) -> dict[str, Any] | None:
    """The health check of a container from ``health_cmd`` and the ``health_*`` options, else
    the image's ``Healthcheck`` (``Test``: ``["CMD-SHELL", cmd]`` or ``["CMD", args...]``;
    durations in nanoseconds). None when there is none (or ``health_cmd`` is ``none``)."""
    image = image_config.get("Healthcheck") or {}
    test = image.get("Test") if isinstance(image, dict) else None
    cmd = req.health_cmd
    args: list[str] | None = None
    if cmd is not None:
        if cmd == "none" or cmd == "":
            return None
        args = ["/bin/sh", "-c", cmd]
    elif isinstance(test, list) and test and test[0] == "CMD-SHELL" and len(test) == 2:
        args = ["/bin/sh", "-c", str(test[1])]
    elif isinstance(test, list) and len(test) > 1 and test[0] == "CMD":
        args = [str(a) for a in test[1:]]
    if args is None:
        return None

    def seconds(name: str, given: float | None, key: str, default: float) -> float:
        value = given
        if value is None:
            ns = image.get(key) if isinstance(image, dict) else None
            value = ns / 1e9 if isinstance(ns, int) and ns > 0 else default
        if value < 0 or (name != "health_start_period" and value < 0.01):
            raise InvalidArgument(f"{name} must be positive", field=name)
        return float(value)

    retries = req.health_retries
    if retries is None:
        retries = int(image.get("Retries") or DEFAULT_RETRIES) if isinstance(image, dict) else DEFAULT_RETRIES
    if retries < 1:
        raise InvalidArgument("health_retries must be at least 1", field="health_retries")
    return {
        "args": args,
        "interval": seconds("health_interval", req.health_interval, "Interval", DEFAULT_INTERVAL),
        "timeout": seconds("health_timeout", req.health_timeout, "Timeout", DEFAULT_TIMEOUT),
        "retries": retries,
        "start_period": seconds("health_start_period", req.health_start_period, "StartPeriod", 0.0),
    }


class Host(Protocol):
    """What the monitor needs of the containers service (which owns it)."""

    def spawn(self, cid: str, fn: Callable[..., Awaitable[object]], *args: object) -> None: ...

    def find(self, cid: str) -> ContainerRecord | None: ...

    def shim(self, cid: str) -> ShimClient: ...

    def wake(self, cid: str) -> None: ...

    def publish(self, action: str, rec: ContainerRecord, **attributes: Any) -> None: ...


@dataclass
class Health:
    """One container's health, as ``inspect`` shows it."""

    status: str = STARTING
    failing_streak: int = 0
    log: list[dict[str, Any]] = field(default_factory=list)
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "failing_streak": self.failing_streak, "log": list(self.log)}


class Monitor:
    """Runs the checks of every running container that has one, each in a task of tugd's group."""

    def __init__(self, containers: Host) -> None:
        self.c = containers
        self._health: dict[str, Health] = {}

    def __repr__(self) -> str:
        return f"<health.Monitor watching={len(self._health)}>"

    def status(self, cid: str) -> str | None:
        h = self._health.get(cid)
        return h.status if h else None

    def describe(self, cid: str) -> dict[str, Any] | None:
        h = self._health.get(cid)
        return h.to_json() if h else None

    def watch(self, cid: str, config: dict[str, Any]) -> None:
        """Start checking a container that has just started (or was re-attached)."""
        self.forget(cid)
        h = self._health[cid] = Health()
        self.c.spawn(cid, self._run, cid, config, h)

    def forget(self, cid: str) -> None:
        """Stop checking (the container exited or was removed)."""
        h = self._health.pop(cid, None)
        if h is not None:
            h.scope.cancel()

    def _set(self, cid: str, h: Health, status: str) -> None:
        if h.status == status:
            return
        h.status = status
        rec = self.c.find(cid)
        if rec is None:
            return
        self.c.wake(cid)
        self.c.publish("health_status", rec, status=status)

    async def _run(self, cid: str, cfg: dict[str, Any], h: Health) -> None:
        with h.scope:
            rec = self.c.find(cid)
            if rec is not None:
                self.c.publish("health_status", rec, status=STARTING)
            started = anyio.current_time()
            in_start_period = float(cfg["start_period"]) > 0
            while True:
                await anyio.sleep(float(cfg["interval"]))
                rec = self.c.find(cid)
                if rec is None or rec.run.state not in ACTIVE:
                    break
                if rec.run.state == PAUSED:
                    continue
                ok, entry = await self._probe(cid, cfg)
                h.log = [*h.log, entry][-LOG_ENTRIES:]
                if in_start_period and anyio.current_time() - started >= float(cfg["start_period"]):
                    in_start_period = False
                if ok:
                    in_start_period = False
                    h.failing_streak = 0
                    self._set(cid, h, HEALTHY)
                elif not in_start_period:
                    h.failing_streak += 1
                    if h.failing_streak >= int(cfg["retries"]):
                        self._set(cid, h, UNHEALTHY)
        if self._health.get(cid) is h:
            del self._health[cid]

    async def _probe(self, cid: str, cfg: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        """Run the check once as an exec of the container's shim."""
        shim = self.c.shim(cid)
        start = time.time()
        output = bytearray()
        pid = 0
        code: int | None = None
        note = ""
        with anyio.move_on_after(float(cfg["timeout"])) as deadline:
            try:
                async with shim.exec(ExecParams(args=list(cfg["args"]))) as session:
                    async for kind, data in session:
                        if kind == frames.CONTROL:
                            pid = started_pid(data) or pid
                        elif len(output) < OUTPUT_LIMIT:
                            output += data[: OUTPUT_LIMIT - len(output)]
                    result = session.result or {}
                code = int(result.get("exit_code", -1))
                if result.get("error"):
                    note = str(result["error"])
            except TugError as exc:
                note = f"the check could not run: {exc.message}"
        if deadline.cancelled_caught:
            note = f"health check exceeded timeout ({cfg['timeout']:g}s)"
            self._kill(cid, pid)
        entry = {
            "start": start,
            "end": time.time(),
            "exit_code": code,
            "output": (bytes(output).decode(errors="replace") + (f"\n{note}" if note else "")).strip(),
        }
        return code == 0, entry

    def _kill(self, cid: str, pid: int) -> None:
        """Kill a check that ran out of time."""
        kill_exec(cid, pid)


def kill_exec(cid: str, pid: int) -> None:
    """Kill an exec process of container ``cid`` that ran out of time. Through a pidfd, and only
    if the process is still in the container's cgroup (``/tugboat/<id>`` or ``<parent>/<id>``):
    the shim reaps it, so tugd must not signal a pid it cannot pin."""
    if pid <= 0:
        return
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return  # already gone
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            if f"/{cid}" not in f.read():
                return
        signal.pidfd_send_signal(fd, signal.SIGKILL)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
