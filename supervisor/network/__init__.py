"""Container networks: bridges with a subnet, a veth per container, addresses from a persisted
allocator, /etc/hosts kept current, published ports and outbound NAT with nftables.

The store is the truth (networks, endpoints, and each container's ports in its config); the
kernel's state (namespaces, links, the nft table) is derived from it and rebuilt from it at
start (:meth:`Networks.reconcile`). See docs/design.md, "Networks".

``host`` and ``none`` are built-in networks without a device: ``host`` puts no network namespace
in the spec; ``none`` lets runc make an empty one (runc brings its loopback up). Only bridge
networks touch the kernel, and only once a container joins: a tugd whose containers all run on
``none`` never loads pyroute2 nor runs ``nft``.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
import random
import secrets
import socket
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import anyio

from tugwire import jsonrpc
from tugwire.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound

from ..failpoints import failpoint
from . import files, ipam, nft
from .ipam import BRIDGE, HOST, NONE, Endpoint, NetworkRecord, Port

if TYPE_CHECKING:
    from ..config import Config
    from ..events import EventBus
    from ..store import ContainerRecord, Store

log = logging.getLogger("tugboat.network")

BUILTIN = (BRIDGE, HOST, NONE)
EPHEMERAL = (32768, 60999)  # where -P and -p CONTAINERPORT pick host ports
ACTIVE_STATES = ("running", "paused", "unknown")  # whose namespaces a reconcile keeps


def _now() -> str:
    from ..images import now_rfc3339

    return now_rfc3339()


class Networks:
    def __init__(self, cfg: Config, store: Store, bus: EventBus | None = None) -> None:
        self.cfg = cfg
        self.store = store
        self.bus = bus
        self.db = ipam.NetStore(store.db)
        self.lock = anyio.Lock()  # serialises kernel changes (bridges, the nft table)
        self.netns_dir = os.path.join(cfg.state, "netns")
        self.marker = os.path.join(cfg.state, "network.active")  # set once a bridge was wired
        self._wired: set[str] = set()  # containers whose namespace is set up (ports forwarded)
        self._uplink_mtu: int | None = None
        self._nft_bridges: set[str] = set()  # the bridges the applied nft table has rules for
        self.default = getattr(cfg, "default_network", BRIDGE) or BRIDGE
        self._ensure_builtin()

    # -------------------------------------------------------------------------- records

    def _ensure_builtin(self) -> None:
        have = {n.name for n in self.db.networks()}
        for name in BUILTIN:
            if name in have:
                continue
            nid = secrets.token_hex(32)
            subnet = gateway = bridge = ""
            if name == BRIDGE:
                subnet = self._free_subnet(ipam.DEFAULT_SUBNET)
                gateway = str(next(ipaddress.ip_network(subnet).hosts()))
                bridge = "tb-" + nid[:12]
            self.db.insert_network(
                NetworkRecord(
                    id=nid,
                    name=name,
                    driver=ipam.DRIVERS[name],
                    bridge=bridge,
                    subnet=subnet,
                    gateway=gateway,
                    ip_range="",
                    created=_now(),
                )
            )
        if self.default not in BUILTIN and not self.db.find_networks(self.default):
            raise InvalidArgument(f"--default-network {self.default}: no such network")

    def _free_subnet(self, first: str, host: list[ipaddress.IPv4Network] | None = None) -> str:
        """The first pool that overlaps neither another network nor an address of ``host``."""
        for cand in [first, *ipam.AUTO_POOLS]:
            net = ipaddress.IPv4Network(cand)
            if not self._overlapping(net) and not any(h.overlaps(net) for h in host or []):
                return cand
        raise InvalidArgument("no free subnet left in the default pools: give --subnet", field="subnet")

    def _overlapping(self, net: ipaddress.IPv4Network) -> NetworkRecord | None:
        for other in self.db.networks():
            if other.subnet and ipaddress.ip_network(other.subnet).overlaps(net):
                return other
        return None

    def get(self, ref: Any) -> NetworkRecord:
        if not isinstance(ref, str) or not ref:
            raise InvalidArgument("a network name or id is required", field="network")
        found = self.db.find_networks(ref)
        exact = [n for n in found if n.name == ref or n.id == ref]
        if exact:
            return exact[0]
        if not found:
            raise NotFound(f"network {ref} not found")
        if len(found) > 1:
            raise InvalidArgument(f"multiple networks match {ref!r}; give more of the id")
        return found[0]

    def _publish(self, action: str, net: NetworkRecord, **attributes: Any) -> None:
        if self.bus is not None:
            from ..events import Event

            self.bus.publish(
                Event("network", action, net.id, net.name, "", {"type": net.driver, **attributes})
            )

    # ------------------------------------------------------------------ network verbs (API)

    async def create(self, p: jsonrpc.Params) -> NetworkRecord:
        name = ipam.check_network_name(p.string("name", required=True))
        driver = p.string("driver") or "bridge"
        if driver != "bridge":
            raise InvalidArgument(f"driver {driver!r} is not supported: only bridge", field="driver")
        if self.db.find_networks(name) and any(n.name == name for n in self.db.find_networks(name)):
            raise AlreadyExists(f"network with name {name} already exists", field="name")
        subnet_s = p.string("subnet")
        host = await self._host_networks()
        if subnet_s:
            subnet = ipam.parse_subnet(subnet_s)
            clash = self._overlapping(subnet)
            if clash is not None:
                raise InvalidArgument(
                    f"subnet {subnet} overlaps with network {clash.name} ({clash.subnet})", field="subnet"
                )
            for h, ifname in host:
                if h.overlaps(subnet):
                    raise InvalidArgument(
                        f"subnet {subnet} overlaps the host's {h} on {ifname}", field="subnet"
                    )
        else:
            if p.string("gateway") or p.string("ip_range"):
                raise InvalidArgument("--gateway and --ip-range need --subnet", field="subnet")
            subnet = ipaddress.IPv4Network(self._free_subnet(ipam.AUTO_POOLS[0], [h for h, _ in host]))
        ip_range = ""
        if p.string("ip_range"):
            rng = ipam.parse_subnet(p.string("ip_range"), "ip_range")
            if not rng.subnet_of(subnet):
                raise InvalidArgument(f"ip range {rng} is not within subnet {subnet}", field="ip_range")
            ip_range = str(rng)
        gateway_s = p.string("gateway")
        if gateway_s:
            gw = ipam.parse_ip(gateway_s, "gateway")
            if gw not in subnet or gw in (subnet.network_address, subnet.broadcast_address):
                raise InvalidArgument(
                    f"gateway {gw} is not a host address of subnet {subnet}", field="gateway"
                )
            gateway = str(gw)
        else:
            gateway = str(next(subnet.hosts()))
        subnet6, gateway6 = self._parse_v6(p)
        mtu = p.integer("mtu") or 0  # 0: the uplink's (see _mtu)
        if mtu and not 576 <= mtu <= 9000:
            raise InvalidArgument("mtu must be within 576-9000", field="mtu")
        labels = p.dict_of_str("labels")
        nid = secrets.token_hex(32)
        rec = NetworkRecord(
            id=nid,
            name=name,
            driver="bridge",
            bridge="tb-" + nid[:12],
            subnet=str(subnet),
            gateway=gateway,
            ip_range=ip_range,
            mtu=mtu,
            internal=p.boolean("internal"),
            labels=labels,
            created=_now(),
            subnet6=subnet6,
            gateway6=gateway6,
        )
        self.db.insert_network(rec)  # AlreadyExists if the name was taken meanwhile
        self._publish("create", rec)
        return rec

    def _parse_v6(self, p: jsonrpc.Params) -> tuple[str, str]:
        """``subnet6`` and ``gateway6`` (IPv6 is optional: a dual-stack network)."""
        subnet6_s, gateway6_s = p.string("subnet6"), p.string("gateway6")
        if not subnet6_s:
            if gateway6_s or p.boolean("ipv6"):
                raise InvalidArgument(
                    "IPv6 needs an IPv6 subnet (subnet6, --subnet fd00:1::/64)", field="subnet6"
                )
            return "", ""
        net6 = ipam.parse_subnet6(subnet6_s)
        for other in self.db.networks():
            if other.subnet6 and ipaddress.IPv6Network(other.subnet6).overlaps(net6):
                raise InvalidArgument(
                    f"subnet {net6} overlaps with network {other.name} ({other.subnet6})", field="subnet6"
                )
        if gateway6_s:
            gw6 = ipam.parse_ip6(gateway6_s, "gateway6")
            if gw6 not in net6 or gw6 == net6.network_address:
                raise InvalidArgument(
                    f"gateway {gw6} is not a host address of subnet {net6}", field="gateway6"
                )
            return str(net6), str(gw6)
        return str(net6), str(net6.network_address + 1)

    async def _host_networks(self) -> list[tuple[ipaddress.IPv4Network, str]]:
        """The IPv4 networks of the addresses of tugd's namespace (not ours, not loopback): a
        network overlapping one would shadow it. (Loads pyroute2: a network is being made.)"""
        from . import netlink

        out = []
        for addr, plen, ifname in await anyio.to_thread.run_sync(netlink.addresses):
            if not ifname.startswith("tb-") and not addr.startswith("127."):
                out.append((ipaddress.IPv4Network(f"{addr}/{plen}", strict=False), ifname))
        return out

    def describe(
        self, net: NetworkRecord, containers: dict[str, ContainerRecord] | None = None
    ) -> dict[str, Any]:
        eps = self.db.endpoints(network_id=net.id)
        out_eps = {}
        for ep in eps:
            rec = (containers or {}).get(ep.container_id) or self.store.get_container(ep.container_id)
            out_eps[ep.container_id] = {
                "name": rec.name if rec else "",
                "ip": ep.ip,
                "prefixlen": ipaddress.ip_network(net.subnet).prefixlen if net.subnet else 0,
                "ip6": ep.ip6,
                "mac": ep.mac,
                "aliases": ep.aliases,
                "interface": f"eth{ep.idx}",
            }
        return {
            "id": net.id,
            "name": net.name,
            "driver": net.driver,
            "bridge": net.bridge,
            "subnet": net.subnet,
            "gateway": net.gateway,
            "ip_range": net.ip_range,
            "subnet6": net.subnet6,
            "gateway6": net.gateway6,
            "mtu": (net.mtu or "auto") if net.driver == "bridge" else None,
            "internal": net.internal,
            "labels": net.labels,
            "created": net.created,
            "builtin": net.name in BUILTIN,
            "containers": out_eps,
        }

    def list_all(self) -> list[dict[str, Any]]:
        return [self.describe(n) for n in self.db.networks()]

    async def remove(self, ref: Any) -> NetworkRecord:
        net = self.get(ref)
        if net.name in BUILTIN:
            raise FailedPrecondition(f"{net.name} is a pre-defined network and cannot be removed")
        users = self.db.endpoints(network_id=net.id)
        if users:
            names = [r.name for ep in users if (r := self.store.get_container(ep.container_id))]
            raise FailedPrecondition(
                f"error while removing network {net.name}: network has active endpoints ({', '.join(names)})"
            )
        async with self.lock:
            self.db.delete_network(net.id)
            if os.path.exists(self.marker):
                from . import netlink

                await anyio.to_thread.run_sync(netlink.delete_link, net.bridge)
                await self._apply_nft()
        self._publish("destroy", net)
        return net

    async def prune(self) -> list[str]:
        removed = []
        for net in self.db.networks():
            if net.name not in BUILTIN and not self.db.endpoints(network_id=net.id):
                with contextlib.suppress(FailedPrecondition, NotFound):
                    await self.remove(net.id)
                    removed.append(net.name)
        return removed

    # --------------------------------------------------------------- container create options

    def parse_create(self, p: jsonrpc.Params, image_config: dict[str, Any]) -> dict[str, Any]:
        """The network options of ``container.create``, validated (nothing allocated yet)."""
        mode = p.string("network") or self.default
        net = self.get(mode)
        opts: dict[str, Any] = {"network": net.name}
        ip = p.string("ip")
        aliases = [ipam.check_alias(a) for a in p.list_of_str("network_aliases")]
        specs = p.list_of_str("ports")
        publish_all = p.boolean("publish_all")
        if net.driver != "bridge":
            for key, given in (
                ("ip", ip),
                ("ip6", p.string("ip6")),
                ("network_aliases", aliases),
                ("ports", specs or publish_all),
            ):
                if given:
                    raise InvalidArgument(f"{key} cannot be used with --network {net.name}", field=key)
        if ip is not None:
            if net.name == BRIDGE:
                raise InvalidArgument("--ip is supported on user-defined networks only", field="ip")
            addr = ipam.parse_ip(ip)
            if addr not in ipaddress.ip_network(net.subnet):
                raise InvalidArgument(
                    f"address {ip} is not in the subnet {net.subnet} of {net.name}", field="ip"
                )
        opts["ip"] = ip
        ip6 = p.string("ip6")
        if ip6 is not None:
            if not net.subnet6:
                raise InvalidArgument(f"--ip6: network {net.name} has no IPv6 subnet", field="ip6")
            if ipam.parse_ip6(ip6) not in ipaddress.IPv6Network(net.subnet6):
                raise InvalidArgument(
                    f"address {ip6} is not in the subnet {net.subnet6} of {net.name}", field="ip6"
                )
        opts["ip6"] = ip6
        opts["network_aliases"] = aliases
        opts["dns"] = [ipam.parse_dns(d) for d in p.list_of_str("dns")]
        opts["add_hosts"] = [list(ipam.parse_add_host(h)) for h in p.list_of_str("add_hosts")]
        ports = [ipam.parse_port(s) for s in specs]
        if publish_all:
            given = {(pt.container_port, pt.proto) for pt in ports}
            ports += [
                pt for pt in ipam.exposed_ports(image_config) if (pt.container_port, pt.proto) not in given
            ]
        seen: set[tuple[str, int, str]] = set()
        for pt in ports:
            if pt.host_port:
                slot = (pt.host_ip, pt.host_port, pt.proto)
                if slot in seen:
                    raise InvalidArgument(
                        f"host port {pt.host_port}/{pt.proto} is published twice", field="ports"
                    )
                seen.add(slot)
        opts["ports"] = [pt.to_json() for pt in ports]
        return opts

    def _used_host_ports(self, exclude: str = "") -> set[tuple[int, str]]:
        used = set()
        for rec in self.store.list_containers():
            if rec.id != exclude:
                for d in rec.config.get("ports") or []:
                    used.add((int(d["host_port"]), str(d["proto"])))
        return used

    def _pick_port(self, proto: str, used: set[tuple[int, str]]) -> int:
        kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
        for _ in range(200):
            port = random.randint(*EPHEMERAL)
            if (port, proto) in used or not _bindable("", port, kind):
                continue
            return port
        raise FailedPrecondition("no free host port found for a published port")

    def spec_for(self, cid: str, opts: dict[str, Any], files_dir: str) -> dict[str, Any]:
        """What :func:`supervisor.spec.build` needs: the namespace (None: runc makes one; "":
        the host's) and the files to mount."""
        mode = opts.get("network") or NONE
        netns: str | None = None if mode == NONE else "" if mode == HOST else self.netns_path(cid)
        return {"netns": netns, "mounts": files.mounts(files_dir)}

    def netns_path(self, cid: str) -> str:
        return os.path.join(self.netns_dir, cid)

    def allocate(self, rec: ContainerRecord, files_dir: str) -> None:
        """Endpoints and host ports of a new container, and its /etc files. Call inside the
        store transaction that inserts the container (a failure rolls both back)."""
        opts = rec.config
        mode = opts.get("network") or NONE
        if mode not in (HOST, NONE):
            net = self.get(mode)
            wanted = opts.get("ip")
            ip = ipam.allocate(net.subnet, net.ip_range, net.gateway, self.db.taken_ips(net.id), wanted)
            ip6 = ""
            if net.subnet6:
                ip6 = ipam.allocate6(net.subnet6, net.gateway6, self.db.taken_ip6s(net.id), opts.get("ip6"))
            aliases = list(opts.get("network_aliases") or [])
            self.db.insert_endpoint(Endpoint(net.id, rec.id, 0, ip, ipam.mac_for(ip), aliases, ip6))
            used = self._used_host_ports(exclude=rec.id)
            ports = []
            for d in opts.get("ports") or []:
                pt = Port.from_json(d)
                if not pt.host_port:
                    pt = Port(pt.host_ip, self._pick_port(pt.proto, used), pt.container_port, pt.proto)
                used.add((pt.host_port, pt.proto))
                ports.append(pt.to_json())
            opts["ports"] = ports
        self.write_files(rec, files_dir)

    # ---------------------------------------------------------------------------- /etc files

    def _snapshot(
        self,
    ) -> tuple[dict[str, list[Endpoint]], dict[str, list[Endpoint]], _Records]:
        """Every endpoint by network and by container, and the containers by id, read once each
        (not once per peer): what the /etc/hosts of many containers are built from. Records are
        read on first use: a create with ``--network none`` among 500 containers reads none of
        them (reading them all cost O(containers) per create: 12 ms each at 500)."""
        by_net: dict[str, list[Endpoint]] = {}
        by_cid: dict[str, list[Endpoint]] = {}
        for ep in self.db.endpoints():
            by_net.setdefault(ep.network_id, []).append(ep)
            by_cid.setdefault(ep.container_id, []).append(ep)
        return by_net, by_cid, _Records(self.store)

    def _etc(self, rec: ContainerRecord, snap: Any = None) -> files.EtcFiles:
        by_net, by_cid, recs = snap or self._snapshot()
        cfg = rec.config
        hostname = cfg.get("hostname") or rec.id[:12]
        ef = files.EtcFiles(
            hostname=hostname,
            dns=list(cfg.get("dns") or []),
            host_mode=cfg.get("network") == HOST,
            extra=[files.HostsEntry(ip, [name]) for name, ip in cfg.get("add_hosts") or []],
        )
        for ep in by_cid.get(rec.id, []):
            for ip in filter(None, (ep.ip, ep.ip6)):
                ef.own.append(files.HostsEntry(ip, [hostname, rec.name, *ep.aliases]))
            for peer in by_net.get(ep.network_id, []):
                if peer.container_id == rec.id:
                    continue
                other = recs.get(peer.container_id)
                if other is not None:
                    for ip in filter(None, (peer.ip, peer.ip6)):
                        ef.peers.append(files.HostsEntry(ip, [other.name, *peer.aliases, other.id[:12]]))
        return ef

    def write_files(self, rec: ContainerRecord, files_dir: str) -> None:
        files.write_all(files_dir, self._etc(rec))

    def refresh_hosts(self, network_ids: Iterable[str], dirs: Any) -> None:
        """Rewrite /etc/hosts of every container on these networks; ``dirs(cid)`` is a
        container's bundle dir."""
        done: set[str] = set()
        snap = self._snapshot()
        by_net, _, recs = snap
        for nid in network_ids:
            for ep in by_net.get(nid, []):
                if ep.container_id in done:
                    continue
                done.add(ep.container_id)
                rec = recs.get(ep.container_id)
                if rec is not None:
                    files.update_hosts(dirs(rec.id), self._etc(rec, snap))

    def network_ids_of(self, cid: str) -> list[str]:
        return [ep.network_id for ep in self.db.endpoints(container_id=cid)]

    # ---------------------------------------------------------------------- kernel: wire up

    def _is_wirable(self, rec: ContainerRecord) -> bool:
        return (rec.config.get("network") or NONE) not in (HOST, NONE) or bool(
            self.db.endpoints(container_id=rec.id)
        )

    async def setup(self, rec: ContainerRecord) -> None:
        """The container's namespace, veths, addresses, routes and port forwards, before
        ``runc run`` joins the namespace. Anything stale of an earlier run is replaced."""
        if not self._is_wirable(rec):
            return
        eps = self.db.endpoints(container_id=rec.id)
        nets = {ep.network_id: self.db.network(ep.network_id) for ep in eps}
        ports = [Port.from_json(d) for d in rec.config.get("ports") or []]
        async with self.lock:
            self._check_ports(rec.id, ports)
            path = self.netns_path(rec.id)
            try:
                await anyio.to_thread.run_sync(self._wire_sync, rec.id, path, eps, nets)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self._unwire_sync, rec.id, path)
                raise
            self._wired.add(rec.id)
            bridges = {n.bridge for n in nets.values() if n is not None and n.is_bridge}
            if ports or not bridges <= self._nft_bridges:  # new forwards, or a bridge's NAT rules
                try:
                    await self._apply_nft()
                except BaseException:
                    self._wired.discard(rec.id)
                    with anyio.CancelScope(shield=True):
                        await anyio.to_thread.run_sync(self._unwire_sync, rec.id, path)
                    raise

    def _check_ports(self, cid: str, ports: list[Port]) -> None:
        for pt in ports:
            for other in self._wired:
                if other == cid:
                    continue
                rec = self.store.get_container(other)
                for d in (rec.config.get("ports") or []) if rec else []:
                    o = Port.from_json(d)
                    if (
                        o.host_port == pt.host_port
                        and o.proto == pt.proto
                        and (not o.host_ip or not pt.host_ip or o.host_ip == pt.host_ip)
                    ):
                        raise FailedPrecondition(
                            f"Bind for {pt.host_ip or '0.0.0.0'}:{pt.host_port} failed: port is already "
                            f"allocated (container {rec.name if rec else other[:12]})"
                        )
            kind = socket.SOCK_STREAM if pt.proto == "tcp" else socket.SOCK_DGRAM
            if not _bindable(pt.host_ip, pt.host_port, kind):
                where = f"{pt.host_ip or '0.0.0.0'}:{pt.host_port}/{pt.proto}"
                raise FailedPrecondition(f"Bind for {where} failed: port is in use on the host")

    def _wire_sync(
        self, cid: str, path: str, eps: list[Endpoint], nets: dict[str, NetworkRecord | None]
    ) -> None:
        from . import netlink

        with open(self.marker, "a"):
            pass
        self._unwire_sync(cid, path)
        netlink.create_netns(path)
        failpoint("network.setup.after_netns")
        primary = min((ep.idx for ep in eps), default=0)
        for ep in eps:
            net = nets.get(ep.network_id)
            if net is None or not net.is_bridge:
                continue
            self._wire_endpoint(netlink, cid, path, ep, net, ep.idx == primary)

    def _wire_endpoint(
        self, netlink: Any, cid: str, path: str, ep: Endpoint, net: NetworkRecord, primary: bool
    ) -> None:
        """One endpoint, in a worker thread: no store access here (the store's connection
        belongs to the event loop's thread)."""
        prefix = ipaddress.ip_network(net.subnet).prefixlen
        mtu = self._mtu(netlink, net)
        v6 = (net.gateway6, ipaddress.IPv6Network(net.subnet6).prefixlen) if net.subnet6 else None
        netlink.ensure_bridge(net.bridge, net.gateway, prefix, mtu, route_localnet=True, v6=v6)
        netlink.attach(
            path,
            veth_name(cid, ep.idx),
            net.bridge,
            ep.idx,
            ep.ip,
            prefix,
            net.gateway,
            ep.mac,
            mtu,
            v6=(ep.ip6, v6[1], net.gateway6) if v6 and ep.ip6 else None,
            default_route=primary and not net.internal,
        )

    def _mtu(self, netlink: Any, net: NetworkRecord) -> int:
        """The network's MTU; 0 (the default) is the uplink's, at most 1500, found once."""
        if net.mtu:
            return net.mtu
        if self._uplink_mtu is None:
            self._uplink_mtu = int(netlink.uplink_mtu(ipam.DEFAULT_MTU))
        return self._uplink_mtu

    def _unwire_sync(self, cid: str, path: str) -> None:
        from . import netlink

        for name in netlink.link_names("tv"):
            if name[3:] == cid[:12]:
                netlink.delete_link(name)
        netlink.delete_netns(path)

    async def teardown(self, cid: str) -> None:
        """Undo :meth:`setup` (the container exited or is removed). Idempotent; a no-op for
        containers that never had a namespace of ours."""
        path = self.netns_path(cid)
        if cid not in self._wired and not os.path.exists(path):
            return
        async with self.lock:
            had_ports = cid in self._wired
            self._wired.discard(cid)
            await anyio.to_thread.run_sync(self._unwire_sync, cid, path)
            if had_ports:
                await self._apply_nft()

    # ------------------------------------------------------------------- connect, disconnect

    async def connect(
        self, net_ref: Any, rec: ContainerRecord, ip: str | None, aliases: list[str], dirs: Any
    ) -> Endpoint:
        net = self.get(net_ref)
        mode = rec.config.get("network") or NONE
        if not net.is_bridge:
            raise InvalidArgument(f"cannot connect a container to the {net.name} network", field="network")
        if mode in (HOST, NONE):
            raise FailedPrecondition(f"container {rec.name} is on the {mode} network: it cannot join another")
        eps = self.db.endpoints(container_id=rec.id)
        if any(ep.network_id == net.id for ep in eps):
            raise AlreadyExists(f"container {rec.name} is already connected to network {net.name}")
        taken_idx = {ep.idx for ep in eps}
        free = [i for i in range(ipam.MAX_ENDPOINTS) if i not in taken_idx]
        if not free:
            raise FailedPrecondition(f"container {rec.name} is on {ipam.MAX_ENDPOINTS} networks already")
        if ip is not None and net.name == BRIDGE:
            raise InvalidArgument("--ip is supported on user-defined networks only", field="ip")
        aliases = [ipam.check_alias(a) for a in aliases]
        with self.store.transaction():
            addr = ipam.allocate(net.subnet, net.ip_range, net.gateway, self.db.taken_ips(net.id), ip)
            addr6 = (
                ipam.allocate6(net.subnet6, net.gateway6, self.db.taken_ip6s(net.id)) if net.subnet6 else ""
            )
            ep = Endpoint(net.id, rec.id, free[0], addr, ipam.mac_for(addr), aliases, addr6)
            self.db.insert_endpoint(ep)
        if rec.id in self._wired:
            try:
                async with self.lock:
                    from . import netlink

                    await anyio.to_thread.run_sync(
                        self._wire_endpoint,
                        netlink,
                        rec.id,
                        self.netns_path(rec.id),
                        ep,
                        net,
                        ep.idx < min(taken_idx, default=99),
                    )
            except BaseException:
                self.db.delete_endpoint(net.id, rec.id)
                raise
        self.refresh_hosts([net.id, *self.network_ids_of(rec.id)], dirs)
        self._publish("connect", net, container=rec.id)
        return ep

    async def disconnect(self, net_ref: Any, rec: ContainerRecord, dirs: Any) -> None:
        net = self.get(net_ref)
        eps = [ep for ep in self.db.endpoints(container_id=rec.id) if ep.network_id == net.id]
        if not eps:
            raise NotFound(f"container {rec.name} is not connected to network {net.name}")
        if rec.id in self._wired:
            from . import netlink

            async with self.lock:
                await anyio.to_thread.run_sync(netlink.delete_link, veth_name(rec.id, eps[0].idx))
        peers = self.network_ids_of(rec.id)
        self.db.delete_endpoint(net.id, rec.id)
        self.refresh_hosts(peers, dirs)
        files.update_hosts(dirs(rec.id), self._etc(rec))
        self._publish("disconnect", net, container=rec.id)

    def container_networks(self, rec: ContainerRecord) -> dict[str, Any]:
        """A container's networks for ``container.inspect``."""
        out: dict[str, Any] = {}
        for ep in self.db.endpoints(container_id=rec.id):
            net = self.db.network(ep.network_id)
            if net is None:
                continue
            out[net.name] = {
                "network_id": net.id,
                "ip": ep.ip,
                "prefixlen": ipaddress.ip_network(net.subnet).prefixlen,
                "gateway": net.gateway,
                "ip6": ep.ip6,
                "gateway6": net.gateway6,
                "mac": ep.mac,
                "aliases": ep.aliases,
                "interface": f"eth{ep.idx}",
            }
        mode = rec.config.get("network") or NONE
        if mode in (HOST, NONE) and mode not in out:
            out[mode] = {}
        return out

    # ------------------------------------------------------------------ reconcile, the table

    async def _apply_nft(self) -> None:
        ruleset = self._ruleset()
        await anyio.to_thread.run_sync(nft.apply, ruleset)
        self._nft_bridges = {b.bridge for b in ruleset.bridges}

    def _ruleset(self) -> nft.Ruleset:
        rs = nft.Ruleset()
        for net in self.db.networks():
            if net.is_bridge:
                rs.bridges.append(nft.BridgeRules(net.bridge, net.subnet, net.internal, net.subnet6))
        for cid in sorted(self._wired):
            rec = self.store.get_container(cid)
            eps = self.db.endpoints(container_id=cid)
            if rec is None or not eps:
                continue
            for d in rec.config.get("ports") or []:
                pt = Port.from_json(d)
                rs.forwards.append(
                    nft.Forward(pt.host_ip, pt.host_port, pt.proto, eps[0].ip, pt.container_port)
                )
        return rs

    async def reconcile(self, keep: Iterable[str]) -> None:
        """At start: keep the namespaces of the containers in ``keep`` (running, paused, or of
        an unknown fate), remove every other namespace file, veth and bridge of ours, and rebuild
        the nft table. Nothing to do (and pyroute2 not loaded) if no bridge was ever wired."""
        for cid in self.db.orphan_endpoints():
            self.db.delete_endpoints_of(cid)
        if not os.path.exists(self.marker):
            return
        keep_set = {cid for cid in keep if self._is_wirable_id(cid)}
        from . import netlink

        bridges = {n.bridge for n in self.db.networks() if n.is_bridge}

        def sweep() -> list[str]:  # in a worker thread: no store access
            done = []
            for entry in _listdir(self.netns_dir):
                if entry not in keep_set:
                    netlink.delete_netns(os.path.join(self.netns_dir, entry))
                    done.append(entry)
            short = {cid[:12] for cid in keep_set}
            for name in netlink.link_names("tv"):
                if name[3:] not in short:
                    netlink.delete_link(name)
                    done.append(name)
            for name in netlink.link_names("tb-"):
                if name not in bridges:
                    netlink.delete_link(name)
                    done.append(name)
            return done

        async with self.lock:
            removed = await anyio.to_thread.run_sync(sweep)
            self._wired = {cid for cid in keep_set if os.path.exists(self.netns_path(cid))}
            await self._apply_nft()
        if removed:
            log.info("network reconcile removed %d leftovers: %s", len(removed), ", ".join(removed[:10]))

    def _is_wirable_id(self, cid: str) -> bool:
        rec = self.store.get_container(cid)
        return rec is not None and self._is_wirable(rec)


def veth_name(cid: str, idx: int) -> str:
    """The host side of a container's veth: ``tv<idx><12 hex>`` (15 bytes, IFNAMSIZ's limit)."""
    return f"tv{idx}{cid[:12]}"


def _bindable(host_ip: str, port: int, kind: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host_ip or "0.0.0.0", port))
        except OSError as exc:
            # EADDRNOTAVAIL: an address not (yet) ours, so nothing of ours listens there.
            return exc.errno == errno.EADDRNOTAVAIL
    return True


def _listdir(path: str) -> list[str]:
    try:
        return [e for e in os.listdir(path) if not e.startswith(".")]
    except FileNotFoundError:
        return []


class _Records:
    """Container records by id, each read from the store on first use."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.cache: dict[str, ContainerRecord | None] = {}

    def get(self, cid: str) -> ContainerRecord | None:
        if cid not in self.cache:
            self.cache[cid] = self.store.get_container(cid)
        return self.cache[cid]
