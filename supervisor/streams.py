"""An operation of the core that reports as it goes (a build's steps and output), as an async
iterator its caller reads while it runs, then its result. The front doors turn the events into
what their clients read (notifications for JSON-RPC); the core knows nothing of them."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Generic, TypeVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

E = TypeVar("E")
T = TypeVar("T")


class Feed(Generic[E, T]):
    """The events of an operation in progress (from :func:`run_feed`), in order and unbuffered:
    the operation waits for its reader, as a build waits for a slow client. The iteration ends
    when the operation does; then :attr:`result` holds what it returned."""

    def __init__(self, receive: MemoryObjectReceiveStream[E]) -> None:
        self._receive = receive
        self._result: T | None = None
        self._done = False

    def __repr__(self) -> str:
        return f"<Feed done={self._done}>"

    def __aiter__(self) -> Feed[E, T]:
        return self

    async def __anext__(self) -> E:
        try:
            return await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise StopAsyncIteration from None

    @property
    def result(self) -> T:
        """What the operation returned, once it has ended well."""
        if not self._done:
            raise RuntimeError("the operation has not completed")
        assert self._result is not None
        return self._result


@contextlib.asynccontextmanager
async def run_feed(op: Callable[[Callable[[E], Awaitable[None]]], Awaitable[T]]) -> AsyncIterator[Feed[E, T]]:
    """Run ``op(emit)`` in a task of its own while the body reads its :class:`Feed`. The first
    failure of either is raised as itself, not wrapped in an exception group; a body that leaves
    before the end stops the operation (its next ``emit`` raises BrokenResourceError)."""
    send, receive = anyio.create_memory_object_stream[E](0)
    feed: Feed[E, T] = Feed(receive)
    failure: list[Exception] = []
    body_exc: BaseException | None = None

    async def run() -> None:
        async with send:
            try:
                feed._result = await op(send.send)
                feed._done = True
            except Exception as exc:
                failure.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        try:
            yield feed
        except BaseException as exc:
            body_exc = exc
        # The body is done with the feed: an operation still running (the body left before the
        # end) is stopped; one that ended has nothing left to cancel.
        tg.cancel_scope.cancel()
    receive.close()
    if body_exc is not None:
        raise body_exc
    if failure:
        raise failure[0]
