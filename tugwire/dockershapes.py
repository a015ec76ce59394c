"""Docker's JSON shapes of tugd's records: ``docker inspect``, ``docker ps``, ``docker images``,
``docker network ls``, as the Docker API serves them and as ``tug``'s Go templates see them.

Pure functions of tugd's JSON records (``container.inspect``/``container.list``,
``image.inspect``/``image.list``, ``network.list``), cheap to import (no typing at run time).
"""

from __future__ import annotations

import hashlib
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
        "NetworkSettings": {"Networks": _summary_networks(c, networks)},
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
        networks[name] = endpoint(c["id"], net)
        if name not in _BUILTIN:  # docker's: a user network's aliases end with the short id
            aliases = [a for a in net.get("aliases") or [] if a != c["id"][:12]]
            networks[name]["Aliases"] = [*aliases, c["id"][:12]]
    legacy = networks.get("bridge", {})  # the top-level fields are the default bridge's only
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
        "HostConfig": host_config(c, networks, ports),
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
            # the published ports (tugd keeps no exposed-only port of a create body)
            **({"ExposedPorts": {key: {} for key in ports}} if ports else {}),
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
            **({"StopSignal": cfg["stop_signal"]} if cfg.get("stop_signal") not in _DEFAULT_STOP else {}),
        },
        "NetworkSettings": {
            "Bridge": "",
            "SandboxID": "",
            "HairpinMode": False,
            "LinkLocalIPv6Address": "",
            "LinkLocalIPv6PrefixLen": 0,
            "Ports": ports,
            "SandboxKey": c.get("sandbox_key") or "",
            "SecondaryIPAddresses": None,
            "SecondaryIPv6Addresses": None,
            **{k: legacy.get(k, zero) for k, zero in _LEGACY_ENDPOINT},
            "Networks": networks,
        },
    }


# The stop signal create resolves when neither the request nor the image names one: dockerd
# shows no StopSignal then (and shows one given as SIGTERM; tugd does not tell the two apart).
_DEFAULT_STOP = (None, "", "SIGTERM", "TERM", "15")

_BUILTIN = ("bridge", "host", "none")

_LEGACY_ENDPOINT = (
    ("EndpointID", ""),
    ("Gateway", ""),
    ("GlobalIPv6Address", ""),
    ("GlobalIPv6PrefixLen", 0),
    ("IPAddress", ""),
    ("IPPrefixLen", 0),
    ("IPv6Gateway", ""),
    ("MacAddress", ""),
)


def endpoint_id(container_id: str, network_id: str) -> str:
    """An endpoint's id: tugd keys an endpoint by its network and container, so docker's
    64-hex ``EndpointID`` is derived from the two (the same in container and network inspect)."""
    if not network_id:
        return ""
    return hashlib.sha256(f"{network_id}/{container_id}".encode()).hexdigest()


def endpoint(container_id: str, net: dict[str, Any]) -> dict[str, Any]:
    """A ``NetworkSettings.Networks`` entry of tugd's ``networks`` one (``{}`` or only a
    ``network_id`` for host and none: docker's zero values then)."""
    ip6 = net.get("ip6") or ""
    address6, _, prefix6 = ip6.partition("/")
    has_endpoint = bool(net.get("ip") or net.get("mac"))
    return {
        "IPAMConfig": None,
        "Links": None,
        "Aliases": net.get("aliases") or None,
        "NetworkID": net.get("network_id", ""),
        "EndpointID": endpoint_id(container_id, net.get("network_id", "")) if has_endpoint else "",
        "Gateway": net.get("gateway") or "",
        "IPAddress": net.get("ip") or "",
        "IPPrefixLen": net.get("prefixlen") or 0,
        "IPv6Gateway": (net.get("gateway6") or "") if ip6 else "",
        "GlobalIPv6Address": address6,
        "GlobalIPv6PrefixLen": int(prefix6) if prefix6.isdigit() else (64 if ip6 else 0),
        "MacAddress": net.get("mac") or "",
        "DriverOpts": None,
    }


def _summary_networks(c: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """The list's ``NetworkSettings.Networks``: docker's endpoint shape per network, with the
    network's id (tugd's list has the names and ids only: addresses are inspect's)."""
    ids = c.get("network_ids") or []
    by_name = dict(zip(names, ids, strict=True)) if len(ids) == len(names) else {}
    return {name: endpoint(c["id"], {"network_id": by_name.get(name, "")}) for name in names}


# Docker's HostConfig keys that Tugboat has no setting for, with dockerd 20.10's values then.
_HOST_ZERO: dict[str, Any] = {
    "ContainerIDFile": "",
    "VolumeDriver": "",
    "VolumesFrom": None,
    "CgroupnsMode": "host",
    "DnsOptions": None,
    "DnsSearch": None,
    "GroupAdd": None,
    "IpcMode": "private",
    "Cgroup": "",
    "Links": None,
    "OomScoreAdj": 0,
    "SecurityOpt": None,
    "UsernsMode": "",
    "Runtime": "runc",
    "ConsoleSize": [0, 0],
    "Isolation": "",
    "CpuShares": 0,
    "BlkioWeight": 0,
    "BlkioWeightDevice": None,
    "BlkioDeviceReadBps": None,
    "BlkioDeviceWriteBps": None,
    "BlkioDeviceReadIOps": None,
    "BlkioDeviceWriteIOps": None,
    "CpuPeriod": 0,
    "CpuQuota": 0,
    "CpuRealtimePeriod": 0,
    "CpuRealtimeRuntime": 0,
    "CpusetCpus": "",
    "CpusetMems": "",
    "Devices": None,
    "DeviceCgroupRules": None,
    "DeviceRequests": None,
    "KernelMemory": 0,
    "KernelMemoryTCP": 0,
    "MemoryReservation": 0,
    "MemorySwappiness": None,
    "OomKillDisable": False,
    "Ulimits": None,
    "CpuCount": 0,
    "CpuPercent": 0,
    "IOMaximumIOps": 0,
    "IOMaximumBandwidth": 0,
}

# dockerd's order of the keys (docker inspect prints them so).
_HOST_ORDER = (  # noqa: SIM905
    "Binds ContainerIDFile LogConfig NetworkMode PortBindings RestartPolicy AutoRemove "
    "VolumeDriver VolumesFrom CapAdd CapDrop CgroupnsMode Dns DnsOptions DnsSearch ExtraHosts "
    "GroupAdd IpcMode Cgroup Links OomScoreAdj PidMode Privileged PublishAllPorts ReadonlyRootfs "
    "SecurityOpt UTSMode UsernsMode ShmSize Runtime ConsoleSize Isolation CpuShares Memory "
    "NanoCpus CgroupParent BlkioWeight BlkioWeightDevice BlkioDeviceReadBps BlkioDeviceWriteBps "
    "BlkioDeviceReadIOps BlkioDeviceWriteIOps CpuPeriod CpuQuota CpuRealtimePeriod "
    "CpuRealtimeRuntime CpusetCpus CpusetMems Devices DeviceCgroupRules DeviceRequests "
    "KernelMemory KernelMemoryTCP MemoryReservation MemorySwap MemorySwappiness OomKillDisable "
    "PidsLimit Ulimits CpuCount CpuPercent IOMaximumIOps IOMaximumBandwidth MaskedPaths "
    "ReadonlyPaths"
).split()

SHM_SIZE = 64 * 1024 * 1024  # the /dev/shm tugd mounts (spec.py), docker's default


def host_config(c: dict[str, Any], networks: dict[str, Any], ports: dict[str, Any]) -> dict[str, Any]:
    """``HostConfig`` of a container inspect: tugd's settings where it has them, dockerd's zero
    values (``_HOST_ZERO``) where it has no such setting."""
    cfg = c.get("config") or {}
    sec: dict[str, Any] = cfg["security"] if isinstance(cfg.get("security"), dict) else {}
    namespaces = cfg.get("namespaces") or {}
    memory = cfg.get("memory") or 0
    binds = [
        f"{v['source']}:{v['destination']}{':ro' if v.get('readonly') else ''}"
        for v in cfg.get("volumes") or []
    ]
    policy = str(c.get("restart_policy") or "no")
    name, _, retries = policy.partition(":")
    values: dict[str, Any] = {
        **_HOST_ZERO,
        "Binds": binds or None,
        # docker-py reads the logs of json-file and journald containers only; ours read alike.
        "LogConfig": {"Type": "json-file", "Config": {}},
        "NetworkMode": cfg.get("network") or next(iter(networks), "default"),
        "PortBindings": ports or None,
        "RestartPolicy": {"Name": name, "MaximumRetryCount": int(retries) if retries.isdigit() else 0},
        "AutoRemove": bool(c.get("auto_remove")),
        "CapAdd": [x.removeprefix("CAP_") for x in c.get("cap_add") or []] or None,
        "CapDrop": [x.removeprefix("CAP_") for x in c.get("cap_drop") or []] or None,
        "Dns": cfg.get("dns") or None,
        "ExtraHosts": [f"{h[0]}:{h[1]}" for h in cfg.get("add_hosts") or [] if len(h) == 2] or None,
        "PidMode": "host" if namespaces.get("pid") == "host" else "",
        "UTSMode": "host" if namespaces.get("uts") == "host" else "",
        "Privileged": bool(sec.get("privileged")),
        "PublishAllPorts": False,
        "ReadonlyRootfs": bool(cfg.get("read_only")),
        "ShmSize": SHM_SIZE,
        "Memory": memory,
        "NanoCpus": int((cfg.get("cpus") or 0) * 1e9),
        "CgroupParent": cfg.get("cgroup_parent") or "",
        "MemorySwap": 0,  # tugd sets no swap limit of its own
        "PidsLimit": cfg.get("pids_limit"),
        "MaskedPaths": c.get("masked_paths") or None,
        "ReadonlyPaths": c.get("readonly_paths") or None,
    }
    if namespaces.get("ipc") == "host":
        values["IpcMode"] = "host"
    return {k: values[k] for k in _HOST_ORDER}


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
        "Container": "",  # the builder's last container: tugd's builds keep none
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
            "EndpointID": endpoint_id(cid, n["id"]),
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
