"""A container's finer cgroup limits (the CRI's LinuxContainerResources): CPU shares, CFS quota
and period, cpusets, memory + swap, PID 1's OOM score adjustment and cgroup v2's ``unified``
map. :func:`check` reads them (at create and at ``container.update``), :func:`resources` makes
the OCI ``linux.resources`` of a container's settings (its spec, and what ``runc update -r``
applies).

Hugepage limits are not taken: this host's cgroup v1 has no hugetlb controller to apply them
with (kubelet sends them for every page size, limit 0 when none is asked; tug-cri drops them).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from tugwire.errors import InvalidArgument

CPU_PERIOD = 100_000  # µs: the period of ``cpus`` (docker's)
MIN_SHARES, MAX_SHARES = 2, 262_144  # what cgroup v1's cpu.shares takes
MIN_PERIOD, MAX_PERIOD = 1_000, 1_000_000  # µs, the kernel's bounds of cfs_period_us
MIN_QUOTA = 1_000  # µs
CAP_SYS_RESOURCE = 24
_CPU_LIST = re.compile(r"^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$")


@dataclass(frozen=True)
class LimitsRequest:
    """The finer limits of ``container.create`` and ``container.update`` as a front door read
    them (types checked there); None leaves one unset (create) or as it is (update)."""

    cpu_shares: int | None = None
    cpu_quota: int | None = None
    cpu_period: int | None = None
    cpuset_cpus: str | None = None
    cpuset_mems: str | None = None
    memory_swap: int | None = None
    oom_score_adj: int | None = None
    unified: dict[str, str] | None = None

    def given(self) -> bool:
        return any(getattr(self, name) is not None for name in self.__dataclass_fields__)


def check(req: LimitsRequest, memory: int | None) -> dict[str, Any]:
    """The request's values, checked (InvalidArgument otherwise): only those given. ``memory``
    is the memory limit the swap limit goes with. The OOM score adjustment is raised to tugd's
    own when tugd may not lower it (no CAP_SYS_RESOURCE: runc would fail)."""
    out: dict[str, Any] = {}
    if req.cpu_shares is not None:
        if not MIN_SHARES <= req.cpu_shares <= MAX_SHARES:
            raise InvalidArgument(
                f"cpu_shares {req.cpu_shares} is out of range ({MIN_SHARES} to {MAX_SHARES})",
                field="cpu_shares",
            )
        out["cpu_shares"] = req.cpu_shares
    if req.cpu_period is not None:
        if not MIN_PERIOD <= req.cpu_period <= MAX_PERIOD:
            raise InvalidArgument(
                f"cpu_period {req.cpu_period} is out of range ({MIN_PERIOD} to {MAX_PERIOD} µs)",
                field="cpu_period",
            )
        out["cpu_period"] = req.cpu_period
    if req.cpu_quota is not None:
        if req.cpu_quota != -1 and req.cpu_quota < MIN_QUOTA:
            raise InvalidArgument(
                f"cpu_quota {req.cpu_quota} is too small (at least {MIN_QUOTA} µs, or -1: none)",
                field="cpu_quota",
            )
        out["cpu_quota"] = req.cpu_quota
    ncpu = os.cpu_count() or 1
    for name, value, top in (
        ("cpuset_cpus", req.cpuset_cpus, ncpu),
        ("cpuset_mems", req.cpuset_mems, _nodes()),
    ):
        if value is None:
            continue
        if value and (not _CPU_LIST.match(value) or max(_members(value)) >= top):
            raise InvalidArgument(
                f"{name} {value!r} is not a list of {name[7:]} of this host (0 to {top - 1})", field=name
            )
        out[name] = value or None
    if req.memory_swap is not None:
        swap = req.memory_swap
        if swap != -1 and (swap <= 0 or (memory is not None and swap < memory)):
            raise InvalidArgument(
                "memory_swap must be -1 (no limit) or at least the memory limit", field="memory_swap"
            )
        if swap != -1 and memory is None:
            raise InvalidArgument("memory_swap needs a memory limit", field="memory_swap")
        out["memory_swap"] = swap
    if req.oom_score_adj is not None:
        if not -1000 <= req.oom_score_adj <= 1000:
            raise InvalidArgument(
                f"oom_score_adj {req.oom_score_adj} is out of range (-1000 to 1000)", field="oom_score_adj"
            )
        out["oom_score_adj"] = max(req.oom_score_adj, lowest_oom_score_adj())
    if req.unified is not None:
        if req.unified and not os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
            raise InvalidArgument("unified needs cgroup v2: this host has cgroup v1", field="unified")
        for key in req.unified:
            if not key or "/" in key or key.startswith("."):
                raise InvalidArgument(f"invalid cgroup file name {key!r}", field="unified")
        out["unified"] = dict(req.unified)
    return out


def _members(cpus: str) -> list[int]:
    out: list[int] = []
    for part in cpus.split(","):
        lo, _, hi = part.partition("-")
        out += range(int(lo), int(hi or lo) + 1)
    return out


def _nodes() -> int:
    try:
        with open("/sys/devices/system/node/online") as f:
            return max(_members(f.read().strip())) + 1
    except (OSError, ValueError):
        return 1


def lowest_oom_score_adj() -> int:
    """The lowest OOM score adjustment tugd can give: any (-1000) with CAP_SYS_RESOURCE, else
    its own (the kernel refuses lower)."""
    own = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:") and int(line.split()[1], 16) >> CAP_SYS_RESOURCE & 1:
                return -1000
    try:
        with open("/proc/self/oom_score_adj") as f:
            own = int(f.read().strip())
    except (OSError, ValueError):
        pass
    return own


def resources(settings: Any, *, update: bool = False) -> dict[str, Any]:
    """The OCI ``linux.resources`` of ``settings`` (a ContainerSettings), devices aside. For
    ``runc update`` (``update``), the memory's swap is unlimited unless one is set (the swap
    limit would otherwise stay below a raised memory limit)."""
    out: dict[str, Any] = {}
    memory: dict[str, Any] = {}
    if settings.memory:
        memory["limit"] = int(settings.memory)
        if settings.memory_swap:
            memory["swap"] = int(settings.memory_swap)
        elif update:
            memory["swap"] = -1
    if memory:
        out["memory"] = memory
    cpu: dict[str, Any] = {}
    if settings.cpu_quota is not None:
        cpu["quota"] = int(settings.cpu_quota)
        cpu["period"] = int(settings.cpu_period or CPU_PERIOD)
    elif settings.cpus:
        cpu["quota"] = int(float(settings.cpus) * CPU_PERIOD)
        cpu["period"] = CPU_PERIOD
    elif settings.cpu_period:
        cpu["period"] = int(settings.cpu_period)
    if settings.cpu_shares:
        cpu["shares"] = int(settings.cpu_shares)
    if settings.cpuset_cpus:
        cpu["cpus"] = settings.cpuset_cpus
    if settings.cpuset_mems:
        cpu["mems"] = settings.cpuset_mems
    if cpu:
        out["cpu"] = cpu
    if settings.pids_limit:
        out["pids"] = {"limit": int(settings.pids_limit)}
    if settings.unified:
        out["unified"] = dict(settings.unified)
    return out
