"""The event bus: lifecycle events, kept in the store and fanned out to subscribers.

Publishing is one INSERT into the store's ``events`` table (autocommit, WAL, no fsync), which
gives the event its sequence number, then a ``send_nowait`` to each subscriber's bounded queue.
Both happen between two awaits, so a subscriber that subscribes to the bus first and then reads
the store sees every event exactly once (see :func:`stream`). The table keeps the recent past
(every event of the last day, at least the last 10,000; see ``store.EVENTS_*``) so that
``since`` works across restarts of tugd.

A subscriber that falls more than ``QUEUE`` events behind is dropped (its stream ends with an
``unavailable`` error), so a slow client never holds tugd or other subscribers back.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from tugwire.errors import InvalidArgument, Unavailable
from tugwire.timefmt import parse_rfc3339, rfc3339

from .store import EventRow, Store

log = logging.getLogger("tugboat.events")

QUEUE = 4096
PRUNE_EVERY = 1000  # inserts between two prunes of the events table
REPLAY_PAGE = 500  # stored events read per query while replaying
TYPES = ("container", "image", "network", "daemon", "pod")
FILTER_KEYS = ("type", "container", "image", "event", "action", "network", "label")


@dataclass(frozen=True)
class Event:
    """One event. ``seq`` is its place in the store (0 until published, or if it could not be
    stored); events are ordered by it."""

    type: str
    action: str
    id: str
    name: str = ""
    image: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)
    time_ns: int = field(default_factory=time.time_ns)
    seq: int = 0

    def to_json(self) -> dict[str, Any]:
        """The event as ``event`` notifications carry it (see docs/api.md)."""
        return {
            "type": self.type,
            "action": self.action,
            "id": self.id,
            "name": self.name,
            "image": self.image,
            "time": rfc3339(self.time_ns),
            "time_nano": self.time_ns,
            "attributes": self.attributes,
        }

    @classmethod
    def from_row(cls, row: EventRow) -> Event:
        return cls(row.type, row.action, row.id, row.name, row.image, row.attributes, row.time_ns, row.seq)


def parse_time(value: Any, param: str) -> int:
    """A time given to the API: integer nanoseconds since the epoch, or an RFC 3339 string
    (``2026-01-02T03:04:05.123456789Z``, ``...+02:00``; without a zone it is UTC)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise InvalidArgument(f"{param} must not be negative", field=param)
        return value
    if isinstance(value, str):
        try:
            ns = parse_rfc3339(value)
        except ValueError:
            raise InvalidArgument(
                f"invalid {param} {value!r}: want nanoseconds since the epoch or an RFC 3339 time "
                "like 2026-01-02T03:04:05Z",
                field=param,
            ) from None
        return max(ns, 0)
    raise InvalidArgument(f"{param} must be an integer (ns) or an RFC 3339 string", field=param)


class Filters:
    """Which events a subscriber wants: values of one key are alternatives, keys must all match
    (as docker's ``--filter``). Keys: ``type``; ``container`` (a name, an id or an id prefix,
    matched against the event itself, so a removed container's history still matches);
    ``image`` (a reference, ``busybox`` meaning ``busybox:latest``, or an image id);
    ``event``/``action`` (the action); ``network`` (a network event's name or id prefix);
    ``label`` (``KEY`` or ``KEY=VALUE`` among the attributes: a container's labels; all must
    match, as docker's)."""

    def __init__(self, raw: Any, resolve_container: Callable[[str], str | None]) -> None:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise InvalidArgument("filters must be an object of key: value or key: [values]", field="filters")
        self.values: dict[str, set[str]] = {}
        for key, value in raw.items():
            if key not in FILTER_KEYS:
                raise InvalidArgument(
                    f"invalid filter {key!r}: want one of {', '.join(FILTER_KEYS)}", field="filters"
                )
            items = value if isinstance(value, list) else [value]
            if not items or not all(isinstance(v, str) and v for v in items):
                raise InvalidArgument(
                    f"filter {key!r} wants a non-empty string or list of them", field="filters"
                )
            key = "event" if key == "action" else key
            self.values.setdefault(key, set()).update(items)
        for t in self.values.get("type", ()):
            if t not in TYPES:
                raise InvalidArgument(
                    f"invalid type filter {t!r}: want one of {', '.join(TYPES)}", field="filters"
                )
        # A container named now is also known by its full id: events stored under that id match.
        self.container_ids = {
            cid for ref in self.values.get("container", ()) if (cid := resolve_container(ref)) is not None
        }
        self.images: set[str] = set()
        for ref in self.values.get("image", ()):
            self.images.add(ref)
            last = ref.rsplit("/", 1)[-1]
            if ":" not in last and not ref.startswith("sha256:"):
                self.images.add(ref + ":latest")

    def __repr__(self) -> str:
        return f"<Filters {self.values}>"

    def __call__(self, e: Event) -> bool:
        v = self.values
        if "type" in v and e.type not in v["type"]:
            return False
        if "event" in v and e.action not in v["event"] and e.action.partition(":")[0] not in v["event"]:
            return False  # docker's rule: `exec_create` matches `exec_create: CMD` too
        if "container" in v and not (e.type == "container" and self._container_matches(e)):
            return False
        if "network" in v and not (
            e.type == "network" and any(e.name == ref or e.id.startswith(ref) for ref in v["network"])
        ):
            return False
        if "label" in v and not self._labels_match(e):
            return False
        return not ("image" in v and not self._image_matches(e))

    def _labels_match(self, e: Event) -> bool:
        """Every ``KEY`` or ``KEY=VALUE`` is among the event's attributes (docker's rule)."""
        for item in self.values["label"]:
            key, sep, value = item.partition("=")
            if key not in e.attributes or (sep and str(e.attributes[key]) != value):
                return False
        return True

    def _container_matches(self, e: Event) -> bool:
        if e.id in self.container_ids:
            return True
        for ref in self.values["container"]:
            if e.name == ref or e.id == ref:
                return True
            if len(ref) >= 4 and e.id.startswith(ref) and all(c in "0123456789abcdef" for c in ref):
                return True
        return False

    def _image_matches(self, e: Event) -> bool:
        if e.image in self.images:
            return True
        if e.type != "image":
            return False
        if e.name in self.images:
            return True
        return any(e.id == ref or e.id == "sha256:" + ref or e.id.startswith(ref) for ref in self.images)


class Subscription:
    """A subscriber's bounded queue of live events."""

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
    """Stores each published event (when given a store) and hands it to every subscriber whose
    predicate accepts it."""

    def __init__(self, store: Store | None = None) -> None:
        self._subs: set[Subscription] = set()
        self.store = store
        self._inserts = 0
        self._changed: anyio.Event | None = None
        if store is not None:
            self._prune()

    def subscribe(self, predicate: Callable[[Event], bool] = lambda e: True) -> Subscription:
        """A queue of the live events that ``predicate`` accepts, from now on."""
        sub = Subscription(self, predicate)
        self._subs.add(sub)
        return sub

    def next_change(self) -> anyio.Event:
        """An event that is set when the next event is published."""
        if self._changed is None:
            self._changed = anyio.Event()
        return self._changed

    def publish(self, event: Event) -> Event:
        """Store the event, then fan it out; never blocks and never raises for a subscriber or
        the store. Returns the event with its sequence number."""
        if self.store is not None:
            try:
                seq = self.store.append_event(
                    event.time_ns,
                    event.type,
                    event.action,
                    event.id,
                    event.name,
                    event.image,
                    event.attributes,
                )
                event = dataclasses.replace(event, seq=seq)
                self._inserts += 1
                if self._inserts % PRUNE_EVERY == 0:
                    self._prune()
            except sqlite3.Error:
                # A full disk must not stop a container's lifecycle: live subscribers still get it.
                log.exception("could not store event %s %s %s", event.type, event.action, event.id[:12])
        if self._changed is not None:
            self._changed.set()
            self._changed = None
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
        return event

    def _prune(self) -> None:
        assert self.store is not None
        try:
            gone = self.store.prune_events(time.time_ns())
        except sqlite3.Error:
            log.exception("could not prune the events table")
            return
        if gone:
            log.debug("pruned %d old events", gone)

    def watch(
        self,
        predicate: Callable[[Event], bool],
        *,
        since_ns: int | None = None,
        until_ns: int | None = None,
    ) -> EventStream:
        """The events ``predicate`` accepts as an async iterator (use it as an async context
        manager, which unsubscribes on exit): the stored ones from ``since_ns`` (if given), then
        the live ones, each once and in order, until ``until_ns`` (if given; otherwise the
        iteration never ends by itself). Subscribed to live events from this call on."""
        return EventStream(self, predicate, since_ns=since_ns, until_ns=until_ns)

    async def stream(
        self,
        predicate: Callable[[Event], bool],
        send: Callable[[Event], Awaitable[None]],
        *,
        since_ns: int | None = None,
        until_ns: int | None = None,
        ready: Callable[[], None] = lambda: None,
    ) -> None:
        """:meth:`watch`, each event handed to ``send``; ``ready`` is called once subscribed."""
        async with self.watch(predicate, since_ns=since_ns, until_ns=until_ns) as events:
            ready()
            async for event in events:
                await send(event)


class EventStream:
    """One subscriber's events, as an async iterator (from :meth:`EventBus.watch`).

    No gap and no duplicate at the boundary between the past and the present: it subscribes to
    live events first, then replays the store, and drops the live events the replay already
    gave. Raises Unavailable if the subscriber fell too far behind (its queue overflowed)."""

    def __init__(
        self,
        bus: EventBus,
        predicate: Callable[[Event], bool],
        *,
        since_ns: int | None = None,
        until_ns: int | None = None,
    ) -> None:
        if until_ns is not None and since_ns is None:
            since_ns = 0  # as docker: --until alone shows the past up to that time
        self._store = bus.store
        self._predicate = predicate
        self._since_ns = since_ns
        self._until_ns = until_ns
        self._sub = bus.subscribe(predicate)
        # The highest sequence number the replay has read (matching or not): a live event at or
        # below it was in the store when the replay looked, so it was given already.
        self._replayed = 0
        self._replay: bool | None = None  # None: not started; True: pages left; False: done
        self._page: collections.deque[Event] = collections.deque()
        self._deadline: float | None = None  # monotonic; set when the live part starts
        self._draining = False
        self._done = False

    def __repr__(self) -> str:
        phase = "replay" if self._replay else "drain" if self._draining else "live"
        return f"<EventStream {phase} since={self._since_ns} until={self._until_ns} done={self._done}>"

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Unsubscribe (idempotent)."""
        self._sub.close()
        self._done = True

    def __aiter__(self) -> EventStream:
        return self

    def _verdict(self, event: Event) -> bool | None:
        """A live event: True to give it, None to skip it (replayed, or before ``since``), False
        once past ``until`` (the end)."""
        if event.seq and event.seq <= self._replayed:
            return None
        if self._until_ns is not None and event.time_ns > self._until_ns:
            return False
        if self._since_ns is None or event.time_ns >= self._since_ns:
            return True
        return None

    def _next_page(self) -> None:
        store = self._store
        if self._replay is None:
            first = None
            if self._since_ns is not None and store is not None:
                first = store.first_event_seq_since(self._since_ns)
            if first is None:
                self._replay = False
                return
            self._replayed = first - 1  # nothing at or below it is in the time range
            self._replay = True
        assert store is not None
        assert self._since_ns is not None
        rows = store.events_after(
            self._replayed, since_ns=self._since_ns, until_ns=self._until_ns, limit=REPLAY_PAGE
        )
        for row in rows:
            self._replayed = row.seq
            event = Event.from_row(row)
            if self._predicate(event):
                self._page.append(event)
        if len(rows) < REPLAY_PAGE:
            self._replay = False

    def _end(self) -> StopAsyncIteration:
        self._done = True
        return StopAsyncIteration()

    async def __anext__(self) -> Event:
        if self._done:
            raise StopAsyncIteration
        while self._replay is not False or self._page:
            if self._page:
                return self._page.popleft()
            self._next_page()
        if not self._draining:
            if self._deadline is None:
                self._deadline = anyio.current_time() + _seconds_until(self._until_ns)
            while True:
                with anyio.move_on_after(self._deadline - anyio.current_time()):
                    try:
                        event = await self._sub.receive.receive()
                    except anyio.EndOfStream:
                        break  # dropped: the queue overflowed
                    verdict = self._verdict(event)
                    if verdict:
                        return event
                    if verdict is False:
                        raise self._end()
                    continue
                break  # past ``until``
            if self._sub.overflowed:
                raise Unavailable("event subscriber too slow: events were dropped; subscribe again")
            self._draining = True
        # Past ``until``: what is queued was published before it; give that, then stop.
        while True:
            try:
                event = self._sub.receive.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                raise self._end() from None
            verdict = self._verdict(event)
            if verdict:
                return event
            if verdict is False:
                raise self._end()


def _seconds_until(until_ns: int | None) -> float:
    if until_ns is None:
        return float("inf")
    return max((until_ns - time.time_ns()) / 1e9, 0.0)


def image_removal_events(image_id: str, removed: list[str]) -> list[Event]:
    """The events of an image removal (``removed`` as ``Images.remove`` returns it, or just
    the id of an image that went): ``untag`` for each name, ``delete`` if the image went."""
    names = [item for item in removed if item != image_id]
    last = names[-1] if names else ""
    out = []
    for item in removed:
        if item == image_id:
            out.append(Event("image", "delete", image_id, last, last))
        else:
            out.append(Event("image", "untag", image_id, item, item))
    return out
