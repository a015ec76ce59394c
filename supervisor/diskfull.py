"""A full disk, said as such: ENOSPC (and a quota's EDQUOT, SQLite's SQLITE_FULL) anywhere under
a request becomes :class:`ResourceExhausted` with a clear message, mapped once at the API's edge
(``Dispatcher.map_error``), instead of an internal error with a traceback in the log.

What a request that ran out of space leaves behind is each writer's business, and each writes
through a temp file renamed only when whole: a blob (``BlobWriter``, ``put_bytes``,
``put_stream``), a snapshot (``.unpack-`` dirs), a bundle (removed with the container's dir when
its record cannot be made), a record (a transaction, rolled back). Nothing half-written is ever
used; temp files left by a crash are collected at the next start.

What tugd writes on its own (a container's exit, a restart of its policy, an auto-remove) cannot
fail back to a client: a full disk there must not end tugd. The exit is recorded again until there
is room (:func:`retry_while_full`; the shim keeps its exit record meanwhile), the restart waits, the
auto-remove is left to the next start.
"""

from __future__ import annotations

import errno
import logging
import sqlite3
from collections.abc import Awaitable, Callable

import anyio

from tugwire.errors import ResourceExhausted, TugError

log = logging.getLogger("tugboat.diskfull")

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc``, its causes and contexts, and the leaves of exception groups, depth first."""
    out: list[BaseException] = []
    stack = [exc]
    seen: set[int] = set()
    while stack:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        out.append(e)
        if isinstance(e, BaseExceptionGroup):
            stack.extend(e.exceptions)
        stack.extend(nxt for nxt in (e.__cause__, e.__context__) if nxt is not None)
    return out


def as_tug_error(exc: BaseException) -> TugError | None:
    """:class:`ResourceExhausted` if ``exc`` (or what caused it) is a full disk, else None."""
    for e in _causes(exc):
        if isinstance(e, OSError) and e.errno in _NO_SPACE:
            where = f" ({e.filename})" if isinstance(e.filename, str) else ""
            what = "over the disk quota" if e.errno == errno.EDQUOT else "no space left on the device"
            return ResourceExhausted(
                f"{what}{where}: nothing of this request was kept; free some space and try again"
            )
        if isinstance(e, sqlite3.Error) and getattr(e, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_FULL:
            return ResourceExhausted(
                "the store cannot be written: the disk is full; nothing of this request was kept; "
                "free some space and try again"
            )
    return None


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a full disk."""
    return as_tug_error(exc) is not None


async def retry_while_full(what: str, fn: Callable[[], Awaitable[None]], every: float = 1.0) -> None:
    """Run ``fn``; while it fails on a full disk, log once and run it again every ``every``
    seconds (no event says that space came back). For what tugd does on its own and must not
    lose: recording an exit (the shim keeps its exit record until then), a lost shim."""
    warned = False
    while True:
        try:
            await fn()
            return
        except Exception as exc:
            if not is_disk_full(exc):
                raise
            if not warned:
                log.warning("cannot record %s: the disk is full; trying again every %gs", what, every)
                warned = True
        await anyio.sleep(every)
