"""The host's side of networks: what this tugd owns there, which subnets are free, clean-up.

Several tugd may share a host (and Docker may too). Each tugd is an *instance*, named by a short
hash of its data root: its nftables table is ``tugboat-<instance>`` (no instance touches
another's), and every link it makes carries the alias ``tugboat <instance> <root>``, so a sweep
deletes only links of its own (a bridge whose network is gone, a veth of a dead container) and
never another instance's or Docker's.

Subnets are chosen as dockerd chooses them: from an ordered list of address pools (docker's
``default-address-pools``: 172.17-31.0.0/16, then 192.168.0.0/16 cut into /20s), the first that
overlaps neither a network of ours nor an address or route of the host (other bridges, docker0,
a VPN's routes, another tugd's bridges). Choosing and making the bridge happen under a host-wide
lock (:data:`LOCK_PATH`), so two tugd starting together never take the same subnet; the bridge is
made at once, so the next tugd sees the subnet as taken.

Everything here that touches the kernel blocks: the service runs it in a worker thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import os
import re
import subprocess
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tugwire.errors import AlreadyExists, InvalidArgument

if TYPE_CHECKING:
    from ..config import Config

LEGACY_TABLE = "tugboat"  # the one table every tugd shared before instances had their own
LOCK_PATH = "/run/lock/tugboat-subnets.lock"
MIN_ROUTE_PREFIX = 8  # wider routes (0.0.0.0/1 of a VPN's redirect-gateway) are default routes


def instance_id(root: str) -> str:
    """The instance's name: 8 hex digits of a hash of its data root's absolute path."""
    return hashlib.sha256(os.path.abspath(root).encode()).hexdigest()[:8]


def table_name(root: str) -> str:
    """The nftables table of the instance of ``root`` (in both the ``ip`` and ``ip6`` families)."""
    return f"tugboat-{instance_id(root)}"


def link_alias(root: str) -> str:
    """The alias (``IFLA_IFALIAS``) on every link the instance of ``root`` makes."""
    return f"tugboat {instance_id(root)} {os.path.abspath(root)}"[:255]


def owns_alias(alias: str | None, instance: str) -> bool:
    parts = (alias or "").split()
    return len(parts) >= 2 and parts[0] == "tugboat" and parts[1] == instance


# ------------------------------------------------------------------------------- the pools


@dataclass(frozen=True)
class AddressPool:
    """``base`` cut into subnets of prefix length ``size`` (docker's default-address-pools)."""

    base: str
    size: int

    def subnets(self) -> Iterator[ipaddress.IPv4Network]:
        return ipaddress.IPv4Network(self.base).subnets(new_prefix=self.size)

    def __str__(self) -> str:
        return f"base={self.base},size={self.size}"


DEFAULT_POOLS = (
    *(AddressPool(f"172.{i}.0.0/16", 16) for i in range(17, 32)),
    AddressPool("192.168.0.0/16", 20),
)


def parse_pool(text: str) -> AddressPool:
    """``base=CIDR,size=N`` (tugd's ``--default-address-pool``, docker's syntax)."""
    fields: dict[str, str] = {}
    for item in text.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep or key not in ("base", "size") or key in fields:
            raise InvalidArgument(f"address pool {text!r}: want base=CIDR,size=N")
        fields[key] = value.strip()
    if "base" not in fields:
        raise InvalidArgument(f"address pool {text!r}: want base=CIDR,size=N")
    try:
        base = ipaddress.IPv4Network(fields["base"])
    except ValueError:
        raise InvalidArgument(
            f"address pool {text!r}: base must be an IPv4 prefix without host bits, such as 10.10.0.0/16"
        ) from None
    size_s = fields.get("size", str(base.prefixlen))
    if not size_s.isdigit() or not base.prefixlen <= int(size_s) <= 30:
        raise InvalidArgument(f"address pool {text!r}: size must be within {base.prefixlen}-30")
    return AddressPool(str(base), int(size_s))


# ---------------------------------------------------------------------- the host's networks


@dataclass(frozen=True)
class HostNet:
    """A network the host already uses: an address's prefix, or a route."""

    net: ipaddress.IPv4Network
    ifname: str
    kind: str  # "address" or "route"

    def __str__(self) -> str:
        what = "route " if self.kind == "route" else ""
        return f"the host's {what}{self.net} on {self.ifname or 'no interface'}"


def host_networks(ours: Iterable[str]) -> list[HostNet]:
    """The IPv4 prefixes in use on this namespace's links other than ``ours`` (the bridges of
    our own networks): every address's prefix (a bridge that is down has no route, but its
    address still counts), then every route of every table but ``local`` that is narrower than
    a /8 and not the prefix route of one of those addresses. Blocking (netlink)."""
    from . import netlink

    skip = set(ours)
    out: list[HostNet] = []
    seen: set[ipaddress.IPv4Network] = set()
    for addr, plen, ifname in netlink.addresses():
        if ifname in skip or addr.startswith("127."):
            continue
        net = ipaddress.IPv4Network(f"{addr}/{plen}", strict=False)
        out.append(HostNet(net, ifname, "address"))
        seen.add(net)
    for dst, plen, ifname in netlink.routes():
        if ifname in skip or plen < MIN_ROUTE_PREFIX:
            continue
        net = ipaddress.IPv4Network(f"{dst}/{plen}", strict=False)
        if net not in seen and not net.subnet_of(ipaddress.IPv4Network("127.0.0.0/8")):
            out.append(HostNet(net, ifname, "route"))
            seen.add(net)
    return out


def clash(subnet: ipaddress.IPv4Network, host: Iterable[HostNet]) -> HostNet | None:
    """The first of the host's networks that ``subnet`` overlaps."""
    return next((h for h in host if h.net.overlaps(subnet)), None)


def pick_subnet(
    pools: Iterable[AddressPool], taken: Iterable[ipaddress.IPv4Network], host: list[HostNet]
) -> ipaddress.IPv4Network:
    """The first subnet of the pools, in order, that overlaps neither ``taken`` (our own
    networks) nor the host's networks."""
    taken = list(taken)
    pools = list(pools)
    for pool in pools:
        for cand in pool.subnets():
            if not any(t.overlaps(cand) for t in taken) and clash(cand, host) is None:
                return cand
    raise InvalidArgument(
        "no free subnet left in the address pools ("
        + "; ".join(str(p) for p in pools)
        + "): give --subnet, or more pools with tugd --default-address-pool",
        field="subnet",
    )


@contextlib.contextmanager
def subnet_lock(path: str = LOCK_PATH) -> Iterator[None]:
    """Held while a subnet is chosen and its bridge made: by every tugd on the host (an
    advisory flock; released by the kernel if the holder dies)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@dataclass
class Claim:
    """A bridge to make, with its subnet fixed (``subnet``) or to choose (``subnet`` None)."""

    bridge: str
    subnet: ipaddress.IPv4Network | None
    mtu: int
    alias: str
    gateway_of: Callable[[ipaddress.IPv4Network], str] = lambda net: str(next(net.hosts()))
    repick: bool = False  # a fixed subnet that overlaps the host is replaced (nothing uses it yet)
    fresh: bool = False  # a new network's: a link of that name on the host is someone else's


def claim(
    c: Claim, pools: Iterable[AddressPool], taken: list[ipaddress.IPv4Network], ours: set[str]
) -> ipaddress.IPv4Network:
    """Choose (or check) the subnet of ``c`` and make its bridge, under the host-wide lock;
    the subnet. A fixed subnet that overlaps the host is refused naming what it overlaps
    (InvalidArgument), unless ``repick``. Blocking."""
    from . import netlink

    with subnet_lock():
        if c.fresh and c.bridge in netlink.link_names(c.bridge):
            raise AlreadyExists(
                f"a link named {c.bridge} exists on the host already: create the network again"
            )
        host = host_networks(ours | {c.bridge})
        subnet = c.subnet
        if subnet is not None:
            other = clash(subnet, host)
            if other is not None and not c.repick:
                raise InvalidArgument(f"subnet {subnet} overlaps {other}", field="subnet")
            if other is not None:
                subnet = None
        if subnet is None:
            subnet = pick_subnet(pools, taken, host)
        netlink.ensure_bridge(
            c.bridge, c.gateway_of(subnet), subnet.prefixlen, c.mtu, route_localnet=True, alias=c.alias
        )
    return subnet


# ------------------------------------------------------------------------------ clean-up


def _nft(args: list[str]) -> subprocess.CompletedProcess[bytes]:
    from .nft import run

    return run(args)


def delete_tables(table: str) -> list[str]:
    """Delete the instance's tables (both families); the ones that were there."""
    listed = _nft(["list", "tables"]).stdout.decode(errors="replace").splitlines()
    return [
        f"nft table {family} {table}"
        for family in ("ip", "ip6")
        if f"table {family} {table}" in listed and _nft(["delete", "table", family, table]).returncode == 0
    ]


FORWARD_RE = re.compile(r"^\s*(?:ip daddr (\S+) )?.*?\b(tcp|udp) dport (\d+) dnat to", re.M)


def forwards_of_others(ours: str) -> list[tuple[str, str, int, str]]:
    """(table, host address or "", port, proto) of the published ports of every other tugd on
    the host (their ``tugboat-*`` tables, and an older tugd's shared one). Blocking."""
    out: list[tuple[str, str, int, str]] = []
    listed = _nft(["list", "tables", "ip"])
    for line in listed.stdout.decode(errors="replace").splitlines():
        table = line.split()[-1] if line.startswith("table ip ") else ""
        if table == ours or not (table == LEGACY_TABLE or table.startswith("tugboat-")):
            continue
        chain = _nft(["list", "chain", "ip", table, "prerouting"]).stdout.decode(errors="replace")
        out.extend((table, m[1] or "", int(m[3]), m[2]) for m in FORWARD_RE.finditer(chain))
    return out


BRIDGE_RE = re.compile(r"\btb-[0-9a-f]{12}\b")


def drop_legacy_tables(ours: set[str]) -> list[str]:
    """The migration from one shared table: delete the ``tugboat`` tables an older tugd left,
    once none of the bridges their rules name is still on the host as someone else's (an
    older tugd still running would rebuild them anyway). Blocking."""
    from . import netlink

    listed = _nft(["list", "tables"]).stdout.decode(errors="replace").splitlines()
    present: set[str] | None = None
    gone = []
    for family in ("ip", "ip6"):
        if f"table {family} {LEGACY_TABLE}" not in listed:  # one nft run at each start, usually
            continue
        res = _nft(["list", "table", family, LEGACY_TABLE])
        if res.returncode != 0:
            continue
        if present is None:
            present = set(netlink.link_names("tb-"))
        named = set(BRIDGE_RE.findall(res.stdout.decode(errors="replace")))
        if (named & present) - ours:
            continue
        if _nft(["delete", "table", family, LEGACY_TABLE]).returncode == 0:
            gone.append(f"nft table {family} {LEGACY_TABLE}")
    return gone


def sweep_links(
    instance: str, bridges: set[str], keep_veths: set[str], keep_bridges: bool = True
) -> list[str]:
    """Delete this instance's links: veths (``tv*``) on one of ``bridges`` or with our alias,
    except ``keep_veths``; then bridges (``tb-*``) with our alias, and ``bridges`` themselves
    unless ``keep_bridges``. Links of others are never touched. The names deleted. Blocking."""
    from . import netlink

    gone = []
    links = netlink.links()
    for name, master, alias in links:
        ours = master in bridges or owns_alias(alias, instance)
        if name.startswith("tv") and name not in keep_veths and ours:
            netlink.delete_link(name)
            gone.append(name)
    for name, _master, alias in links:
        if not name.startswith("tb-"):
            continue
        mine = name in bridges
        if (mine and not keep_bridges) or (not mine and owns_alias(alias, instance)):
            netlink.delete_link(name)
            gone.append(name)
    return gone


def remove_all(instance: str, table: str, bridges: set[str], netns_dir: str, marker: str) -> list[str]:
    """Everything of the instance on the host: its namespace files, veths, bridges (``bridges``
    and any other with its alias) and nft tables, the legacy shared table if only it used it,
    and the marker saying a bridge was wired. What was removed. Blocking."""
    from . import netlink

    gone = []
    with contextlib.suppress(FileNotFoundError):
        for entry in sorted(os.listdir(netns_dir)):
            if not entry.startswith("."):
                netlink.delete_netns(os.path.join(netns_dir, entry))
                gone.append(f"netns {entry[:12]}")
    gone += sweep_links(instance, bridges, set(), keep_bridges=False)
    gone += delete_tables(table)
    gone += drop_legacy_tables(bridges)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(marker)
    return gone


def cleanup(cfg: Config) -> int:
    """``tugd --cleanup``: :func:`remove_all` for the instance of ``cfg.root``, which must have
    no container and no tugd running on it; prints what it removed. The exit status."""
    import sys

    from ..app import AlreadyRunning, lock_root

    def fail(message: str) -> int:
        print(f"tugd --cleanup: {message}", file=sys.stderr)
        return 1

    lock_fd = None
    bridges: set[str] = set()
    try:
        if os.path.isdir(cfg.root):
            try:
                lock_fd = lock_root(cfg)
            except AlreadyRunning:
                return fail(f"tugd is running on {cfg.root}: stop it first, or use `tug system reset`")
        if os.path.exists(cfg.db_path):
            from ..store import Store
            from .ipam import NetStore

            store = Store(cfg.db_path)
            try:
                names = [r.name for r in store.list_containers()]
                bridges = {n.bridge for n in NetStore(store.db).networks() if n.is_bridge}
                pods = (
                    store.db.execute(  # (supervisor/pods: their namespaces, infra processes)
                        "SELECT count(*) FROM sqlite_master WHERE name='pods'"
                    ).fetchone()[0]
                    and store.db.execute("SELECT count(*) FROM pods").fetchone()[0]
                )
            finally:
                store.close()
            if names:
                shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
                return fail(f"{len(names)} container(s) exist ({shown}): remove them first (tug rm -f)")
            if pods:
                return fail(f"{pods} pod(s) exist: remove them first (tug pod rm)")
        gone = remove_all(
            instance_id(cfg.root),
            table_name(cfg.root),
            bridges,
            os.path.join(cfg.state, "netns"),
            os.path.join(cfg.state, "network.active"),
        )
    finally:
        if lock_fd is not None:
            os.close(lock_fd)
    print(f"removed {len(gone)}: {', '.join(gone)}" if gone else "nothing to remove")
    return 0
