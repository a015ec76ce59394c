"""The containers service (see :mod:`.service`), by concern:

- :mod:`.state`: the states and a container's in-memory companion;
- :mod:`.options`: the user's settings of ``container.create``, checked;
- :mod:`.base`: what the parts share (store, bus, shims, helpers);
- :mod:`.exits`: exits, the release of a task, the restart policy's scheduling;
- :mod:`.logs`: ``wait`` and ``logs``;
- :mod:`.inspect`: records for clients;
- :mod:`.recovery`: after a restart of tugd;
- :mod:`.service`: the lifecycle verbs, and :class:`Containers` made of the parts.
"""

from __future__ import annotations

from .options import parse_signal
from .service import Containers
from .state import ACTIVE, CREATED, EXITED, PAUSED, RUNNING, UNKNOWN, Live, Move, State, wait_result

__all__ = [
    "ACTIVE",
    "CREATED",
    "EXITED",
    "PAUSED",
    "RUNNING",
    "UNKNOWN",
    "Containers",
    "Live",
    "Move",
    "State",
    "parse_signal",
    "wait_result",
]
