"""A pod's figures (``pod.stats``, the CRI's PodSandboxStats): the sum of its running
containers' cgroup samples (their shims read them), the pod's processes, and the network
devices of its pinned network namespace (``/proc/thread-self/net/dev`` read by a thread that
entered it)."""

from __future__ import annotations

import os
import time
from typing import Any

from ..network import netlink

DEFAULT_INTERFACE = "eth0"


def parse_net_dev(text: str) -> list[dict[str, Any]]:
    """``/proc/net/dev``: per device (loopback left out) its received and sent bytes, packets,
    errors and drops."""
    out = []
    for line in text.splitlines()[2:]:
        name, _, rest = line.partition(":")
        name = name.strip()
        fields = rest.split()
        if not name or name == "lo" or len(fields) < 12:
            continue
        out.append(
            {
                "name": name,
                "rx_bytes": int(fields[0]),
                "rx_packets": int(fields[1]),
                "rx_errors": int(fields[2]),
                "rx_dropped": int(fields[3]),
                "tx_bytes": int(fields[8]),
                "tx_packets": int(fields[9]),
                "tx_errors": int(fields[10]),
                "tx_dropped": int(fields[11]),
            }
        )
    return out


def net_dev(netns: str) -> list[dict[str, Any]]:
    """The devices of the network namespace bind-mounted at ``netns``; none if it is gone.
    Blocking: run in a worker thread."""
    if not netlink.is_netns(netns):
        return []

    def read() -> str:
        with open("/proc/thread-self/net/dev") as f:
            return f.read()

    try:
        return parse_net_dev(netlink.in_netns(netns, read))
    except OSError:
        return []


def writable_layer(upper: str) -> dict[str, Any]:
    """The container's writable layer (its overlay's upper directory): the bytes its files take
    on disk (blocks, as ``du`` counts them) and its inodes, and the size and inodes of the
    filesystem that holds it. Empty if it is gone. Blocking: run in a worker thread."""
    try:
        fs = os.statvfs(upper)
        dev = os.stat(upper).st_dev
    except OSError:
        return {}
    used = inodes = 0
    stack = [upper]
    while stack:
        top = stack.pop()
        try:
            entries = os.scandir(top)
        except OSError:
            continue
        with entries:
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                inodes += 1
                used += st.st_blocks * 512
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    return {
        "fs_device": f"{os.major(dev)}:{os.minor(dev)}",
        "fs_usage": used,
        "fs_inodes_used": inodes,
        "fs_limit": fs.f_blocks * fs.f_frsize,
        "fs_inodes_total": fs.f_files,
        "fs_inodes_free": fs.f_ffree,
    }


def summed(samples: list[dict[str, Any]], key: str) -> int | float | None:
    """The sum of ``key`` over the samples that have it; None if none has it."""
    found = [s[key] for s in samples if s.get(key) is not None]
    return sum(found) if found else None


def pod_figures(samples: list[dict[str, Any]], infra: int, netns: str | None) -> dict[str, Any]:
    """``pod.stats``'s figures of the containers' ``samples`` (``container.stats``), ``infra``
    processes of the pod's own and its network namespace's devices."""
    pids = summed(samples, "pids")
    interfaces = net_dev(netns) if netns else []
    return {
        "cpu_seconds": summed(samples, "cpu_seconds"),
        "memory_usage": summed(samples, "memory_usage"),
        "memory_working_set": summed(samples, "memory_working_set"),
        "process_count": int(pids or 0) + infra,
        "network": {
            "default_interface": DEFAULT_INTERFACE
            if any(i["name"] == DEFAULT_INTERFACE for i in interfaces)
            else "",
            "interfaces": interfaces,
        },
        "timestamp_ns": time.time_ns(),
    }


__all__ = ["net_dev", "parse_net_dev", "pod_figures", "writable_layer"]
