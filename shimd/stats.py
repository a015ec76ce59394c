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
from dataclasses import dataclass, field
from typing import Any

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
    # The finer figures (``container.stats``' ``cpu_user_seconds`` and the rest, docs/api.md):
    # only those the cgroup has.
    detail: dict[str, Any] = field(default_factory=dict)


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


USER_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _limit(text: str | None, no_limit: int = V1_NO_LIMIT) -> int | None:
    """A limit file's number; None when absent; 0 for no limit (``max``, -1 or huge), as
    cAdvisor gives an unlimited figure."""
    if text is None:
        return None
    word = text.split()[0] if text.split() else ""
    if word == "max":
        return 0
    try:
        value = int(word)
    except ValueError:
        return None
    return 0 if value < 0 or value >= no_limit else value


def _put(out: dict[str, Any], key: str, value: float | None) -> None:
    if value is not None:
        out[key] = value


def _device_name(majmin: str, sys: str = "/sys/dev/block") -> str:
    """``/dev/<name>`` of block device ``major:minor``; ``major:minor`` itself if unknown."""
    for line in (_read(os.path.join(sys, majmin, "uevent")) or "").splitlines():
        if line.startswith("DEVNAME="):
            return "/dev/" + line.partition("=")[2]
    return majmin


def _io_v1(blkio: str) -> list[dict[str, Any]]:
    """Per device (``major:minor``) bytes and operations read and written, from blkio's
    ``io_service_bytes`` and ``io_serviced`` (the throttle ones: the CFQ ones stay empty on
    blk-mq)."""
    devices: dict[str, dict[str, Any]] = {}
    for name, unit in (("io_service_bytes", "bytes"), ("io_serviced", "ops")):
        text = _read(os.path.join(blkio, f"blkio.throttle.{name}")) or ""
        for line in text.splitlines():
            parts = line.split()
            if len(parts) != 3 or parts[1] not in ("Read", "Write"):
                continue
            dev = devices.setdefault(parts[0], {"device": parts[0], "name": _device_name(parts[0])})
            key = ("read_" if parts[1] == "Read" else "write_") + unit
            dev[key] = dev.get(key, 0) + int(parts[2])
    return list(devices.values())


def _io_v2(path: str) -> list[dict[str, Any]]:
    out = []
    for line in (_read(os.path.join(path, "io.stat")) or "").splitlines():
        dev, *pairs = line.split()
        kv = dict(p.split("=", 1) for p in pairs if "=" in p)
        try:
            out.append(
                {
                    "device": dev,
                    "name": _device_name(dev),
                    "read_bytes": int(kv.get("rbytes", 0)),
                    "write_bytes": int(kv.get("wbytes", 0)),
                    "read_ops": int(kv.get("rios", 0)),
                    "write_ops": int(kv.get("wios", 0)),
                }
            )
        except ValueError:
            continue
    return out


def _detail_v2(path: str, usage: int | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    cpu = _keyed(os.path.join(path, "cpu.stat"))
    for key, name in (("user_usec", "cpu_user_seconds"), ("system_usec", "cpu_system_seconds")):
        if key in cpu:
            out[name] = cpu[key] / 1e6
    _put(out, "cpu_cfs_periods", cpu.get("nr_periods"))
    _put(out, "cpu_cfs_throttled_periods", cpu.get("nr_throttled"))
    if "throttled_usec" in cpu:
        out["cpu_cfs_throttled_seconds"] = cpu["throttled_usec"] / 1e6
    cpu_max = (_read(os.path.join(path, "cpu.max")) or "").split()
    if len(cpu_max) == 2:
        out["cpu_quota"] = 0 if cpu_max[0] == "max" else int(cpu_max[0])
        out["cpu_period"] = int(cpu_max[1])
    weight = _read_int(os.path.join(path, "cpu.weight"))
    if weight is not None:  # runc's shares -> weight conversion, inverted
        out["cpu_shares"] = 2 + ((weight - 1) * 262142) // 9999
    mem = _keyed(os.path.join(path, "memory.stat"))
    for key, name in (
        ("file", "memory_cache"),
        ("anon", "memory_rss"),
        ("file_mapped", "memory_mapped_file"),
        ("kernel", "memory_kernel"),
        ("pgfault", "memory_pgfault"),
        ("pgmajfault", "memory_pgmajfault"),
    ):
        _put(out, name, mem.get(key))
    _put(out, "memory_swap", _read_int(os.path.join(path, "memory.swap.current")))
    _put(out, "memory_max_usage", _read_int(os.path.join(path, "memory.peak")))
    events = _keyed(os.path.join(path, "memory.events"))
    _put(out, "memory_failcnt", events.get("max"))
    _put(out, "oom_events", events.get("oom_kill"))
    _put(out, "memory_swap_limit", _limit(_read(os.path.join(path, "memory.swap.max"))))
    _put(out, "pids_limit", _limit(_read(os.path.join(path, "pids.max"))))
    out["io"] = _io_v2(path)
    return out


def _detail_v1(root: str, rel: str, usage: int | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for controller in ("cpuacct", "cpu,cpuacct", "cpuacct,cpu"):
        ticks = _keyed(os.path.join(root, controller, rel, "cpuacct.stat"))
        if ticks:
            _put(out, "cpu_user_seconds", ticks.get("user", 0) / USER_HZ)
            _put(out, "cpu_system_seconds", ticks.get("system", 0) / USER_HZ)
            break
    for controller in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        cpu = os.path.join(root, controller, rel)
        period = _read_int(os.path.join(cpu, "cpu.cfs_period_us"))
        if period is None:
            continue
        out["cpu_period"] = period
        quota = _read_int(os.path.join(cpu, "cpu.cfs_quota_us"))
        _put(out, "cpu_quota", None if quota is None else max(quota, 0))
        _put(out, "cpu_shares", _read_int(os.path.join(cpu, "cpu.shares")))
        stat = _keyed(os.path.join(cpu, "cpu.stat"))
        _put(out, "cpu_cfs_periods", stat.get("nr_periods"))
        _put(out, "cpu_cfs_throttled_periods", stat.get("nr_throttled"))
        if "throttled_time" in stat:
            out["cpu_cfs_throttled_seconds"] = stat["throttled_time"] / 1e9
        break
    memory = os.path.join(root, "memory", rel)
    mem = _keyed(os.path.join(memory, "memory.stat"))
    for key, name in (
        ("total_cache", "memory_cache"),
        ("total_rss", "memory_rss"),
        ("total_mapped_file", "memory_mapped_file"),
        ("total_pgfault", "memory_pgfault"),
        ("total_pgmajfault", "memory_pgmajfault"),
    ):
        _put(out, name, mem.get(key))
    _put(out, "memory_kernel", _read_int(os.path.join(memory, "memory.kmem.usage_in_bytes")))
    memsw = _read_int(os.path.join(memory, "memory.memsw.usage_in_bytes"))
    if memsw is not None and usage is not None:  # as cAdvisor counts v1's swap
        out["memory_swap"] = max(memsw - usage, 0)
    elif "total_swap" in mem:
        out["memory_swap"] = mem["total_swap"]
    _put(out, "memory_max_usage", _read_int(os.path.join(memory, "memory.max_usage_in_bytes")))
    _put(out, "memory_failcnt", _read_int(os.path.join(memory, "memory.failcnt")))
    _put(out, "oom_events", _keyed(os.path.join(memory, "memory.oom_control")).get("oom_kill"))
    _put(out, "memory_swap_limit", _limit(_read(os.path.join(memory, "memory.memsw.limit_in_bytes"))))
    _put(out, "pids_limit", _limit(_read(os.path.join(root, "pids", rel, "pids.max"))))
    out["io"] = _io_v1(os.path.join(root, "blkio", rel))
    return out


def read_procs(pids: list[int], proc: str = "/proc") -> dict[str, int]:
    """The open file descriptors, sockets among them, and threads of the processes ``pids`` (a
    process gone meanwhile is left out)."""
    fds = sockets = threads = 0
    for pid in pids:
        base = os.path.join(proc, str(pid))
        try:
            names = os.listdir(os.path.join(base, "fd"))
        except OSError:
            continue
        fds += len(names)
        for name in names:
            try:
                if os.readlink(os.path.join(base, "fd", name)).startswith("socket:"):
                    sockets += 1
            except OSError:
                continue
        for line in (_read(os.path.join(base, "status")) or "").splitlines():
            if line.startswith("Threads:"):
                threads += int(line.split()[1])
                break
    return {"file_descriptors": fds, "sockets": sockets, "threads": threads}


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
        detail=_detail_v2(path, usage),
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
        detail=_detail_v1(root, rel, usage),
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
