"""Docker's JSON shapes of tugd's records: ``docker inspect``, ``docker ps``, ``docker images``,
``docker network ls``, as the Docker API serves them and as ``tug``'s Go templates see them.

Pure functions of tugd's JSON records (``container.inspect``/``container.list``,
``image.inspect``/``image.list``, ``network.list``), cheap to import (no typing at run time).
"""

from __future__ import annotations

import re
import time

from .timefmt import days_from_civil, human_duration

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

ZERO_TIME = "0001-01-01T00:00:00Z"


def epoch(value: str | None) -> int:
    """Unix seconds of tugd's RFC 3339 UTC times (0 when absent)."""
    if not value:
        return 0
    found = re.match(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)", value)
    if not found:
        return 0
    y, mo, d, h, mi, s = (int(x) for x in found.groups())
    return days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s  # (no calendar: 15 ms)


def rfc3339_ns(ns: int) -> str:
    """``2026-01-02T03:04:05.123456789Z`` of nanoseconds since the epoch (UTC)."""
    sec, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{frac:09d}Z"


def status_text(c: dict[str, Any]) -> str:
    """The ``Status`` column of ``docker ps``."""
    state = c.get("state")
    now = time.time()
    if state in ("running", "paused"):
        up = "Up " + human_duration(now - epoch(c.get("started_at")))
        if state == "paused":
            return up + " (Paused)"
        if c.get("health"):
            return f"{up} ({c['health']})"
        return up
    if c.get("restarting"):
        return f"Restarting ({c.get('exit_code')}) {human_duration(now - epoch(c.get('finished_at')))} ago"
    if state == "exited":
        return f"Exited ({c.get('exit_code')}) {human_duration(now - epoch(c.get('finished_at')))} ago"
    if state == "created":
        return "Created"
    return state or ""


def docker_state(state: str | None) -> str:
    """tugd's state as docker names it (``unknown`` is docker's ``dead``)."""
    return "dead" if state == "unknown" else (state or "")


# -------------------------------------------------------------------------------- containers


def container_summary(c: dict[str, Any]) -> dict[str, Any]:
    """A ``/containers/json`` entry."""
    networks = list(c.get("network_names") or c.get("networks") or [])
    return {
        "Id": c["id"],
        "Names": ["/" + c["name"]],
        "Image": c.get("image", ""),
        "ImageID": c.get("image_id", ""),
        "Command": c.get("command", ""),
        "Created": epoch(c.get("created_at")),
        "Ports": [
            {
                **({"IP": p.get("host_ip") or "0.0.0.0"} if p.get("host_port") else {}),
                "PrivatePort": int(p.get("container_port") or 0),
                **({"PublicPort": int(p["host_port"])} if p.get("host_port") else {}),
                "Type": p.get("proto") or "tcp",
            }
            for p in c.get("ports") or []
        ],
        "Labels": c.get("labels") or {},
        "State": docker_state(c.get("state")),
        "Status": status_text(c),
        "HostConfig": {"NetworkMode": networks[0] if networks else "default"},
        "NetworkSettings": {"Networks": {name: {} for name in networks if name not in ("none", "host")}},
        "Mounts": [],
        **({"SizeRw": c["size_rw"]} if "size_rw" in c else {}),
    }


def container_inspect(c: dict[str, Any]) -> dict[str, Any]:
    """``GET /containers/{id}/json``."""
    cfg = c.get("config") or {}
    args = list(cfg.get("args") or [*(cfg.get("entrypoint") or []), *(cfg.get("cmd") or [])])
    state = c.get("state")
    networks = {}
    for name, net in (c.get("networks") or {}).items():
        networks[name] = {
            "NetworkID": net.get("network_id", ""),
            "EndpointID": "",
            "Gateway": net.get("gateway", ""),
            "IPAddress": net.get("ip", ""),
            "IPPrefixLen": net.get("prefixlen", 0),
            "MacAddress": net.get("mac", ""),
            "Aliases": net.get("aliases"),
        }
    first = next(iter(networks.values()), {})
    ports: dict[str, list[dict[str, str]]] = {}
    for port in c.get("ports") or []:
        key = f"{port.get('container_port')}/{port.get('proto') or 'tcp'}"
        ports.setdefault(key, []).append(
            {"HostIp": port.get("host_ip") or "0.0.0.0", "HostPort": str(port.get("host_port", ""))}
        )
    return {
        "Id": c["id"],
        "Created": c.get("created_at", ""),
        "Path": args[0] if args else "",
        "Args": args[1:],
        "State": {
            "Status": docker_state(state),
            "Running": state in ("running", "paused"),
            "Paused": state == "paused",
            "Restarting": bool(c.get("restarting")),
            "OOMKilled": bool(c.get("oom_killed")),
            "Dead": state == "unknown",
            "Pid": c.get("pid") or 0,
            "ExitCode": c.get("exit_code") or 0,
            "Error": c.get("reason") or "",
            "StartedAt": c.get("started_at") or ZERO_TIME,
            "FinishedAt": c.get("finished_at") or ZERO_TIME,
            **({"Health": {"Status": c["health"], "FailingStreak": 0, "Log": []}} if c.get("health") else {}),
        },
        "Image": c.get("image_id", ""),
        "ResolvConfPath": "",
        "HostnamePath": "",
        "HostsPath": "",
        "LogPath": c.get("log_path", ""),
        "Name": "/" + c["name"],
        "RestartCount": int(c.get("restart_count") or 0),
        "Driver": "overlay2",
        "Platform": "linux",
        "MountLabel": "",
        "ProcessLabel": "",
        "AppArmorProfile": "",
        "ExecIDs": None,
        "HostConfig": {
            "AutoRemove": bool(c.get("auto_remove")),
            "NetworkMode": cfg.get("network") or next(iter(networks), "default"),
            "RestartPolicy": {
                "Name": str(c.get("restart_policy") or "no").split(":")[0],
                "MaximumRetryCount": 0,
            },
            "Memory": cfg.get("memory") or 0,
            "NanoCpus": int((cfg.get("cpus") or 0) * 1e9),
            "PidsLimit": cfg.get("pids_limit"),
            "Privileged": bool((cfg.get("security") or {}).get("privileged"))
            if isinstance(cfg.get("security"), dict)
            else False,
            "ReadonlyRootfs": bool(cfg.get("read_only")),
            "Binds": [
                f"{v['source']}:{v['destination']}{':ro' if v.get('readonly') else ''}"
                for v in cfg.get("volumes") or []
            ],
            # docker-py reads the logs of json-file and journald containers only; ours read alike.
            "LogConfig": {"Type": "json-file", "Config": {}},
        },
        "GraphDriver": {"Name": "overlay2", "Data": {}},
        "Mounts": [
            {
                "Type": "bind",
                "Source": v["source"],
                "Destination": v["destination"],
                "Mode": "",
                "RW": not v.get("readonly"),
                "Propagation": "rprivate",
            }
            for v in cfg.get("volumes") or []
        ],
        "Config": {
            "Hostname": cfg.get("hostname") or c["id"][:12],
            "Domainname": "",
            "User": cfg.get("user") or "",
            "AttachStdin": False,
            "AttachStdout": False,
            "AttachStderr": False,
            "Tty": bool(cfg.get("tty")),
            "OpenStdin": bool(cfg.get("stdin")),
            "StdinOnce": False,
            "Env": cfg.get("env") or [],
            "Cmd": cfg.get("cmd") or None,
            "Image": c.get("image", ""),
            "Volumes": None,
            "WorkingDir": cfg.get("workdir") or "",
            "Entrypoint": cfg.get("entrypoint"),
            "OnBuild": None,
            "Labels": c.get("labels") or {},
            **({"StopSignal": cfg["stop_signal"]} if cfg.get("stop_signal") else {}),
        },
        "NetworkSettings": {
            "Bridge": "",
            "SandboxID": "",
            "Ports": ports,
            "Gateway": first.get("Gateway", ""),
            "IPAddress": first.get("IPAddress", ""),
            "IPPrefixLen": first.get("IPPrefixLen", 0),
            "MacAddress": first.get("MacAddress", ""),
            "Networks": networks,
        },
    }


# ------------------------------------------------------------------------------------ images


def _created(img: dict[str, Any]) -> str:
    return str(img.get("created") or ZERO_TIME)


def image_summary(img: dict[str, Any]) -> dict[str, Any]:
    """A ``/images/json`` entry."""
    return {
        "Id": img["id"],
        "ParentId": "",
        "RepoTags": img.get("repo_tags") or [],
        "RepoDigests": img.get("repo_digests") or [],
        "Created": epoch(_created(img)),
        "Size": int(img.get("size") or 0),
        "SharedSize": -1,
        "VirtualSize": int(img.get("size") or 0),
        "Labels": (img.get("config") or {}).get("Labels") or {},
        "Containers": -1,
    }


def image_inspect(img: dict[str, Any]) -> dict[str, Any]:
    """``GET /images/{name}/json``."""
    cfg = img.get("config") or {}
    return {
        "Id": img["id"],
        "RepoTags": img.get("repo_tags") or [],
        "RepoDigests": img.get("repo_digests") or [],
        "Parent": "",
        "Comment": "",
        "Created": _created(img),
        "DockerVersion": "",
        "Author": img.get("author") or "",
        "Config": {
            "Hostname": "",
            "Domainname": "",
            "User": cfg.get("User", ""),
            "AttachStdin": False,
            "AttachStdout": False,
            "AttachStderr": False,
            "Tty": False,
            "OpenStdin": False,
            "StdinOnce": False,
            "Env": cfg.get("Env"),
            "Cmd": cfg.get("Cmd"),
            "Image": "",
            "Volumes": cfg.get("Volumes"),
            "WorkingDir": cfg.get("WorkingDir", ""),
            "Entrypoint": cfg.get("Entrypoint"),
            "OnBuild": cfg.get("OnBuild"),
            "Labels": cfg.get("Labels"),
            **({"ExposedPorts": cfg["ExposedPorts"]} if cfg.get("ExposedPorts") else {}),
            **({"StopSignal": cfg["StopSignal"]} if cfg.get("StopSignal") else {}),
            **({"Healthcheck": cfg["Healthcheck"]} if cfg.get("Healthcheck") else {}),
            **({"Shell": cfg["Shell"]} if cfg.get("Shell") else {}),
        },
        "Architecture": img.get("architecture") or "",
        "Os": img.get("os") or "linux",
        "Size": int(img.get("size") or 0),
        "VirtualSize": int(img.get("size") or 0),
        "GraphDriver": {"Name": "overlay2", "Data": None},
        "RootFS": {"Type": "layers", "Layers": img.get("diff_ids") or []},
        "Metadata": {"LastTagTime": ZERO_TIME},
    }


# ---------------------------------------------------------------------------------- networks


def network(n: dict[str, Any]) -> dict[str, Any]:
    """A network as docker shows it."""
    name = n["name"]
    driver = n.get("driver") or ("null" if name == "none" else "host" if name == "host" else "bridge")
    config = []
    if n.get("subnet"):
        config.append(
            {
                "Subnet": n["subnet"],
                "Gateway": n.get("gateway", ""),
                **({"IPRange": n["ip_range"]} if n.get("ip_range") else {}),
            }
        )
    if n.get("subnet6"):
        config.append({"Subnet": n["subnet6"], "Gateway": n.get("gateway6", "")})
    containers = {
        cid: {
            "Name": c.get("name", ""),
            "EndpointID": "",
            "MacAddress": c.get("mac", ""),
            "IPv4Address": f"{c['ip']}/{c.get('prefixlen', 16)}" if c.get("ip") else "",
            "IPv6Address": c.get("ip6") or "",
        }
        for cid, c in (n.get("containers") or {}).items()
    }
    return {
        "Name": name,
        "Id": n["id"],
        "Created": n.get("created") or "0001-01-01T00:00:00Z",
        "Scope": "local",
        "Driver": driver,
        "EnableIPv6": bool(n.get("subnet6")),
        "IPAM": {"Driver": "default", "Options": {}, "Config": config},
        "Internal": bool(n.get("internal")),
        "Attachable": False,
        "Ingress": False,
        "ConfigFrom": {"Network": ""},
        "ConfigOnly": False,
        "Containers": containers,
        "Options": _network_options(n),
        "Labels": n.get("labels") or {},
    }


def _network_options(n: dict[str, Any]) -> dict[str, str]:
    """The driver options as docker shows them: those given at create (compose compares them
    with its file's ``driver_opts`` and recreates a network whose options differ); the built-in
    bridge shows its bridge's name, as docker's ``docker0``."""
    opts: dict[str, str] = {}
    if n.get("builtin") and n.get("bridge"):
        opts["com.docker.network.bridge.name"] = n["bridge"]
    if isinstance(n.get("mtu"), int):
        opts["com.docker.network.driver.mtu"] = str(n["mtu"])
    return opts


# ------------------------------------------------------------------------------------ events


_ATTRIBUTE_NAMES = {"exit_code": "exitCode"}


def docker_event(ev: dict[str, Any]) -> dict[str, Any]:
    """A tugd event as docker's ``/events`` shows it."""
    kind, action = ev.get("type", ""), ev.get("action", "")
    attributes: dict[str, str] = {}
    for key, value in (ev.get("attributes") or {}).items():
        if value is None:
            continue
        attributes[_ATTRIBUTE_NAMES.get(key, key)] = (
            str(value).lower() if isinstance(value, bool) else str(value)
        )
    actor_id = ev.get("id") or ""
    if kind == "container":
        attributes.setdefault("name", ev.get("name") or "")
        attributes.setdefault("image", ev.get("image") or "")
    elif kind == "network":
        attributes.setdefault("name", ev.get("name") or "")
        attributes.setdefault("type", "bridge")
    elif kind == "image":
        attributes.setdefault("name", ev.get("name") or "")
    out: dict[str, Any] = {}
    if kind == "container":
        out.update({"status": action, "id": actor_id, "from": ev.get("image") or ""})
    elif kind == "image":
        out.update({"status": action, "id": ev.get("name") or actor_id})
    out.update(
        {
            "Type": kind,
            "Action": action,
            "Actor": {"ID": actor_id, "Attributes": attributes},
            "scope": "local",
            "time": int(ev.get("time_nano", 0)) // 1_000_000_000,
            "timeNano": int(ev.get("time_nano", 0)),
        }
    )
    return out
