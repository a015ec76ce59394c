"""A container's typed records, below the store and the containers service: its
:class:`ContainerSettings` (the user's settings, and what create resolved from them) and apart
from them its :class:`RunState` (its :class:`State`, pid, exit, times, restarts).

The settings are frozen: they change only as a whole (``dataclasses.replace``), by create, by the
allocation of host ports and by ``container.update``. The store keeps them as the JSON object of
the ``config`` column, in the format tugd has always written; :meth:`ContainerSettings.from_json`
reads any row a former tugd wrote (a key it does not know is kept, a missing one defaults).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields
from typing import Any


class State(enum.StrEnum):
    """A container's state, as the store keeps it and clients see it."""

    CREATED = "created"  # made, never started
    RUNNING = "running"
    PAUSED = "paused"  # frozen (the cgroup freezer)
    EXITED = "exited"  # PID 1 exited; its exit record is kept
    UNKNOWN = "unknown"  # the shim went away without an exit record: the exit code is not known


@dataclass(slots=True)
class RunState:
    """A container's runtime state: what its lifecycle changes (the settings stay)."""

    state: State
    pid: int = 0  # PID 1's, on the host, while it runs
    exit_code: int | None = None
    exit_signal: str | None = None
    oom_killed: bool = False
    started_at: str | None = None
    finished_at: str | None = None
    reason: str = ""  # why it is unknown, or why a restart failed
    shim_pid: int = 0
    restart_count: int = 0  # restarts by the policy since the user last started it
    stopped_by_user: bool = False  # the restart policy leaves it alone
    log_dropped_bytes: int = 0  # output its log could not keep in its last run


@dataclass(frozen=True, slots=True)
class ContainerSettings:
    """The user's settings of a container, checked (``containers.options.parse_create``), with
    what create resolved: the name, the image's stop signal, health check and labels, the
    network's options and the command that runs. Names as in docs/api.md; the nested values
    (volumes, security, health, ports) are the JSON objects the store and ``inspect`` show."""

    image: str = ""
    name: str | None = None
    cmd: list[str] = field(default_factory=list)
    entrypoint: list[str] | None = None  # None: the image's (and not stored)
    env: list[str] = field(default_factory=list)
    workdir: str | None = None
    user: str | None = None
    hostname: str | None = None
    volumes: list[dict[str, Any]] = field(default_factory=list)  # source, destination, readonly
    read_only: bool = False
    tty: bool = False  # PID 1 on a terminal the shim holds (run -t)
    stdin: bool = False  # PID 1's stdin open for attach (run -i)
    memory: int | None = None
    cpus: float | None = None
    pids_limit: int | None = None
    # The CRI's finer limits (supervisor/limits.py): cpu_quota/cpu_period, when set, win over cpus.
    cpu_shares: int | None = None
    cpu_quota: int | None = None  # µs per cpu_period; -1: no limit
    cpu_period: int | None = None  # µs
    cpuset_cpus: str | None = None
    cpuset_mems: str | None = None
    memory_swap: int | None = None  # memory + swap, bytes; -1: no limit
    oom_score_adj: int | None = None  # PID 1's, as applied (never below tugd's own)
    unified: dict[str, str] = field(default_factory=dict)  # cgroup v2 files -> values
    auto_remove: bool = False
    stop_signal: str | None = None  # None: the image's StopSignal, else SIGTERM (see create)
    restart: str | None = None  # the restart policy, as policy.parse reads it
    init: bool = False
    security: dict[str, Any] | None = None  # security.parse's
    stop_timeout: int = 10
    log_max_size: int | None = None
    log_max_files: int | None = None
    metrics_address: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    # The CRI's (containers.options.parse_cri on main, issue 16): set for every container.
    pod_id: str | None = None  # the pod it belongs to: recorded, a filter of container.list
    namespaces: dict[str, str] = field(default_factory=dict)  # kind -> a namespace file or "host"
    cgroup_parent: str | None = None  # the cgroup (as in the OCI spec) its own goes under
    annotations: dict[str, str] = field(default_factory=dict)  # kept exactly; the spec's too
    log_path: str | None = None  # where the shim writes its CRI log (no rotation of tugd's)
    supplemental_groups: list[int] = field(default_factory=list)
    # The CRI's SupplementalGroupsPolicy: "merge" (the image's /etc/group memberships too) or
    # "strict" (only the primary and the given groups); None: docker's rules.
    supplemental_groups_policy: str | None = None
    # PID 1's identity as create resolved it: {"uid", "gid", "additional_gids"}.
    process_user: dict[str, Any] | None = None
    sysctls: dict[str, str] = field(default_factory=dict)
    health: dict[str, Any] | None = None  # health.parse's; None: no health check
    network: str | None = None  # a network's name, "host" or "none"
    ip: str | None = None
    ip6: str | None = None
    network_aliases: list[str] = field(default_factory=list)
    dns: list[str] = field(default_factory=list)
    add_hosts: list[list[str]] = field(default_factory=list)  # [name, ip]
    ports: list[dict[str, Any]] = field(default_factory=list)  # Port.to_json's, host ports set
    args: list[str] | None = None  # what runs (the image's Entrypoint and Cmd resolved), not tini
    extra: dict[str, Any] = field(default_factory=dict)  # keys of a row this tugd does not know
    # Keys the row read had not (an earlier tugd's): written back only if no longer the default.
    absent: frozenset[str] = field(default=frozenset(), compare=False)

    def to_json(self) -> dict[str, Any]:
        """The settings as the store keeps them (and ``container.inspect`` shows them)."""
        out: dict[str, Any] = {}
        for name in _NAMES:
            value = getattr(self, name)
            if name == "entrypoint" and value is None:
                continue  # absent: the image's
            if name in self.absent and value == _DEFAULTS[name]:
                continue  # as the row had it
            out[name] = value
        out.update(self.extra)
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ContainerSettings:
        """Settings as a tugd of any version stored them: a key missing takes its default, a key
        not known here is kept in ``extra`` (and written back as it was)."""
        if _NAME_SET.issuperset(d):  # as this tugd writes them: every key known
            known, extra = d, {}
        else:
            known = {k: v for k, v in d.items() if k in _NAME_SET}
            extra = {k: v for k, v in d.items() if k not in _NAME_SET}
        nulls = [k for k in _NOT_NULL if k in known and known[k] is None]
        if nulls:  # null where a default is meant (a value is never null in these)
            known = {k: v for k, v in known.items() if k not in nulls}
        return cls(**known, extra=extra, absent=_NAME_SET.difference(d))


_NAMES = [f.name for f in fields(ContainerSettings) if f.name not in ("extra", "absent")]
_DEFAULTS: dict[str, Any] = {name: getattr(ContainerSettings(), name) for name in _NAMES}
_NAME_SET = frozenset(_NAMES)
_NOT_NULL = (
    "cmd",
    "env",
    "volumes",
    "network_aliases",
    "dns",
    "add_hosts",
    "ports",
    "labels",
    "stop_timeout",
    "namespaces",
    "annotations",
    "supplemental_groups",
    "sysctls",
    "unified",
)
