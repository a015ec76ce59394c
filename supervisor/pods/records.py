"""A pod's typed request and its record, and the ``pods`` table of the store."""

from __future__ import annotations

import json
import re
import sqlite3
from dataclasses import asdict, dataclass, field
from typing import Any

from tugwire.errors import AlreadyExists, InvalidArgument

SCHEMA = """
CREATE TABLE IF NOT EXISTS pods (
    id TEXT PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    created_ns INTEGER NOT NULL,
    config TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS pod_settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

CREATING, READY, NOTREADY = "creating", "ready", "notready"
STATES = (READY, NOTREADY)  # what a user sees; "creating" is a pod tugd is making (or died making)

# The namespace modes of the CRI's NamespaceOption: POD (the pod's own), CONTAINER (each
# container its own: PID only), NODE (the host's).
POD, CONTAINER, NODE = "pod", "container", "node"
HOSTNAME_RE = re.compile(r"[a-zA-Z0-9]([a-zA-Z0-9.-]{0,62})")


@dataclass(frozen=True)
class PortMapping:
    container_port: int
    host_port: int = 0  # 0: not published on the host (kubelet sends the pod's declared ports too)
    host_ip: str = ""
    protocol: str = "tcp"  # tcp, udp (sctp is refused)


@dataclass(frozen=True)
class DnsConfig:
    servers: list[str] = field(default_factory=list)
    searches: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PodCreateRequest:
    """``pod.create``: RunPodSandbox's config, as a front door reads it (types checked there)."""

    name: str
    namespace: str = ""
    uid: str = ""
    attempt: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    hostname: str = ""
    log_directory: str = ""
    dns: DnsConfig | None = None
    ports: list[PortMapping] = field(default_factory=list)
    cgroup_parent: str = ""
    network: str = POD  # pod or node
    pid: str = CONTAINER  # container, pod or node
    ipc: str = POD  # pod or node
    sysctls: dict[str, str] = field(default_factory=dict)  # set in the pod's namespaces


@dataclass
class PodRecord:
    id: str
    key: str  # name, namespace, uid, attempt: unique (kubelet's retries find theirs)
    state: str
    created_ns: int
    config: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.config["name"])

    def row(self) -> dict[str, Any]:
        d = asdict(self)
        d["config"] = json.dumps(self.config, sort_keys=True)
        return d

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> PodRecord:
        d = dict(row)
        d["config"] = json.loads(d["config"])
        return cls(**d)


def pod_key(req: PodCreateRequest) -> str:
    return json.dumps([req.name, req.namespace, req.uid, req.attempt])


def check(req: PodCreateRequest) -> None:
    """InvalidArgument for a request tugd cannot honour as asked."""
    if not req.name:
        raise InvalidArgument("a pod needs a name (metadata.name)", field="name")
    if req.attempt < 0:
        raise InvalidArgument("attempt must not be negative", field="attempt")
    if req.hostname and not HOSTNAME_RE.fullmatch(req.hostname):
        raise InvalidArgument(f"invalid hostname {req.hostname!r}", field="hostname")
    if req.network not in (POD, NODE):
        raise InvalidArgument(f"network namespace mode {req.network!r}: want pod or node", field="network")
    if req.ipc not in (POD, NODE):
        raise InvalidArgument(f"ipc namespace mode {req.ipc!r}: want pod or node", field="ipc")
    if req.pid not in (POD, CONTAINER, NODE):
        raise InvalidArgument(f"pid namespace mode {req.pid!r}: want container, pod or node", field="pid")
    if req.log_directory and not req.log_directory.startswith("/"):
        raise InvalidArgument("log_directory must be an absolute path", field="log_directory")
    for key, value in req.sysctls.items():
        ns = sysctl_namespace(key)
        if ns is None:
            raise InvalidArgument(f"sysctl {key!r} is not namespaced: a pod cannot set it", field="sysctls")
        if (ns == "net" and req.network != POD) or (ns == "ipc" and req.ipc != POD):
            raise InvalidArgument(f"sysctl {key!r} needs the pod's own {ns} namespace", field="sysctls")
        if not value or any(c in value for c in "\n\x00"):
            raise InvalidArgument(f"invalid value {value!r} of sysctl {key!r}", field="sysctls")
    for pm in req.ports:
        if pm.protocol not in ("tcp", "udp"):
            raise InvalidArgument(f"port protocol {pm.protocol!r}: tcp or udp", field="ports")
        if not 1 <= pm.container_port <= 65535 or not 0 <= pm.host_port <= 65535:
            raise InvalidArgument(f"invalid port mapping {pm}", field="ports")
        if pm.host_port and req.network == NODE and pm.host_port != pm.container_port:
            raise InvalidArgument("a host-network pod's host port must be its container port", field="ports")


IPC_SYSCTLS = (
    "kernel.shmmax",
    "kernel.shmall",
    "kernel.shmmni",
    "kernel.shm_rmid_forced",
    "kernel.msgmax",
    "kernel.msgmnb",
    "kernel.msgmni",
    "kernel.sem",
)


def sysctl_namespace(key: str) -> str | None:
    """The namespace a sysctl belongs to (``net``, ``ipc``), None if it is the host's."""
    if not re.fullmatch(r"[a-z0-9_]+([./][a-zA-Z0-9_-]+)+", key):
        return None
    key = key.replace("/", ".")
    if key.startswith("net."):
        return "net"
    if key in IPC_SYSCTLS or key.startswith("fs.mqueue."):
        return "ipc"
    return None


class PodStore:
    """The pods' tables, on the store's connection (so they share its transactions)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        db.executescript(SCHEMA)

    def insert(self, rec: PodRecord) -> None:
        try:
            self.db.execute(
                "INSERT INTO pods (id, key, state, created_ns, config) "
                "VALUES (:id, :key, :state, :created_ns, :config)",
                rec.row(),
            )
        except sqlite3.IntegrityError:
            raise AlreadyExists(
                f"a pod named {rec.name!r} with the same namespace, uid and attempt exists", field="name"
            ) from None

    def update(self, rec: PodRecord) -> None:
        self.db.execute("UPDATE pods SET state=:state, config=:config WHERE id=:id", rec.row())

    def delete(self, pid: str) -> None:
        self.db.execute("DELETE FROM pods WHERE id=?", (pid,))

    def get(self, pid: str) -> PodRecord | None:
        row = self.db.execute("SELECT * FROM pods WHERE id=?", (pid,)).fetchone()
        return PodRecord.from_row(row) if row else None

    def find(self, ref: str) -> list[PodRecord]:
        rows = self.db.execute(
            "SELECT * FROM pods WHERE id=? OR json_extract(config, '$.name')=? "
            "OR (length(?) >= 3 AND substr(id, 1, length(?))=?)",
            (ref, ref, ref, ref, ref),
        ).fetchall()
        return [PodRecord.from_row(r) for r in rows]

    def all(self) -> list[PodRecord]:
        return [PodRecord.from_row(r) for r in self.db.execute("SELECT * FROM pods ORDER BY created_ns")]

    def ids(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT id FROM pods")}

    def setting(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM pod_settings WHERE key=?", (key,)).fetchone()
        return str(row[0]) if row else None

    def set_setting(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO pod_settings (key, value) VALUES (?, ?)", (key, value))
