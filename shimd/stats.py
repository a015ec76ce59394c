"""One container's figures, read from its cgroup (v1 and v2) and its network namespace, written
in the Prometheus text format (version 0.0.4) by hand.

Every shim imports this module, so it imports nothing that the shim does not already have (no
``prometheus_client``: its import alone would be paid in every container). tugd merges the text of
all shims into its own ``/metrics`` (see ``supervisor/metrics.py``), so the families here must be
distinct from tugd's, and each appears with its ``# HELP`` and ``# TYPE`` once per shim.

Where the figures are:

- cgroup v2 (``<root>/<path>/cgroup.controllers`` exists): ``cpu.stat`` (``usage_usec``),
  ``memory.current``, ``memory.max`` (``max``: no limit), ``memory.stat`` (``inactive_file``),
  ``pids.current``.
- cgroup v1 (one hierarchy per controller, hybrid hosts included): ``cpuacct/<path>/cpuacct.usage``
  (ns), ``memory/<path>/memory.usage_in_bytes``, ``memory.limit_in_bytes`` (a huge number: no
  limit), ``memory.stat`` (``total_inactive_file``), ``pids/<path>/pids.current``.
- the working set is usage less inactive file pages, as cAdvisor and the kubelet count it: the
  memory the kernel cannot simply drop.
- network bytes by interface: ``/proc/<pid>/net/dev`` of the container's PID 1, which shows the
  devices of the container's own network namespace.

A figure that cannot be read (no such controller, the cgroup already gone) is left out, never
reported as 0.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

CGROUP_ROOT = "/sys/fs/cgroup"
# cgroup v1 reports "no limit" as PAGE_COUNTER_MAX pages: 9223372036854771712 with 4 KiB pages.
V1_NO_LIMIT = 1 << 62


@dataclass(frozen=True)
class CgroupStats:
    """What one cgroup says; None where it says nothing."""

    version: int
    cpu_seconds: float | None = None
    memory_usage: int | None = None
    memory_working_set: int | None = None
    memory_limit: int | None = None  # None: no limit
    pids: int | None = None


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except (FileNotFoundError, NotADirectoryError, PermissionError, ProcessLookupError):
        return None


def _read_int(path: str) -> int | None:
    text = _read(path)
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


def _keyed(path: str) -> dict[str, int]:
    """A flat-keyed file (``memory.stat``, ``cpu.stat``): ``name value`` per line."""
    out: dict[str, int] = {}
    text = _read(path)
    if text is None:
        return out
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        try:
            out[name] = int(value)
        except ValueError:
            continue
    return out


def _working_set(usage: int | None, inactive_file: int | None) -> int | None:
    if usage is None:
        return None
    return max(usage - (inactive_file or 0), 0)


def read_cgroup(cgroup_path: str, root: str = CGROUP_ROOT) -> CgroupStats:
    """The figures of the cgroup at ``cgroup_path`` (as in the OCI spec, ``/tugboat/<id>``) under
    the cgroup mount ``root``; v2 when the unified hierarchy holds the cgroup, else v1."""
    rel = cgroup_path.strip("/")
    unified = os.path.join(root, rel)
    if os.path.exists(os.path.join(unified, "cgroup.controllers")):
        return _read_v2(unified)
    return _read_v1(root, rel)


def _read_v2(path: str) -> CgroupStats:
    cpu = _keyed(os.path.join(path, "cpu.stat")).get("usage_usec")
    usage = _read_int(os.path.join(path, "memory.current"))
    limit_text = _read(os.path.join(path, "memory.max"))
    limit = None
    if limit_text is not None and limit_text.strip() != "max":
        try:
            limit = int(limit_text.strip())
        except ValueError:
            limit = None
    inactive = _keyed(os.path.join(path, "memory.stat")).get("inactive_file")
    return CgroupStats(
        version=2,
        cpu_seconds=None if cpu is None else cpu / 1e6,
        memory_usage=usage,
        memory_working_set=_working_set(usage, inactive),
        memory_limit=limit,
        pids=_read_int(os.path.join(path, "pids.current")),
    )


def _read_v1(root: str, rel: str) -> CgroupStats:
    cpu_ns = None
    # cpuacct is its own mount on some hosts and shares one with cpu ("cpu,cpuacct") on others.
    for controller in ("cpuacct", "cpu,cpuacct", "cpuacct,cpu"):
        cpu_ns = _read_int(os.path.join(root, controller, rel, "cpuacct.usage"))
        if cpu_ns is not None:
            break
    memory = os.path.join(root, "memory", rel)
    usage = _read_int(os.path.join(memory, "memory.usage_in_bytes"))
    limit = _read_int(os.path.join(memory, "memory.limit_in_bytes"))
    if limit is not None and limit >= V1_NO_LIMIT:
        limit = None
    stat = _keyed(os.path.join(memory, "memory.stat"))
    inactive = stat.get("total_inactive_file", stat.get("inactive_file"))
    return CgroupStats(
        version=1,
        cpu_seconds=None if cpu_ns is None else cpu_ns / 1e9,
        memory_usage=usage,
        memory_working_set=_working_set(usage, inactive),
        memory_limit=limit,
        pids=_read_int(os.path.join(root, "pids", rel, "pids.current")),
    )


def read_net(pid: int, proc: str = "/proc") -> list[tuple[str, int, int]]:
    """``(interface, received bytes, transmitted bytes)`` for each device of the network
    namespace that ``pid`` is in. The caller must know that ``pid`` is still the container's (the
    shim reads it only before it has reaped PID 1)."""
    text = _read(os.path.join(proc, str(pid), "net", "dev"))
    if text is None:
        return []
    out = []
    for line in text.splitlines()[2:]:
        name, sep, rest = line.partition(":")
        fields = rest.split()
        if not sep or len(fields) < 9:
            continue
        try:
            out.append((name.strip(), int(fields[0]), int(fields[8])))
        except ValueError:
            continue
    return out


# ------------------------------------------------------------------------------------ exposition

# (name, type, help): every family a shim may report, in the order it reports them.
FAMILIES = {
    "cpu": (
        "tugboat_container_cpu_seconds_total",
        "counter",
        "CPU time the container's processes used (user and system), in seconds.",
    ),
    "mem": (
        "tugboat_container_memory_usage_bytes",
        "gauge",
        "Memory the container's cgroup is charged for, page cache included, in bytes.",
    ),
    "ws": (
        "tugboat_container_memory_working_set_bytes",
        "gauge",
        "The container's memory usage less inactive file pages (what cannot simply be dropped), in bytes.",
    ),
    "limit": (
        "tugboat_container_memory_limit_bytes",
        "gauge",
        "The container's memory limit in bytes; absent when the container has no limit.",
    ),
    "pids": ("tugboat_container_pids", "gauge", "Processes and threads in the container."),
    "log": (
        "tugboat_container_log_bytes_total",
        "counter",
        "Bytes the container wrote to its stdout or stderr (stream), as the shim read them.",
    ),
    "dropped": (
        "tugboat_container_log_dropped_bytes_total",
        "counter",
        "Bytes of the container's output that could not be written to its log (disk full).",
    ),
    "rx": (
        "tugboat_container_network_receive_bytes_total",
        "counter",
        "Bytes received on each network interface of the container's network namespace.",
    ),
    "tx": (
        "tugboat_container_network_transmit_bytes_total",
        "counter",
        "Bytes transmitted on each network interface of the container's network namespace.",
    ),
}


def escape(value: str) -> str:
    """A label value as the text format wants it: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def labels(**pairs: str) -> str:
    """``k="v",...`` for the labels every sample of a container carries."""
    return ",".join(f'{k}="{escape(v)}"' for k, v in pairs.items())


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


def render(
    base_labels: str,
    cgroup: CgroupStats | None,
    log_bytes: dict[str, int],
    log_dropped: int | None,
    net: list[tuple[str, int, int]],
) -> str:
    """The container's figures in the text format: ``# HELP`` and ``# TYPE`` then the samples of
    each family that has any. ``base_labels`` comes from :func:`labels`."""
    samples: dict[str, list[str]] = {}

    def add(key: str, value: float | None, extra: str = "") -> None:
        if value is None:
            return
        lbl = base_labels + ("," + extra if extra else "")
        samples.setdefault(key, []).append(f"{FAMILIES[key][0]}{{{lbl}}} {_number(value)}")

    if cgroup is not None:
        add("cpu", cgroup.cpu_seconds)
        add("mem", cgroup.memory_usage)
        add("ws", cgroup.memory_working_set)
        add("limit", cgroup.memory_limit)
        add("pids", cgroup.pids)
    for stream in sorted(log_bytes):
        add("log", log_bytes[stream], f'stream="{escape(stream)}"')
    add("dropped", log_dropped)
    for iface, rx, tx in net:
        add("rx", rx, f'interface="{escape(iface)}"')
        add("tx", tx, f'interface="{escape(iface)}"')
    out = []
    for key, (name, kind, help_text) in FAMILIES.items():
        if key in samples:
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")
            out.extend(samples[key])
    return "\n".join(out) + "\n" if out else ""
