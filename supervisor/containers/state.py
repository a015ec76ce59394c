"""A container's states (the :class:`State` enum lives in :mod:`supervisor.records`, below the
store, and is re-exported here), the one table of the transitions between them, and its
in-memory companion (:class:`Live`)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import anyio

from tugwire.errors import FailedPrecondition

from ..records import State
from ..store import ContainerRecord

__all__ = ["State"]

CREATED, RUNNING, PAUSED, EXITED, UNKNOWN = (
    State.CREATED,
    State.RUNNING,
    State.PAUSED,
    State.EXITED,
    State.UNKNOWN,
)
ACTIVE = (RUNNING, PAUSED)  # a shim runs the container
REMOVED = "removed"  # not a state: what ``container.wait`` reports of a container that is gone


class Move(enum.StrEnum):
    """What changes a container's state."""

    START = "start"  # the shim runs it (an unknown one only by its restart policy)
    PAUSE = "pause"
    UNPAUSE = "unpause"
    EXIT = "exit"  # the shim recorded PID 1's exit
    LOSE = "lose"  # the shim, or the whole state dir, went away without an exit record
    ADOPT_RUNNING = "adopt_running"  # recovery: the shim says it runs (tugd died before recording)
    ADOPT_PAUSED = "adopt_paused"  # recovery: the shim says it is paused


# The one table of transitions: a move, the states it may start from, and where it leads.
TRANSITIONS: dict[Move, tuple[frozenset[State], State]] = {
    Move.START: (frozenset({CREATED, EXITED, UNKNOWN}), RUNNING),
    Move.PAUSE: (frozenset({RUNNING}), PAUSED),
    Move.UNPAUSE: (frozenset({PAUSED}), RUNNING),
    Move.EXIT: (frozenset({CREATED, RUNNING, PAUSED, UNKNOWN}), EXITED),
    Move.LOSE: (frozenset({RUNNING, PAUSED}), UNKNOWN),
    Move.ADOPT_RUNNING: (frozenset({CREATED, PAUSED, EXITED, UNKNOWN}), RUNNING),
    Move.ADOPT_PAUSED: (frozenset({CREATED, RUNNING, EXITED, UNKNOWN}), PAUSED),
}


def allowed(state: str, move: Move) -> bool:
    """Whether ``move`` may happen to a container in ``state``."""
    return state in TRANSITIONS[move][0]


def transition(rec: ContainerRecord, move: Move) -> None:
    """Apply ``move`` to ``rec.state`` (not stored yet); FailedPrecondition, changing nothing, if
    the table forbids it."""
    sources, target = TRANSITIONS[move]
    if rec.run.state not in sources:
        raise FailedPrecondition(
            f"cannot {move.value} container {rec.name}: it is {rec.run.state}", state=rec.run.state
        )
    rec.run.state = target


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
    # The container's task group: its exit watcher, restart timer and health checks, each in a
    # scope of its own here, cancelled as a unit when the container is removed.
    tasks: set[anyio.CancelScope] = field(default_factory=set)
    _changed: anyio.Event = field(default_factory=anyio.Event)

    def cancel_tasks(self) -> None:
        """Cancel every task of the container (its watcher, restart timer, health checks)."""
        for scope in list(self.tasks):
            scope.cancel()

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
        "state": rec.run.state,
        "exit_code": rec.run.exit_code if rec.run.state == EXITED else None,
        "signal": rec.run.exit_signal if rec.run.state == EXITED else None,
        "oom_killed": rec.run.oom_killed,
    }
