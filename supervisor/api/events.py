"""The ``events.subscribe`` JSON-RPC method (docs/api.md, "Events"): the event bus's stream of
events as ``event`` notifications."""

from __future__ import annotations

from typing import Any

import anyio

from tugwire import jsonrpc
from tugwire.errors import TugError

from ..core import Core
from ..events import Filters, parse_time


class EventApi:
    def __init__(self, core: Core) -> None:
        self.bus = core.bus
        self.containers = core.containers

    def register(self, d: jsonrpc.Dispatcher) -> None:
        d.add("events.subscribe", self.events_subscribe, accept_late=True)

    async def events_subscribe(self, call: jsonrpc.Call) -> Any:
        """Stream events as ``event`` notifications: the stored ones from ``since`` (ns or RFC
        3339), then live ones, until ``until`` (then the response ends the stream) or until the
        client goes away. ``filters``: type, container, image, event (each a value or a list)."""
        p = call.params
        since = p.raw.get("since")
        until = p.raw.get("until")
        since_ns = None if since is None else parse_time(since, "since")
        until_ns = None if until is None else parse_time(until, "until")
        filters = Filters(p.raw.get("filters"), self._container_id)

        async def stream() -> None:
            async with self.bus.watch(filters, since_ns=since_ns, until_ns=until_ns) as events:
                call.accept()  # subscribed: nothing published from now on is missed
                async for event in events:
                    await call.notify("event", event.to_json())

        try:
            await call.until_disconnected(stream)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # the client went away
        return {}

    def _container_id(self, ref: str) -> str | None:
        try:
            return self.containers.get(ref).id
        except TugError:
            return None
