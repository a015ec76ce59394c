"""``GET /containers/{id}/stats`` (``docker stats``): tugd's cgroup samples in docker's shape."""

from __future__ import annotations

import json
import time
from typing import Any

import anyio

from . import shapes
from .containers import lookup
from .http import watch_disconnect
from .server import Ctx, Router


def register(r: Router) -> None:
    """Add the stats route."""
    r.add("GET", "/containers/(?P<ref>[^/]+)/stats", stats)


def _cpu(s: dict[str, Any] | None) -> dict[str, Any]:
    """docker's ``cpu_stats`` of a tugd sample: the container's CPU time, and the shim's clock
    times the CPUs as the system's (the CLI's CPU % is dcontainer / dsystem * CPUs * 100)."""
    if s is None or not s.get("running", True):
        return {
            "cpu_usage": {"total_usage": 0, "usage_in_kernelmode": 0, "usage_in_usermode": 0},
            "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0},
        }
    online = int(s.get("online_cpus") or 1)
    return {
        "cpu_usage": {
            "total_usage": int((s.get("cpu_seconds") or 0) * 1e9),
            "usage_in_kernelmode": 0,
            "usage_in_usermode": 0,
        },
        "system_cpu_usage": int((s.get("read_at") or 0) * 1e9) * online,
        "online_cpus": online,
        "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0},
    }


def stats_shape(
    s: dict[str, Any], read: str, prev: dict[str, Any] | None = None, preread: str = ""
) -> dict[str, Any]:
    """A ``/containers/{id}/stats`` sample from tugd's; ``prev``: the one before (``precpu``)."""
    usage = int(s.get("memory_usage") or 0)
    limit = s.get("memory_limit") or shapes_mem_total()
    return {
        "read": read,
        "preread": preread or shapes.ZERO_TIME,
        "pids_stats": {"current": int(s.get("pids") or 0)},
        "blkio_stats": {"io_service_bytes_recursive": None},
        "num_procs": 0,
        "storage_stats": {},
        "cpu_stats": _cpu(s),
        "precpu_stats": _cpu(prev),
        "memory_stats": {"usage": usage, "limit": int(limit), "stats": {}},
        "name": "/" + str(s.get("name", "")),
        "id": s.get("id", ""),
    }


def shapes_mem_total() -> int:
    from .system import mem_total

    return mem_total()


async def stats(ctx: Ctx, ref: str) -> None:
    """``GET /containers/{id}/stats``: ``stream=1`` (the default) a sample a second, each with
    the one before as ``precpu``; ``stream=0`` two samples a second apart, as dockerd, so that the
    CPU % can be computed (``one-shot=1``: one sample at once, ``precpu`` empty)."""
    stream = ctx.req.flag("stream", True)
    one_shot = ctx.req.flag("one-shot")
    c = await lookup(ctx, ref)
    prev: dict[str, Any] | None = None
    prev_read = ""

    async def sample() -> bytes:
        nonlocal prev, prev_read
        got = (await ctx.call("container.stats", {"id": c["id"]}))[0]
        read = shapes.rfc3339_ns(time.time_ns())
        body = json.dumps(stats_shape(got, read, prev, prev_read)).encode() + b"\n"
        prev, prev_read = got, read
        return body

    if not stream:
        body = await sample()
        if not one_shot:
            await anyio.sleep(1)  # dockerd's interval between the two samples of stream=0
            body = await sample()
        await ctx.conn.respond(200, body)
        return
    await ctx.conn.start_stream(200, "application/json")
    async with watch_disconnect(ctx.conn):
        while True:
            await ctx.conn.send_chunk(await sample())
            await anyio.sleep(1)  # docker's rate: one sample a second
