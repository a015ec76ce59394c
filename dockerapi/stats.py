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


def stats_shape(s: dict[str, Any], read: str) -> dict[str, Any]:
    """A ``/containers/{id}/stats`` sample from tugd's (no previous sample: ``precpu`` empty)."""
    cpu_ns = int((s.get("cpu_seconds") or 0) * 1e9)
    online = int(s.get("online_cpus") or 1)
    usage = int(s.get("memory_usage") or 0)
    limit = s.get("memory_limit") or shapes_mem_total()
    return {
        "read": read,
        "preread": shapes.ZERO_TIME,
        "pids_stats": {"current": int(s.get("pids") or 0)},
        "blkio_stats": {"io_service_bytes_recursive": None},
        "num_procs": 0,
        "storage_stats": {},
        "cpu_stats": {
            "cpu_usage": {"total_usage": cpu_ns, "usage_in_kernelmode": 0, "usage_in_usermode": 0},
            "system_cpu_usage": int(time.monotonic() * 1e9) * online,
            "online_cpus": online,
            "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0},
        },
        "precpu_stats": {
            "cpu_usage": {"total_usage": 0, "usage_in_kernelmode": 0, "usage_in_usermode": 0},
            "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0},
        },
        "memory_stats": {"usage": usage, "limit": int(limit), "stats": {}},
        "name": "/" + str(s.get("name", "")),
        "id": s.get("id", ""),
    }


def shapes_mem_total() -> int:
    from .system import mem_total

    return mem_total()


async def stats(ctx: Ctx, ref: str) -> None:
    """``GET /containers/{id}/stats?stream=0``: one sample (``stream=1``: one a second)."""
    stream = ctx.req.flag("stream", True) and not ctx.req.flag("one-shot")
    c = await lookup(ctx, ref)

    async def sample() -> bytes:
        got = await ctx.call("container.stats", {"id": c["id"]})
        read = time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime())
        return json.dumps(stats_shape(got[0], read)).encode() + b"\n"

    if not stream:
        await ctx.conn.respond(200, await sample())
        return
    await ctx.conn.start_stream(200, "application/json")
    async with watch_disconnect(ctx.conn):
        while True:
            await ctx.conn.send_chunk(await sample())
            await anyio.sleep(1)  # docker's rate: one sample a second
