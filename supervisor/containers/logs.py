"""``container.wait`` and ``container.logs``: waiting for a state, and a container's log, whole or
followed through its shim."""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from tugwire import crilog, frames
from tugwire.errors import InvalidArgument, Unavailable
from tugwire.shimapi import LogsParams

from ..store import ContainerRecord
from .base import ContainersBase
from .state import ACTIVE, CREATED, REMOVED, Live, wait_result

LOG_CHUNK = 256 * 1024
FrameSink = Callable[[int, bytes], Awaitable[None]]  # (frames.STDOUT or STDERR, the bytes)


class Logs(ContainersBase):
    """Waiting and logs."""

    def wait(self, ref: Any, condition: str = "not-running") -> Awaitable[dict[str, Any]]:
        """Check the request at once (NotFound, InvalidArgument); the awaitable answers when the
        container meets ``condition`` (``not-running``, ``next-exit`` or ``removed``): its
        state, exit code, signal and OOM flag."""
        rec = self.get(ref)
        if condition not in ("not-running", "next-exit", REMOVED):
            raise InvalidArgument(f"unknown wait condition {condition!r}", field="condition")
        live = self.live(rec.id)
        return self._wait(rec, condition, live, live.exits)

    async def _wait(self, rec: ContainerRecord, condition: str, live: Live, seen: int) -> dict[str, Any]:
        while True:
            current = self.store.get_container(rec.id)
            if current is None:
                return live.last_result or wait_result(rec)
            if condition == "not-running" and current.run.state not in ACTIVE:
                return wait_result(current)
            if condition == "next-exit" and live.exits > seen:
                return live.last_result
            await live.wait_changed()

    def logs(
        self,
        ref: Any,
        sink: Callable[[bytes | str], Awaitable[None]],
        *,
        follow: bool = False,
        tail: int | None = None,
        since: str | None = None,
    ) -> Awaitable[dict[str, Any]]:
        """Check the request at once (NotFound, InvalidArgument); the awaitable passes the log to
        ``sink`` in base64 chunks of whole CRI records (``bytes`` encoded here, or ``str`` as the
        shim encoded it), the whole log or its last ``tail`` records or those ``since`` a time,
        and with ``follow`` until the container exits; then ``{"dropped_bytes": N}``."""
        rec = self.get(ref)
        if tail is not None and tail < 0:
            tail = None
        return self._logs(rec, sink, follow, tail, _since(since) if since else None)

    async def _logs(
        self,
        rec: ContainerRecord,
        sink: Callable[[bytes | str], Awaitable[None]],
        follow: bool,
        tail: int | None,
        since: str | None,
    ) -> dict[str, Any]:
        live = self.live(rec.id)
        live.holds += 1

        async def send_b64(text: str) -> None:
            await sink(text)  # relayed from the shim as it encoded it

        async def send(data: bytes) -> None:
            await sink(base64.b64encode(data))

        try:
            if follow:
                started = await self._until_started(rec, live)
                if started is None:
                    return {"dropped_bytes": 0}
                rec = started
            if follow and rec.run.state in ACTIVE:
                result = await self._follow_from_shim(rec, tail, since, send_b64)
                if result is not None:
                    return result
            await self._send_from_files(rec, tail, since, send)
            return {"dropped_bytes": 0}
        finally:
            live.holds -= 1
            live.changed()

    async def _until_started(self, rec: ContainerRecord, live: Any) -> ContainerRecord | None:
        """A follower of a created container waits for its start: its record then, or None if
        it was removed meanwhile."""
        while rec.run.state == CREATED:
            await live.wait_changed()
            current = self.store.get_container(rec.id)
            if current is None:
                return None
            rec = current
        return rec

    async def _send_from_files(
        self,
        rec: ContainerRecord,
        tail: int | None,
        since: str | None,
        send: Callable[[bytes], Awaitable[None]],
    ) -> None:
        """The log's CRI records from its files to ``send``: the whole log in whole records
        straight from the files (never split into lines), or the records ``tail``/``since``
        select."""
        if tail is None and since is None:
            for chunk in crilog.iter_chunks(self._log_files(rec), LOG_CHUNK):
                await send(chunk)
            return
        selected = since.encode() if since else None
        records = crilog.select_records(self._log_files(rec), tail=tail, since=selected)
        data = b"".join(r + b"\n" for r in records)
        for i in range(0, len(data), LOG_CHUNK):
            await send(data[i : i + LOG_CHUNK])

    async def _follow_from_shim(
        self,
        rec: ContainerRecord,
        tail: int | None,
        since: str | None,
        send_b64: Callable[[str], Awaitable[None]],
    ) -> dict[str, Any] | None:
        """Proxy the shim's follow stream; None if the shim is gone before it sent anything (the
        files are then complete: the exit is recorded only after the pipes are drained)."""
        sent = False
        try:
            async with self.shim(rec.id).logs(LogsParams(follow=True, tail=tail, since=since)) as stream:
                async for chunk in stream:
                    # Passed on as the shim encoded it: no decode and re-encode per chunk.
                    await send_b64(chunk)
                    sent = True
                return await stream.result()
        except Unavailable as exc:
            if sent:
                # Never end a broken stream as if it were complete: the client must know.
                raise Unavailable(f"the log stream from the shim broke off: {exc.message}") from exc
            return None

    def logs_raw(
        self,
        ref: Any,
        sink: FrameSink,
        *,
        follow: bool = False,
        tail: int | None = None,
        since: str | None = None,
        timestamps: bool = False,
    ) -> Awaitable[dict[str, Any]]:
        """:meth:`logs` as the container's bytes: ``sink(stream, data)`` with stream
        ``frames.STDOUT`` or ``STDERR`` (``timestamps`` puts each line's time before it), the
        CRI records decoded once, where they are read; then ``{"dropped_bytes": N}``."""
        rec = self.get(ref)
        if tail is not None and tail < 0:
            tail = None
        return self._logs_raw(rec, sink, follow, tail, _since(since) if since else None, timestamps)

    async def _logs_raw(
        self,
        rec: ContainerRecord,
        sink: FrameSink,
        follow: bool,
        tail: int | None,
        since: str | None,
        timestamps: bool,
    ) -> dict[str, Any]:
        live = self.live(rec.id)
        live.holds += 1
        decoder = crilog.LogDecoder(timestamps=timestamps)

        async def send(data: bytes) -> None:
            for kind, out in decoder.feed(data):
                await sink(kind, out)

        try:
            if follow:
                started = await self._until_started(rec, live)
                if started is None:
                    return {"dropped_bytes": 0}
                rec = started
            if follow and rec.run.state in ACTIVE:
                params = LogsParams(follow=True, tail=tail, since=since, timestamps=timestamps)
                result = await self._relay_from_shim(rec, params, sink)
                if result is not None:
                    return result
            await self._send_from_files(rec, tail, since, send)
            return {"dropped_bytes": 0}
        finally:
            live.holds -= 1
            live.changed()

    async def _relay_from_shim(
        self, rec: ContainerRecord, params: LogsParams, sink: FrameSink
    ) -> dict[str, Any] | None:
        """Relay the shim's raw follow stream, frame by frame (the bytes are not looked at);
        None if the shim is gone before it sent anything (the files are then complete)."""
        sent = False
        try:
            async with self.shim(rec.id).logs_raw(params) as channel:
                while True:
                    try:
                        kind, data = await channel.receive()
                    except anyio.EndOfStream:
                        raise Unavailable("the shim closed the log stream before its end") from None
                    if kind == frames.END:
                        result: dict[str, Any] = frames.end_result(data)
                        return result
                    if kind in (frames.STDOUT, frames.STDERR):
                        await sink(kind, data)
                        sent = True
        except Unavailable as exc:
            if sent:
                raise Unavailable(f"the log stream from the shim broke off: {exc.message}") from exc
            return None


def _since(value: str) -> str:
    """An RFC 3339 UTC timestamp, made fixed-width like the log's own (nanoseconds, Z)."""
    import re

    m = re.fullmatch(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?Z", value)
    if m is None:
        raise InvalidArgument(
            f"invalid since {value!r}: want an RFC 3339 time in UTC like 2026-01-02T03:04:05Z", field="since"
        )
    return f"{m.group(1)}.{(m.group(2) or '').ljust(9, '0')}Z"
