"""The rows docker's CLI formats (``docker ps``, ``images``, ``network ls``): the client-side
fields of its ``--format`` templates (``.ID .Names .Status``...), built from docker's record
shapes (:mod:`tugwire.dockershapes`), and each command's column headers for ``table``.

Imported only when ``--format`` is a template (it pulls in the evaluator).
"""

from __future__ import annotations

import json
import time

from tugwire import dockershapes

from . import gotemplate
from .format import ellipsis, human_duration, human_size

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

PS_HEADER = {
    "ID": "CONTAINER ID",
    "Image": "IMAGE",
    "Command": "COMMAND",
    "CreatedAt": "CREATED AT",
    "RunningFor": "CREATED",
    "Ports": "PORTS",
    "Status": "STATUS",
    "Size": "SIZE",
    "Names": "NAMES",
    "Labels": "LABELS",
    "Mounts": "MOUNTS",
    "Networks": "NETWORKS",
    "State": "STATE",
    "LocalVolumes": "LOCAL VOLUMES",
}
IMAGES_HEADER = {
    "ID": "IMAGE ID",
    "Repository": "REPOSITORY",
    "Tag": "TAG",
    "Digest": "DIGEST",
    "CreatedSince": "CREATED",
    "CreatedAt": "CREATED AT",
    "Size": "SIZE",
    "Containers": "CONTAINERS",
    "VirtualSize": "SIZE",
    "SharedSize": "SHARED SIZE",
    "UniqueSize": "UNIQUE SIZE",
}
NETWORK_HEADER = {
    "ID": "NETWORK ID",
    "Name": "NAME",
    "Driver": "DRIVER",
    "Scope": "SCOPE",
    "IPv6": "IPV6",
    "Internal": "INTERNAL",
    "Labels": "LABELS",
    "CreatedAt": "CREATED AT",
}


def go_time(seconds: float) -> str:
    """Go's ``time.Time.String()`` of a Unix time, in the local zone: ``2026-01-02 03:04:05 +0000 UTC``."""
    return time.strftime("%Y-%m-%d %H:%M:%S %z %Z", time.localtime(seconds))


def _labels(labels: dict[str, str] | None) -> tuple[str, Any]:
    labels = labels or {}
    joined = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
    return joined, lambda name: labels.get(str(name), "")


def display_ports(ports: list[dict[str, Any]]) -> str:
    """Docker's ``DisplayablePorts`` for single ports: ``0.0.0.0:8080->80/tcp, 53/udp``."""

    def order(p: dict[str, Any]) -> tuple[int, str, str, int]:
        return (p.get("PrivatePort", 0), p.get("Type", ""), p.get("IP", ""), p.get("PublicPort", 0))

    shown = []
    for p in sorted(ports, key=order):
        inner = f"{p.get('PrivatePort')}/{p.get('Type') or 'tcp'}"
        public = p.get("PublicPort")
        shown.append(f"{p.get('IP') or '0.0.0.0'}:{public}->{inner}" if public else inner)
    return ", ".join(shown)


def ps_row(summary: dict[str, Any], *, trunc: bool, now: float, size: bool = False) -> dict[str, Any]:
    """One ``docker ps`` row of a ``/containers/json`` entry (docker's ``ContainerContext``)."""
    command = str(summary.get("Command") or "")
    if trunc:
        command = ellipsis(command, 20)
    joined, label = _labels(summary.get("Labels"))
    networks = sorted((summary.get("NetworkSettings") or {}).get("Networks") or {})
    srw, sroot = int(summary.get("SizeRw") or 0), int(summary.get("SizeRootFs") or 0)
    size_text = human_size(srw) + (f" (virtual {human_size(sroot)})" if sroot > 0 else "")
    created = float(summary.get("Created") or 0)
    return {
        "Command": json.dumps(command, ensure_ascii=False),
        "CreatedAt": go_time(created),
        "ID": summary["Id"][:12] if trunc else summary["Id"],
        "Image": str(summary.get("Image") or ""),
        "Label": label,
        "Labels": joined,
        "LocalVolumes": "0",
        "Mounts": ",".join(
            ellipsis(str(m.get("Name") or m.get("Source") or ""), 15) if trunc else str(m.get("Source") or "")
            for m in summary.get("Mounts") or []
        ),
        "Names": ",".join(n.lstrip("/") for n in summary.get("Names") or []),
        "Networks": ",".join(networks),
        "Platform": None,  # docker 28's: the image manifest's platform, which the API omits here
        "Ports": display_ports(summary.get("Ports") or []),
        "RunningFor": human_duration(max(now - created, 0)) + " ago",
        "Size": size_text if size else "0B",
        "State": str(summary.get("State") or ""),
        "Status": str(summary.get("Status") or ""),
    }


def image_rows(summary: dict[str, Any], *, trunc: bool, now: float) -> list[dict[str, Any]]:
    """The ``docker images`` rows of a ``/images/json`` entry: one per name (``<none>`` if none)."""
    image_id = str(summary.get("Id") or "")
    shown_id = image_id.removeprefix("sha256:")[:12] if trunc else image_id
    created = float(summary.get("Created") or 0)
    digests = {d.split("@", 1)[0]: d.split("@", 1)[1] for d in summary.get("RepoDigests") or [] if "@" in d}
    tags = list(summary.get("RepoTags") or []) or ["<none>:<none>"]
    rows = []
    for tag in tags:
        repo, _, name = tag.rpartition(":")
        if "/" in name:  # a registry port, no tag
            repo, name = tag, "<none>"
        size = int(summary.get("Size") or 0)
        rows.append(
            {
                "Containers": "N/A",
                "CreatedAt": go_time(created),
                "CreatedSince": human_duration(max(now - created, 0)) + " ago",
                "Digest": digests.get(repo, "<none>"),
                "ID": shown_id,
                "Repository": repo,
                "SharedSize": "N/A",
                "Size": human_size(size),
                "Tag": name,
                "UniqueSize": "N/A",
                "VirtualSize": human_size(size),
            }
        )
    return rows


def network_row(net: dict[str, Any], *, trunc: bool) -> dict[str, Any]:
    """One ``docker network ls`` row of a network in docker's shape."""
    joined, label = _labels(net.get("Labels"))
    created = dockershapes.epoch(net.get("Created"))
    return {
        "CreatedAt": go_time(created),
        "Driver": str(net.get("Driver") or ""),
        "ID": net["Id"][:12] if trunc else net["Id"],
        "IPv6": "true" if net.get("EnableIPv6") else "false",
        "Internal": "true" if net.get("Internal") else "false",
        "Label": label,
        "Labels": joined,
        "Name": str(net.get("Name") or ""),
        "Scope": str(net.get("Scope") or "local"),
    }


def render(fmt: str, rows: list[Any], header: dict[str, str] | None) -> str:
    """``rows`` through template ``fmt`` as docker's formatter does (a ``table`` has a header)."""
    return gotemplate.render_all(fmt, rows, header)
