"""The event bus: lifecycle events fanned out to subscribers, each with a bounded queue.

A subscriber that falls more than ``QUEUE`` events behind is dropped (its stream ends with an
``unavailable`` error), so a slow client never holds tugd or other subscribers back.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

QUEUE = 4096


@dataclass(frozen=True)
class Event:
    type: str
    action: str
    id: str
    name: str = ""
    image: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)
    time_ns: int = field(default_factory=time.time_ns)

    def to_json(self) -> dict[str, Any]:
        sec, frac = divmod(self.time_ns, 1_000_000_000)
        return {
            "type": self.type,
            "action": self.action,
            "id": self.id,
            "name": self.name,
            "image": self.image,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{frac:09d}Z",
            "time_nano": self.time_ns,
            "attributes": self.attributes,
        }


class Subscription:
    def __init__(self, bus: EventBus, predicate: Callable[[Event], bool]) -> None:
        self.bus = bus
        self.predicate = predicate
        self.send: MemoryObjectSendStream[Event]
        self.receive: MemoryObjectReceiveStream[Event]
        self.send, self.receive = anyio.create_memory_object_stream[Event](QUEUE)
        self.overflowed = False

    def close(self) -> None:
        self.bus._subs.discard(self)
        self.send.close()
        self.receive.close()


class EventBus:
    def __init__(self) -> None:
        self._subs: set[Subscription] = set()

    def subscribe(self, predicate: Callable[[Event], bool] = lambda e: True) -> Subscription:
        sub = Subscription(self, predicate)
        self._subs.add(sub)
        return sub

    def publish(self, event: Event) -> None:
        for sub in list(self._subs):
            if not sub.predicate(event):
                continue
            try:
                sub.send.send_nowait(event)
            except anyio.WouldBlock:
                sub.overflowed = True
                sub.send.close()
                self._subs.discard(sub)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._subs.discard(sub)
