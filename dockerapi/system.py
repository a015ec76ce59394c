"""System routes: ``/_ping``, ``/version``, ``/info``, ``/events``, ``/system/df``, and the JSON 404s
of the nouns Tugboat does not have (volumes, plugins, swarm), which ``docker inspect`` probes."""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from typing import Any

from tugwire.dockershapes import docker_event
from tugwire.errors import InvalidArgument

from . import API_VERSION, MIN_API_VERSION, VERSION
from .http import HttpError, watch_disconnect
from .server import Ctx, Router

log = logging.getLogger("tugboat.dockerapi")


def register(r: Router) -> None:
    """Add the system routes."""
    r.add("GET", "/_ping", ping)
    r.add("GET", "/version", version)
    r.add("GET", "/info", info)
    r.add("GET", "/events", events)
    r.add("GET", "/system/df", df)
    # docker inspect probes every noun in turn: each answers a JSON 404 (see docs/docker-api.md).
    r.add("GET", "/volumes/(?P<name>[^/]+)", no_volume)
    r.add("GET", "/volumes", volumes)
    r.add("GET", "/plugins/(?P<name>.+)/json", no_plugin)
    r.add("GET", "/plugins", plugins)


async def ping(ctx: Ctx) -> None:
    """``GET``/``HEAD /_ping``: ``OK`` with the version headers."""
    headers = [
        ("Builder-Version", "1"),
        ("Swarm", "inactive"),
        ("Cache-Control", "no-cache, no-store, must-revalidate"),
        ("Pragma", "no-cache"),
    ]
    await ctx.conn.respond(200, b"OK", "text/plain; charset=utf-8", headers)


async def version(ctx: Ctx) -> None:
    """``GET /version``."""
    info = await ctx.call("system.info")
    body = {
        "Platform": {"Name": "Tugboat"},
        "Components": [
            {
                "Name": "Engine",
                "Version": VERSION,
                "Details": {
                    "ApiVersion": API_VERSION,
                    "MinAPIVersion": MIN_API_VERSION,
                    "Os": "linux",
                    "Arch": _arch(),
                },
            },
            {
                "Name": "tugd",
                "Version": info.get("version", ""),
                "Details": {"Python": info.get("python", "")},
            },
            {"Name": "runc", "Version": info.get("runtime_version", ""), "Details": {}},
        ],
        "Version": VERSION,
        "ApiVersion": API_VERSION,
        "MinAPIVersion": MIN_API_VERSION,
        "GitCommit": "",
        "GoVersion": "python" + platform.python_version(),
        "Os": "linux",
        "Arch": _arch(),
        "KernelVersion": platform.release(),
        "BuildTime": "",
    }
    await ctx.conn.respond_json(200, body)


def _arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}.get(machine, machine)


async def info(ctx: Ctx) -> None:
    """``GET /info``: the keys the CLI's template and docker-py read."""
    info = await ctx.call("system.info")
    counts = info.get("containers") or {}
    total = int(counts.get("total", 0))
    running = int(counts.get("running", 0))
    paused = int(counts.get("paused", 0))
    body = {
        "ID": "tugboat",
        "Containers": total,
        "ContainersRunning": running,
        "ContainersPaused": paused,
        "ContainersStopped": total - running - paused,
        "Images": int(info.get("images", 0)),
        "Driver": "overlay2",
        "DriverStatus": [],
        "Plugins": {
            "Volume": [],
            "Network": ["bridge", "host", "null"],
            "Authorization": None,
            "Log": ["cri"],
        },
        "MemoryLimit": True,
        "SwapLimit": False,
        "CpuCfsPeriod": True,
        "CpuCfsQuota": True,
        "CPUShares": True,
        "CPUSet": True,
        "PidsLimit": True,
        "IPv4Forwarding": True,
        "Debug": False,
        "NFd": len(os.listdir("/proc/self/fd")),
        "NGoroutines": 0,
        "SystemTime": time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime()),
        "LoggingDriver": "cri",
        "CgroupDriver": "cgroupfs",
        "CgroupVersion": str(info.get("cgroup_version", "2"))[:1],
        "NEventsListener": 0,
        "KernelVersion": platform.release(),
        "OperatingSystem": _os_name(),
        "OSVersion": "",
        "OSType": "linux",
        "Architecture": platform.machine(),
        "IndexServerAddress": "https://index.docker.io/v1/",
        "RegistryConfig": {
            "InsecureRegistryCIDRs": ["127.0.0.0/8"],
            "IndexConfigs": {},
            "Mirrors": [m + "/" for m in info.get("registry_mirrors", [])],
        },
        "NCPU": os.cpu_count() or 1,
        "MemTotal": mem_total(),
        "DockerRootDir": info.get("root", ""),
        "Name": platform.node(),
        "Labels": [],
        "ExperimentalBuild": False,
        "ServerVersion": VERSION,
        "Runtimes": {"runc": {"path": info.get("runtime", "runc")}},
        "DefaultRuntime": "runc",
        "Swarm": {
            "NodeID": "",
            "NodeAddr": "",
            "LocalNodeState": "inactive",
            "ControlAvailable": False,
            "Error": "",
            "RemoteManagers": None,
        },
        "LiveRestoreEnabled": True,
        "Isolation": "",
        "InitBinary": "tini",
        "SecurityOptions": ["name=seccomp,profile=builtin", "name=no-new-privileges"],
        "Warnings": None,
    }
    await ctx.conn.respond_json(200, body)


def _os_name() -> str:
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return "Linux"


def mem_total() -> int:
    """The host's memory in bytes (/proc/meminfo), 0 if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


# ------------------------------------------------------------------------------------- events


def docker_filters(raw: Any) -> dict[str, list[str]]:
    """Docker's ``filters`` (``{"key": {"value": true}}`` or ``{"key": ["value"]}``) as lists."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise HttpError(400, "filters must be a JSON object")
    out: dict[str, list[str]] = {}
    for key, values in raw.items():
        if isinstance(values, dict):
            out[key] = [str(v) for v, on in values.items() if on]
        elif isinstance(values, list) and all(isinstance(v, str) for v in values):
            out[key] = list(values)
        elif isinstance(values, str):
            out[key] = [values]
        else:
            raise HttpError(400, f"invalid filter {key!r}")
    return out


def unix_to_ns(text: str, name: str) -> int:
    """Docker's event times, ``1700000000`` or ``1700000000.123456789`` (seconds), as ns."""
    sec, _, frac = text.partition(".")
    if not sec.lstrip("-").isdigit() or (frac and not frac.isdigit()):
        raise HttpError(400, f"invalid value {text!r} for {name}: want unix seconds")
    return int(sec) * 1_000_000_000 + int((frac + "000000000")[:9] or 0)


async def events(ctx: Ctx) -> None:
    """``GET /events``: NDJSON, stored events from ``since``, live ones until ``until``."""
    params: dict[str, Any] = {}
    since, until = ctx.req.arg("since"), ctx.req.arg("until")
    if since:
        params["since"] = unix_to_ns(since, "since")
    if until:
        params["until"] = unix_to_ns(until, "until")
    filters = docker_filters(ctx.req.json_arg("filters"))
    if "event" in filters:
        filters["event"] = [e.split(":")[0] for e in filters["event"]]
    if filters:
        params["filters"] = filters
    await ctx.conn.drain_body()
    async with ctx.rpc() as rpc:
        try:
            async with rpc.stream("events.subscribe", params, buffer=256) as notes:
                # The subscription is registered once a call after it on this connection answers.
                await rpc.call("system.info")
                await ctx.conn.start_stream(200, "application/json")
                log.debug("events: subscribed")
                async with watch_disconnect(ctx.conn):
                    async for note in notes:
                        await ctx.conn.send_chunk(json.dumps(docker_event(note)).encode() + b"\n")
                    await notes.result()
                    await ctx.conn.end_stream()
        except InvalidArgument as exc:
            raise HttpError(400, exc.message) from None


# ----------------------------------------------------------------------------------------- df


async def df(ctx: Ctx) -> None:
    """``GET /system/df``: images, containers (writable layers), no volumes, no build cache."""
    data = await ctx.call("system.df")
    ctrs = {c["id"]: c for c in await ctx.call("container.list", {"all": True})}
    images = [
        {
            "Id": item["id"],
            "ParentId": "",
            "RepoTags": item.get("repo_tags") or [],
            "RepoDigests": [],
            "Created": 0,
            "Size": int(item.get("size", 0)),
            "SharedSize": int(item.get("shared_size", 0)),
            "VirtualSize": int(item.get("size", 0)),
            "Labels": {},
            "Containers": int(item.get("containers", 0)),
        }
        for item in data["images"]["items"]
    ]
    containers = []
    for item in data["containers"]["items"]:
        summary = ctrs.get(item["id"], {})
        containers.append(
            {
                "Id": item["id"],
                "Names": ["/" + item["name"]],
                "Image": item.get("image", ""),
                "ImageID": summary.get("image_id", ""),
                "Command": " ".join(summary.get("command") or []),
                "Created": 0,
                "State": item.get("state", ""),
                "Status": item.get("state", ""),
                "SizeRw": int(item.get("size", 0)),
                "SizeRootFs": int(item.get("size", 0)),
                "Labels": {},
                "Mounts": [],
            }
        )
    body = {
        "LayersSize": int(data["images"]["size"]),
        "Images": images,
        "Containers": containers,
        "Volumes": [],
        "BuildCache": [],
    }
    await ctx.conn.respond_json(200, body)


async def no_volume(ctx: Ctx, name: str) -> None:
    """Tugboat has no named volumes: every one is a 404."""
    raise HttpError(404, f"get {name}: no such volume")


async def volumes(ctx: Ctx) -> None:
    """No named volumes: an empty list."""
    await ctx.conn.respond_json(200, {"Volumes": [], "Warnings": None})


async def no_plugin(ctx: Ctx, name: str) -> None:
    """Tugboat has no plugins: every one is a 404."""
    raise HttpError(404, f"plugin {name!r} not found")


async def plugins(ctx: Ctx) -> None:
    """No plugins: an empty list."""
    await ctx.conn.respond_json(200, [])
