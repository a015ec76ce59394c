"""A container's states and its in-memory companion (:class:`Live`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import anyio

from ..store import ContainerRecord

CREATED, RUNNING, PAUSED, EXITED, UNKNOWN = "created", "running", "paused", "exited", "unknown"
ACTIVE = (RUNNING, PAUSED)


@dataclass
class Live:
    """A container's in-memory companion (rebuilt on every tugd start)."""

    lock: anyio.Lock = field(default_factory=anyio.Lock)
    release_lock: anyio.Lock = field(default_factory=anyio.Lock)
    holds: int = 0
    exits: int = 0  # exits seen by this tugd, for wait(condition=next-exit)
    last_result: dict[str, Any] = field(default_factory=dict)
    restart: anyio.CancelScope | None = None  # a pending restart of the restart policy
    restart_delay: float = 0.0  # the last backoff delay of the restart policy
    _changed: anyio.Event = field(default_factory=anyio.Event)

    def cancel_restart(self) -> None:
        """Cancel a pending restart of the restart policy, if any."""
        if self.restart is not None:
            self.restart.cancel()
            self.restart = None

    def changed(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_changed(self) -> None:
        await self._changed.wait()


def wait_result(rec: ContainerRecord) -> dict[str, Any]:
    """What ``container.wait`` answers for ``rec``."""
    return {
        "id": rec.id,
        "state": rec.state,
        "exit_code": rec.exit_code if rec.state == EXITED else None,
        "signal": rec.exit_signal if rec.state == EXITED else None,
        "oom_killed": rec.oom_killed,
    }
