"""tugd's JSON-RPC API as tug-cri reaches it: one connection per CRI call.

A connection per call costs about a millisecond on a Unix socket, far below what kubelet's calls
allow, and it makes tug-cri indifferent to restarts of tugd: nothing is cached, nothing has to be
re-established. A CRI call that is cancelled (the client went away, or its deadline passed)
closes its connection, and tugd sees the disconnection.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from tugwire import jsonrpc

DEFAULT_SOCKET = "/run/tugboat/tugd.sock"


class Tugd:
    """A client of one tugd, by the path of its socket."""

    def __init__(self, socket: str, connect_timeout: float = 5.0) -> None:
        self.socket = socket
        self.connect_timeout = connect_timeout

    def __repr__(self) -> str:
        return f"Tugd({self.socket!r})"

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """Call ``method`` and return its result. Raises the ``tugwire.errors`` class of tugd's
        answer, or ``Unavailable`` when tugd cannot be reached or the connection breaks.
        Notifications of streaming methods (pull progress) are not wanted here and dropped."""
        async with jsonrpc.connect(self.socket, timeout=self.connect_timeout) as client:
            return await client.call(method, params or {})

    @asynccontextmanager
    async def stream(self, method: str, params: dict[str, Any]) -> AsyncIterator[jsonrpc.Stream]:
        """Call a streaming method (``container.exec``) on a connection of its own: iterate its
        notifications, then read ``.result()``. Leaving the block closes the connection."""
        async with (
            jsonrpc.connect(self.socket, timeout=self.connect_timeout) as client,
            client.stream(method, params) as notes,
        ):
            yield notes
