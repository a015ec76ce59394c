"""Waiting in tests: the one way the suite waits, always under a deadline, failing with a message
that names what it waited for.

Wait on something that happens where there is one: an event on tugd's stream
(:func:`wait_events`), a line in a container's log (:func:`wait_output`), any streamed request
(:func:`wait_stream`). :func:`wait_until` polls a predicate, for what has nothing to wait on: a
process another process kills, a port that starts to listen, a file a container writes.
"""

from __future__ import annotations

import base64
import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from tugwire.syncclient import Client, response_result

T = TypeVar("T")
POLL = 0.02  # seconds between two looks of wait_until: short, the wait is bounded anyway


class WaitTimeout(AssertionError):
    """A wait that reached its deadline (an assertion: the test fails, naming what it awaited)."""


def wait_until(
    predicate: Callable[[], T | None],
    timeout: float = 30.0,
    what: str = "condition",
    *,
    interval: float = POLL,
    describe: Callable[[], object] | None = None,
) -> T:
    """Poll ``predicate`` until it returns something true, and return that; after ``timeout``
    seconds raise :class:`WaitTimeout` naming ``what`` (and ``describe()``, the state seen, if
    given)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            seen = f"; last seen: {describe()!r}" if describe is not None else ""
            raise WaitTimeout(f"timed out after {timeout:g}s waiting for {what}{seen}")
        time.sleep(interval)  # a bounded poll: there is nothing to wait on (see the module doc)


def gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie counts: it runs nothing any more)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def wait_gone(pid: int, timeout: float = 20.0, what: str = "") -> None:
    """Wait for a process we cannot wait(2) for (not our child) to exit."""
    wait_until(lambda: gone(pid), timeout, what or f"pid {pid} to exit")


@contextlib.contextmanager
def _alarm(timeout: float) -> Iterator[int]:
    """A file descriptor that becomes readable after ``timeout`` seconds: the ``wakeup_fd`` of
    :meth:`Client.next_message`, which then returns None instead of blocking on."""
    r, w = os.pipe()
    timer = threading.Timer(timeout, os.write, (w, b"!"))
    timer.daemon = True
    timer.start()
    try:
        yield r
    finally:
        timer.cancel()
        timer.join()
        os.close(r)
        os.close(w)


def read_stream(
    c: Client,
    rid: int,
    done: Callable[[list[dict[str, Any]]], bool],
    *,
    timeout: float = 30.0,
    what: str = "",
) -> list[dict[str, Any]]:
    """Read the notifications of request ``rid`` (sent on ``c``, a stream) and collect their params
    until ``done(collected)`` holds; returns them. Fails if the stream ends first (its response
    came) or after ``timeout`` seconds."""
    what = what or f"request {rid}'s stream"
    got: list[dict[str, Any]] = []
    with _alarm(timeout) as alarm:
        while not done(got):
            msg = c.next_message(alarm)
            if msg is None:
                raise WaitTimeout(f"timed out after {timeout:g}s waiting for {what}; got {got}")
            if msg.get("id") == rid:
                response_result(msg)  # raises the error, if it is one
                raise AssertionError(f"the stream ended before {what}; got {got}")
            if "id" not in msg and isinstance(msg.get("params"), dict):
                got.append(msg["params"])
    return got


def wait_stream(
    socket_path: str,
    method: str,
    params: dict[str, Any],
    done: Callable[[list[dict[str, Any]]], bool],
    *,
    timeout: float = 30.0,
    what: str = "",
) -> list[dict[str, Any]]:
    """Send a streaming request to tugd on a connection of its own and read its
    notifications until ``done(collected)`` holds (see :func:`read_stream`)."""
    with Client(socket_path) as c:
        rid = c.send(method, params)
        return read_stream(c, rid, done, timeout=timeout, what=what or f"{method} {params}")


def wait_events(
    d: Any,
    done: Callable[[list[dict[str, Any]]], bool],
    *,
    timeout: float = 30.0,
    what: str = "",
    since: int = 0,
    **filters: Any,
) -> list[dict[str, Any]]:
    """The events matching ``filters`` (e.g. ``container=cid``) from ``since`` on (0: the
    stored ones first), until ``done(events)`` holds."""
    return wait_stream(
        d.socket,
        "events.subscribe",
        {"since": since, "filters": filters},
        lambda got: done([p for p in got if "action" in p]),
        timeout=timeout,
        what=what or f"events {filters}",
    )


def wait_actions(
    d: Any, cid: str, done: Callable[[list[str]], bool], *, timeout: float = 30.0, what: str = ""
) -> list[str]:
    """The container's event actions from its creation on, until ``done(actions)`` holds."""
    events = wait_events(
        d,
        lambda evs: done([e["action"] for e in evs]),
        timeout=timeout,
        what=what or f"the events of {cid[:12]}",
        container=cid,
    )
    return [e["action"] for e in events]


def wait_output(d: Any, cid: str, marker: bytes, *, timeout: float = 30.0) -> bytes:
    """Follow the container's log until ``marker`` shows (the container got that far); returns
    what it wrote up to there (stdout and stderr, interleaved)."""
    seen = bytearray()
    read = 0  # notifications already decoded into ``seen``

    def done(got: list[dict[str, Any]]) -> bool:
        nonlocal read
        for p in got[read:]:
            if isinstance(p.get("data"), str):
                seen.extend(base64.b64decode(p["data"]))
        read = len(got)
        return marker in seen

    wait_stream(
        d.socket,
        "container.logs",
        {"id": cid, "follow": True},
        done,
        timeout=timeout,
        what=f"{marker!r} in the log of {cid[:12]}",
    )
    return bytes(seen)
