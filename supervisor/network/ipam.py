"""Networks and address allocations in the metadata store, and the pure parsing of what users give.

Two tables beside the containers table, in the same SQLite file: ``networks`` (one row per
network: its subnet, gateway, allocation range and bridge device) and ``endpoints`` (one row per
container per network: the address it was given). ``UNIQUE (network_id, ip)`` is what makes an
address impossible to hand out twice, across restarts of tugd too: the allocator reads the taken
addresses and the database refuses a duplicate. An endpoint is inserted in the same transaction as
its container and deleted in the same transaction as its removal, so a crash never leaks one.
"""

from __future__ import annotations

import ipaddress
import json
import re
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from tugwire.errors import AlreadyExists, InvalidArgument

SCHEMA = """
CREATE TABLE IF NOT EXISTS networks (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    driver TEXT NOT NULL,
    bridge TEXT NOT NULL,
    subnet TEXT NOT NULL,
    gateway TEXT NOT NULL,
    ip_range TEXT NOT NULL,
    mtu INTEGER NOT NULL,
    internal INTEGER NOT NULL DEFAULT 0,
    labels TEXT NOT NULL,
    created TEXT NOT NULL,
    subnet6 TEXT NOT NULL DEFAULT '',
    gateway6 TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS endpoints (
    network_id TEXT NOT NULL REFERENCES networks(id),
    container_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    ip TEXT NOT NULL,
    mac TEXT NOT NULL,
    aliases TEXT NOT NULL,
    ip6 TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (network_id, container_id),
    UNIQUE (network_id, ip),
    UNIQUE (container_id, idx)
);
CREATE UNIQUE INDEX IF NOT EXISTS endpoints_ip6 ON endpoints (network_id, ip6) WHERE ip6 != '';
"""

BRIDGE, HOST, NONE = "bridge", "host", "none"
DRIVERS = {BRIDGE: "bridge", HOST: "host", NONE: "null"}
DEFAULT_MTU = 1500
MAX_ENDPOINTS = 10  # per container: the host-side veth name has one digit for it
NETWORK_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}")
ALIAS_RE = re.compile(r"[a-zA-Z0-9]([a-zA-Z0-9_.-]{0,62})")


@dataclass
class NetworkRecord:
    id: str
    name: str
    driver: str  # bridge, host or null
    bridge: str  # the Linux bridge's name ("" for host and none)
    subnet: str
    gateway: str
    ip_range: str
    mtu: int = 0  # 0: the MTU of tugd's uplink, at most DEFAULT_MTU
    internal: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    created: str = ""
    subnet6: str = ""  # IPv6, optional: dual stack
    gateway6: str = ""

    @property
    def is_bridge(self) -> bool:
        return self.driver == "bridge"

    def row(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "driver": self.driver,
            "bridge": self.bridge,
            "subnet": self.subnet,
            "gateway": self.gateway,
            "ip_range": self.ip_range,
            "mtu": self.mtu,
            "internal": int(self.internal),
            "labels": json.dumps(self.labels),
            "created": self.created,
            "subnet6": self.subnet6,
            "gateway6": self.gateway6,
        }

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> NetworkRecord:
        d = dict(row)
        d["internal"] = bool(d["internal"])
        d["labels"] = json.loads(d["labels"])
        return cls(**d)


@dataclass
class Endpoint:
    network_id: str
    container_id: str
    idx: int  # eth<idx> in the container; the first (0) carries the default route
    ip: str
    mac: str
    aliases: list[str] = field(default_factory=list)
    ip6: str = ""

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Endpoint:
        d = dict(row)
        d["aliases"] = json.loads(d["aliases"])
        return cls(**d)


class NetStore:
    """The two tables, on the store's connection (so they share its transactions)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        db.executescript(SCHEMA)

    def insert_network(self, rec: NetworkRecord) -> None:
        row = rec.row()
        cols = ",".join(row)
        try:
            self.db.execute(f"INSERT INTO networks ({cols}) VALUES ({','.join(':' + c for c in row)})", row)
        except sqlite3.IntegrityError:
            raise AlreadyExists(f"network with name {rec.name} already exists", field="name") from None

    def set_subnet(self, nid: str, subnet: str, gateway: str) -> None:
        """Record a network's subnet and gateway (the default bridge's, chosen on first use)."""
        self.db.execute("UPDATE networks SET subnet=?, gateway=? WHERE id=?", (subnet, gateway, nid))

    def delete_network(self, nid: str) -> None:
        self.db.execute("DELETE FROM networks WHERE id=?", (nid,))

    def networks(self) -> list[NetworkRecord]:
        rows = self.db.execute("SELECT * FROM networks ORDER BY created, name").fetchall()
        return [NetworkRecord.from_row(r) for r in rows]

    def network(self, nid: str) -> NetworkRecord | None:
        row = self.db.execute("SELECT * FROM networks WHERE id=?", (nid,)).fetchone()
        return NetworkRecord.from_row(row) if row else None

    def find_networks(self, ref: str) -> list[NetworkRecord]:
        rows = self.db.execute(
            "SELECT * FROM networks WHERE name=? OR id=? OR (length(?) >= 3 AND substr(id,1,length(?))=?)",
            (ref, ref, ref, ref, ref),
        ).fetchall()
        return [NetworkRecord.from_row(r) for r in rows]

    def endpoints(self, *, network_id: str | None = None, container_id: str | None = None) -> list[Endpoint]:
        sql, args = "SELECT * FROM endpoints WHERE 1", []
        if network_id is not None:
            sql += " AND network_id=?"
            args.append(network_id)
        if container_id is not None:
            sql += " AND container_id=?"
            args.append(container_id)
        rows = self.db.execute(sql + " ORDER BY container_id, idx", args).fetchall()
        return [Endpoint.from_row(r) for r in rows]

    def taken_ips(self, network_id: str) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT ip FROM endpoints WHERE network_id=?", (network_id,))}

    def taken_ip6s(self, network_id: str) -> set[str]:
        rows = self.db.execute("SELECT ip6 FROM endpoints WHERE network_id=? AND ip6 != ''", (network_id,))
        return {r[0] for r in rows}

    def insert_endpoint(self, ep: Endpoint) -> None:
        try:
            self.db.execute(
                "INSERT INTO endpoints (network_id, container_id, idx, ip, mac, aliases, ip6) "
                "VALUES (?,?,?,?,?,?,?)",
                (ep.network_id, ep.container_id, ep.idx, ep.ip, ep.mac, json.dumps(ep.aliases), ep.ip6),
            )
        except sqlite3.IntegrityError as exc:
            if "endpoints.ip6" in str(exc):
                raise InvalidArgument(f"address {ep.ip6} is already in use", field="ip6") from None
            if "endpoints.ip" in str(exc):
                raise InvalidArgument(f"address {ep.ip} is already in use", field="ip") from None
            raise InvalidArgument(
                "the container is already connected to that network", field="network"
            ) from None

    def delete_endpoint(self, network_id: str, container_id: str) -> None:
        self.db.execute(
            "DELETE FROM endpoints WHERE network_id=? AND container_id=?", (network_id, container_id)
        )

    def delete_endpoints_of(self, container_id: str) -> None:
        self.db.execute("DELETE FROM endpoints WHERE container_id=?", (container_id,))

    def orphan_endpoints(self) -> list[str]:
        """Container ids with endpoints but no container (cannot happen: they share transactions;
        checked at start all the same)."""
        rows = self.db.execute(
            "SELECT DISTINCT container_id FROM endpoints "
            "WHERE container_id NOT IN (SELECT id FROM containers)"
        )
        return [r[0] for r in rows]


# ------------------------------------------------------------------------------------ parsing


def check_network_name(name: Any) -> str:
    if not isinstance(name, str) or NETWORK_NAME_RE.fullmatch(name) is None:
        raise InvalidArgument(
            f"invalid network name {name!r}: must match [a-zA-Z0-9][a-zA-Z0-9_.-]{{0,63}}", field="name"
        )
    return name


def parse_subnet(value: str, what: str = "subnet") -> ipaddress.IPv4Network:
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise InvalidArgument(
            f"invalid {what} {value!r}: want an address/prefix such as 10.1.0.0/24", field=what
        ) from None
    if not isinstance(net, ipaddress.IPv4Network):
        raise InvalidArgument(
            f"{what} {value}: an IPv6 prefix goes in subnet6 (a network always has an IPv4 subnet; "
            "IPv6 is an optional second stack)",
            field=what,
        )
    if str(net) != value.strip() and ipaddress.ip_interface(value).ip != net.network_address:
        raise InvalidArgument(
            f"invalid {what} {value!r}: host bits are set (did you mean {net}?)", field=what
        )
    if net.prefixlen > 30:
        raise InvalidArgument(f"{what} {value} is too small: at most /30", field=what)
    return net


def parse_subnet6(value: str, what: str = "subnet6") -> ipaddress.IPv6Network:
    try:
        net = ipaddress.ip_network(value, strict=True)
    except ValueError:
        raise InvalidArgument(
            f"invalid {what} {value!r}: want an IPv6 prefix such as fd00:1::/64 (no host bits)", field=what
        ) from None
    if not isinstance(net, ipaddress.IPv6Network):
        raise InvalidArgument(f"{what} {value} is not an IPv6 prefix", field=what)
    if net.prefixlen > 120:
        raise InvalidArgument(f"{what} {value} is too small: at most /120", field=what)
    return net


def parse_ip6(value: str, what: str = "ip6") -> ipaddress.IPv6Address:
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        raise InvalidArgument(f"invalid IPv6 address {value!r}", field=what) from None
    if not isinstance(addr, ipaddress.IPv6Address):
        raise InvalidArgument(f"{what} {value} is not an IPv6 address", field=what)
    return addr


def allocate6(subnet6: str, gateway6: str, taken: set[str], wanted: str | None = None) -> str:
    """The IPv6 twin of :func:`allocate`: ``wanted``, else the lowest free address after the
    gateway's (a /64 is never walked: the search stops at the first free one)."""
    net = ipaddress.IPv6Network(subnet6)
    reserved = {str(net.network_address), gateway6}
    if wanted is not None:
        addr = parse_ip6(wanted)
        if addr not in net:
            raise InvalidArgument(f"address {wanted} is not in the network's subnet {subnet6}", field="ip6")
        if str(addr) in reserved or str(addr) in taken:
            raise InvalidArgument(f"address {wanted} is reserved or already in use", field="ip6")
        return str(addr)
    for i in range(1, min(net.num_addresses, len(taken) + 3)):
        cand = str(net.network_address + i)
        if cand not in reserved and cand not in taken:
            return cand
    raise InvalidArgument(f"no address left in {subnet6}", field="network")


def parse_ip(value: str, what: str = "ip") -> ipaddress.IPv4Address:
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        raise InvalidArgument(f"invalid IP address {value!r}", field=what) from None
    if not isinstance(addr, ipaddress.IPv4Address):
        raise InvalidArgument(f"{what} {value}: want an IPv4 address here (IPv6: ip6)", field=what)
    return addr


def allocate(subnet: str, ip_range: str, gateway: str, taken: set[str], wanted: str | None = None) -> str:
    """An address of ``ip_range`` (within ``subnet``) that is neither the network's nor its
    broadcast nor the gateway nor taken: ``wanted`` if given (an error if it is not available),
    else the lowest free one."""
    net = ipaddress.ip_network(subnet)
    pool = ipaddress.ip_network(ip_range or subnet)
    reserved = {str(net.network_address), str(net.broadcast_address), gateway}
    if wanted is not None:
        addr = parse_ip(wanted)
        if addr not in net:
            raise InvalidArgument(f"address {wanted} is not in the network's subnet {subnet}", field="ip")
        if str(addr) in reserved:
            raise InvalidArgument(f"address {wanted} is reserved (network, broadcast or gateway)", field="ip")
        if str(addr) in taken:
            raise InvalidArgument(f"address {wanted} is already in use", field="ip")
        return str(addr)
    for cand in pool.hosts() if pool.prefixlen < 31 else pool:
        s = str(cand)
        if s not in reserved and s not in taken and cand in net:
            return s
    raise InvalidArgument(f"no address left in {ip_range or subnet}", field="network")


def veth_name(cid: str, idx: int) -> str:
    """The host side of a container's veth: ``tv<idx><12 hex>`` (15 bytes, IFNAMSIZ's limit)."""
    return f"tv{idx}{cid[:12]}"


def mac_for(ip: str) -> str:
    """A locally administered MAC from the address, as docker does (02:42:<the four bytes>)."""
    return "02:42:" + ":".join(f"{b:02x}" for b in ipaddress.ip_address(ip).packed)


def check_alias(alias: str) -> str:
    if ALIAS_RE.fullmatch(alias) is None:
        raise InvalidArgument(f"invalid network alias {alias!r}", field="aliases")
    return alias


@dataclass(frozen=True)
class Port:
    host_ip: str  # "" for every address
    host_port: int  # 0: tugd picks one at create
    container_port: int
    proto: str  # tcp or udp

    def to_json(self) -> dict[str, Any]:
        return {
            "host_ip": self.host_ip,
            "host_port": self.host_port,
            "container_port": self.container_port,
            "proto": self.proto,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Port:
        return cls(str(d["host_ip"]), int(d["host_port"]), int(d["container_port"]), str(d["proto"]))


def _port_number(text: str, spec: str, allow_zero: bool = False) -> int:
    if not text.isdigit() or not (0 if allow_zero else 1) <= int(text) <= 65535:
        raise InvalidArgument(f"invalid port {text!r} in {spec!r}: want 1-65535", field="ports")
    return int(text)


def parse_port(spec: str) -> Port:
    """``[IP:][HOSTPORT:]CONTAINERPORT[/tcp|udp]``; no host port: tugd picks one."""
    if not isinstance(spec, str) or not spec:
        raise InvalidArgument("a published port must be [IP:]HOSTPORT:CONTAINERPORT[/tcp|udp]", field="ports")
    body, _, proto = spec.partition("/")
    proto = proto or "tcp"
    if proto not in ("tcp", "udp"):
        raise InvalidArgument(f"invalid protocol {proto!r} in {spec!r}: tcp or udp", field="ports")
    parts = body.rsplit(":", 2)
    host_ip = ""
    if len(parts) == 3:
        host_ip = parts[0]
        if host_ip.startswith("[") or ":" in host_ip:
            raise InvalidArgument(
                f"{spec!r}: published ports are IPv4 only (no IPv6 host address)", field="ports"
            )
        if host_ip:
            host_ip = str(parse_ip(host_ip, "ports"))
            if host_ip == "0.0.0.0":
                host_ip = ""
        host_port = _port_number(parts[1], spec, allow_zero=True) if parts[1] else 0
    elif len(parts) == 2:
        host_port = _port_number(parts[0], spec, allow_zero=True) if parts[0] else 0
    else:
        host_port = 0
    return Port(host_ip, host_port, _port_number(parts[-1], spec), proto)


def exposed_ports(image_config: dict[str, Any]) -> list[Port]:
    """The image's ``ExposedPorts`` (``{"80/tcp": {}}``) as ports with a host port to pick."""
    out = []
    for key in sorted(image_config.get("ExposedPorts") or {}):
        num, _, proto = str(key).partition("/")
        if num.isdigit() and 1 <= int(num) <= 65535 and (proto or "tcp") in ("tcp", "udp"):
            out.append(Port("", 0, int(num), proto or "tcp"))
    return out


def parse_add_host(item: str) -> tuple[str, str]:
    """``NAME:IP`` (``--add-host``)."""
    name, sep, ip = item.partition(":")
    if not sep or not name or ALIAS_RE.fullmatch(name) is None:
        raise InvalidArgument(f"invalid --add-host {item!r}: want NAME:IP", field="add_hosts")
    try:
        addr = ipaddress.ip_address(ip.strip("[]"))
    except ValueError:
        raise InvalidArgument(
            f"invalid --add-host {item!r}: {ip!r} is not an IP address", field="add_hosts"
        ) from None
    return name, str(addr)


def parse_dns(item: str) -> str:
    try:
        return str(ipaddress.ip_address(item))
    except ValueError:
        raise InvalidArgument(f"invalid --dns {item!r}: want an IP address", field="dns") from None
