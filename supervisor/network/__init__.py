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
import dataclasses
import ipaddress
import logging
import os
import secrets
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import anyio

from tugwire import fsutil
from tugwire.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from tugwire.timefmt import rfc3339

from ..failpoints import failpoint
from . import attached, etc, files, host, ipam, nft
from . import ports as ports_
from .ipam import BRIDGE, HOST, NONE, Endpoint, NetworkRecord, Port, veth_name
from .requests import EndpointRequest, NetworkCreateRequest

if TYPE_CHECKING:
    from ..config import Config
    from ..events import EventBus
    from ..records import ContainerSettings
    from ..store import ContainerRecord, Store
    from .attached import Owners

log = logging.getLogger("tugboat.network")

BUILTIN = (BRIDGE, HOST, NONE)
ACTIVE_STATES = ("running", "paused", "unknown")  # whose namespaces a reconcile keeps


class Networks:
    def __init__(self, cfg: Config, store: Store, bus: EventBus | None = None) -> None:
        self.cfg = cfg
        self.store = store
        self.bus = bus
        self.db = ipam.NetStore(store.db)
        self.lock = anyio.Lock()  # serialises kernel changes (bridges, the nft table)
        self.netns_dir = os.path.join(cfg.state, "netns")
        self.marker = os.path.join(cfg.state, "network.active")  # set once a bridge was wired
        self._wired: set[str] = set()  # containers whose namespace is set up
        self._forwarding: set[str] = set()  # the wired ones with published ports (in the table)
        self._bridge_index: dict[str, int] = {}  # bridges set up by this tugd, by name (a cache)
        self._uplink_mtu: int | None = None
        self._nft_bridges: set[str] = set()  # the bridges the applied nft table has rules for
        self.default = getattr(cfg, "default_network", BRIDGE) or BRIDGE
        # This tugd's own objects on the host (see host.py): its nft table, its links' alias.
        self.instance = host.instance_id(cfg.root)
        self.table = host.table_name(cfg.root)
        self.alias = host.link_alias(cfg.root)
        self.pools = [host.parse_pool(p) for p in getattr(cfg, "address_pools", ())] or list(
            host.DEFAULT_POOLS
        )
        self.owners: Owners | None = None  # endpoints not of containers (attached.py: pods)
        self._ensure_builtin()

    # -------------------------------------------------------------------------- records

    def _ensure_builtin(self) -> None:
        have = {n.name for n in self.db.networks()}
        for name in BUILTIN:
            if name in have:
                continue
            nid = secrets.token_hex(32)
            # The default bridge's subnet is chosen when it is first needed, against the host's
            # networks (see _decide_default): reading them loads pyroute2.
            subnet = gateway = bridge = ""
            if name == BRIDGE:
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
                    created=rfc3339(),
                )
            )
        # the built-in networks' ids (never removed): for host and none, which have no endpoint
        self.builtin_ids = {n.name: n.id for n in self.db.networks() if n.name in BUILTIN}
        if self.default not in BUILTIN and not self.db.find_networks(self.default):
            raise InvalidArgument(f"--default-network {self.default}: no such network")

    def _taken(self) -> list[ipaddress.IPv4Network]:
        return [ipaddress.IPv4Network(n.subnet) for n in self.db.networks() if n.subnet]

    def _bridges(self) -> set[str]:
        return {n.bridge for n in self.db.networks() if n.is_bridge}

    def _claim_fn(
        self, net: NetworkRecord, subnet: ipaddress.IPv4Network | None, **kw: Any
    ) -> Callable[[], ipaddress.IPv4Network]:
        """A blocking function that chooses (``subnet`` None) or checks ``net``'s subnet against
        the host and makes its bridge (:func:`host.claim`). The store is read now, on the loop's
        thread; the kernel is touched by the function, in a worker thread."""
        taken, ours = self._taken(), self._bridges()
        with open(self.marker, "a"):  # a bridge of ours may exist from now on
            pass

        def run() -> ipaddress.IPv4Network:
            from . import netlink

            # The uplink's MTU now, not cached: at start the uplink may not be up yet (the
            # first container's wiring finds it, and sets it on the bridge too).
            mtu = net.mtu or int(netlink.uplink_mtu(ipam.DEFAULT_MTU))
            c = host.Claim(net.bridge, subnet, mtu, self.alias, **kw)
            return host.claim(c, self.pools, taken, ours)

        return run

    def _record_subnet(self, net: NetworkRecord, subnet: ipaddress.IPv4Network) -> NetworkRecord:
        if str(subnet) != net.subnet:
            gateway = str(next(subnet.hosts()))
            self.db.set_subnet(net.id, str(subnet), gateway)
            log.info("network %s: subnet %s (gateway %s)", net.name, subnet, gateway)
        found = self.db.network(net.id)
        assert found is not None
        return found

    def _decide_default(self, net: NetworkRecord) -> NetworkRecord:
        """The default bridge with its subnet: chosen now if it was not yet (the first container
        on ``bridge`` of a tugd whose default network is another). Blocks the loop once, for
        the host's networks and the bridge: a rare path (at start, reconcile does it)."""
        if net.name != BRIDGE or net.subnet:
            return net
        from . import netlink  # pyroute2 runs an event loop of its own: never on the loop's thread

        return self._record_subnet(net, netlink.in_thread(self._claim_fn(net, None)))

    async def _ensure_bridges(self) -> None:
        """At start: the default bridge's subnet chosen if it is the default network, and the
        bridges of our networks made if missing (after a reboot), so that another tugd or
        dockerd starting later sees their subnets as taken. A default bridge that nothing uses
        yet and whose subnet the host has meanwhile taken (an older tugd chose 172.17.0.0/16
        without looking: docker0's) gets another."""
        wired = os.path.exists(self.marker)
        for net in self.db.networks():
            if not net.is_bridge or not (wired or (net.name == BRIDGE and self.default == BRIDGE)):
                continue
            fixed = ipaddress.IPv4Network(net.subnet) if net.subnet else None
            unused = net.name == BRIDGE and not self.db.endpoints(network_id=net.id)
            try:
                subnet = await anyio.to_thread.run_sync(self._claim_fn(net, fixed, repick=unused))
            except InvalidArgument as exc:  # a user's network the host now overlaps: said, kept
                log.warning("network %s: %s; its bridge is made when a container needs it", net.name, exc)
                continue
            self._record_subnet(net, subnet)

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

    async def create(self, req: NetworkCreateRequest) -> NetworkRecord:
        """A bridge network: its name, subnets and gateways checked, its bridge made."""
        name = ipam.check_network_name(req.name)
        driver = req.driver or "bridge"
        if driver != "bridge":
            raise InvalidArgument(f"driver {driver!r} is not supported: only bridge", field="driver")
        if self.db.find_networks(name) and any(n.name == name for n in self.db.find_networks(name)):
            raise AlreadyExists(f"network with name {name} already exists", field="name")
        subnet: ipaddress.IPv4Network | None = None
        ip_range = gateway = ""
        if req.subnet:
            subnet = ipam.parse_subnet(req.subnet)
            ip_range, gateway = self._check_subnet(req, subnet)
        elif req.gateway or req.ip_range:
            raise InvalidArgument("--gateway and --ip-range need --subnet", field="subnet")
        subnet6, gateway6 = self._parse_v6(req)
        mtu = req.mtu or 0  # 0: the uplink's (see _mtu)
        if mtu and not 576 <= mtu <= 9000:
            raise InvalidArgument("mtu must be within 576-9000", field="mtu")
        nid = secrets.token_hex(32)
        rec = NetworkRecord(
            id=nid,
            name=name,
            driver="bridge",
            bridge="tb-" + nid[:12],  # random: never another instance's (claim checks it is free)
            subnet="",
            gateway=gateway,
            ip_range=ip_range,
            mtu=mtu,
            internal=req.internal,
            labels=dict(req.labels),
            created=rfc3339(),
            subnet6=subnet6,
            gateway6=gateway6,
        )
        async with self.lock:
            if subnet is not None and (other := self._overlapping(subnet)) is not None:  # made meanwhile
                raise InvalidArgument(
                    f"subnet {subnet} overlaps with network {other.name} ({other.subnet})", field="subnet"
                )
            # The subnet is checked against (or chosen among) the host's and the bridge made
            # now, under the host-wide lock: another tugd sees it taken from then on.
            kw: dict[str, Any] = {"fresh": True}
            if gateway:
                kw["gateway_of"] = lambda _net: gateway
            made = await anyio.to_thread.run_sync(self._claim_fn(rec, subnet, **kw))
            rec.subnet, rec.gateway = str(made), gateway or str(next(made.hosts()))
            try:
                self.db.insert_network(rec)  # AlreadyExists if the name was taken meanwhile
            except BaseException:
                with anyio.CancelScope(shield=True):
                    from . import netlink

                    await anyio.to_thread.run_sync(netlink.delete_link, rec.bridge)
                raise
        self._publish("create", rec)
        return rec

    def _check_subnet(self, req: NetworkCreateRequest, subnet: ipaddress.IPv4Network) -> tuple[str, str]:
        """An explicit subnet against our networks, and its ``ip_range`` and ``gateway``."""
        other = self._overlapping(subnet)
        if other is not None:
            raise InvalidArgument(
                f"subnet {subnet} overlaps with network {other.name} ({other.subnet})", field="subnet"
            )
        ip_range = ""
        if req.ip_range:
            rng = ipam.parse_subnet(req.ip_range, "ip_range")
            if not rng.subnet_of(subnet):
                raise InvalidArgument(f"ip range {rng} is not within subnet {subnet}", field="ip_range")
            ip_range = str(rng)
        gateway_s = req.gateway
        gateway = ""
        if gateway_s:
            gw = ipam.parse_ip(gateway_s, "gateway")
            if gw not in subnet or gw in (subnet.network_address, subnet.broadcast_address):
                raise InvalidArgument(
                    f"gateway {gw} is not a host address of subnet {subnet}", field="gateway"
                )
            gateway = str(gw)
        return ip_range, gateway

    def _parse_v6(self, req: NetworkCreateRequest) -> tuple[str, str]:
        """``subnet6`` and ``gateway6`` (IPv6 is optional: a dual-stack network)."""
        subnet6_s, gateway6_s = req.subnet6, req.gateway6
        if not subnet6_s:
            if gateway6_s or req.ipv6:
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

    def describe(
        self, net: NetworkRecord, containers: dict[str, ContainerRecord] | None = None
    ) -> dict[str, Any]:
        eps = self.db.endpoints(network_id=net.id)
        out_eps = {}
        for ep in eps:
            rec = (containers or {}).get(ep.container_id) or self.store.get_container(ep.container_id)
            out_eps[ep.container_id] = {
                "name": rec.name if rec else self.owners.name_of(ep.container_id) if self.owners else "",
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
            if os.path.exists(self.marker):  # else no bridge of ours was ever made
                from . import netlink

                await anyio.to_thread.run_sync(netlink.delete_link, net.bridge)
                self._bridge_index.pop(net.bridge, None)
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

    def parse_create(self, req: EndpointRequest, image_config: dict[str, Any]) -> dict[str, Any]:
        """The network options of ``container.create``, validated (nothing allocated yet)."""
        mode = req.network or self.default
        net = self._decide_default(self.get(mode))
        opts: dict[str, Any] = {"network": net.name}
        ip = req.ip
        aliases = [ipam.check_alias(a) for a in req.network_aliases]
        specs = list(req.ports)
        publish_all = req.publish_all
        if net.driver != "bridge":
            for key, value in (
                ("ip", ip),
                ("ip6", req.ip6),
                ("network_aliases", aliases),
                ("ports", specs or publish_all),
            ):
                if value:
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
        ip6 = req.ip6
        if ip6 is not None:
            if not net.subnet6:
                raise InvalidArgument(f"--ip6: network {net.name} has no IPv6 subnet", field="ip6")
            if ipam.parse_ip6(ip6) not in ipaddress.IPv6Network(net.subnet6):
                raise InvalidArgument(
                    f"address {ip6} is not in the subnet {net.subnet6} of {net.name}", field="ip6"
                )
        opts["ip6"] = ip6
        opts["network_aliases"] = aliases
        opts["dns"] = [ipam.parse_dns(d) for d in req.dns]
        opts["add_hosts"] = [list(ipam.parse_add_host(h)) for h in req.add_hosts]
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

    def spec_for(self, cid: str, settings: ContainerSettings, files_dir: str) -> dict[str, Any]:
        """What :func:`supervisor.spec.build` needs: the namespace (None: runc makes one; "":
        the host's) and the files to mount."""
        mode = settings.network or NONE
        netns: str | None = None if mode == NONE else "" if mode == HOST else self.netns_path(cid)
        return {"netns": netns, "mounts": files.mounts(files_dir)}

    def netns_path(self, cid: str) -> str:
        return os.path.join(self.netns_dir, cid)

    def allocate(self, rec: ContainerRecord, files_dir: str) -> None:
        """Endpoints and host ports of a new container, and its /etc files. Call inside the
        store transaction that inserts the container (a failure rolls both back)."""
        opts = rec.settings
        mode = opts.network or NONE
        if mode not in (HOST, NONE):
            net = self.get(mode)
            wanted = opts.ip
            ip = ipam.allocate(net.subnet, net.ip_range, net.gateway, self.db.taken_ips(net.id), wanted)
            ip6 = ""
            if net.subnet6:
                ip6 = ipam.allocate6(net.subnet6, net.gateway6, self.db.taken_ip6s(net.id), opts.ip6)
            aliases = list(opts.network_aliases)
            self.db.insert_endpoint(Endpoint(net.id, rec.id, 0, ip, ipam.mac_for(ip), aliases, ip6))
            used = ports_.used(self.store, exclude=rec.id)
            ports = []
            for d in opts.ports:
                pt = Port.from_json(d)
                if not pt.host_port:
                    pt = Port(pt.host_ip, ports_.pick(pt.proto, used), pt.container_port, pt.proto)
                used.add((pt.host_port, pt.proto))
                ports.append(pt.to_json())
            rec.settings = dataclasses.replace(opts, ports=ports)
        self.write_files(rec, files_dir)

    # ---------------------------------------------------------------------------- /etc files

    def _etc(self, rec: ContainerRecord) -> files.EtcFiles:
        return etc.etc_of(rec, etc.snapshot(self.db, self.store))

    def write_files(self, rec: ContainerRecord, files_dir: str) -> None:
        files.write_all(files_dir, self._etc(rec))

    def refresh_hosts(self, network_ids: Iterable[str], dirs: Any) -> None:
        """Rewrite /etc/hosts of every container on these networks; ``dirs(cid)`` is a
        container's bundle dir."""
        etc.refresh_hosts(etc.snapshot(self.db, self.store), network_ids, dirs)

    def network_ids_of(self, cid: str) -> list[str]:
        return [ep.network_id for ep in self.db.endpoints(container_id=cid)]

    # ---------------------------------------------------------------------- kernel: wire up

    def _is_wirable(self, rec: ContainerRecord) -> bool:
        return (rec.settings.network or NONE) not in (HOST, NONE) or bool(
            self.db.endpoints(container_id=rec.id)
        )

    async def setup(self, rec: ContainerRecord) -> None:
        """The container's namespace, veths, addresses, routes and port forwards, before
        ``runc run`` joins the namespace. Anything stale of an earlier run is replaced."""
        if not self._is_wirable(rec):
            return
        eps = self.db.endpoints(container_id=rec.id)
        nets = {ep.network_id: self.db.network(ep.network_id) for ep in eps}
        ports = [Port.from_json(d) for d in rec.settings.ports]
        async with self.lock:
            fresh = rec.id not in self._forwarding  # (else its rules may be in the table still)
            ports_.check(self.store, self._wired, rec.id, ports)
            if ports and self.owners is not None:  # the pods' host ports (attached.py)
                attached.check_pods(self.owners, ports)
            if ports:  # DNAT holds no socket: another tugd's forwards are read from its table
                ports_.check_others(
                    await anyio.to_thread.run_sync(host.forwards_of_others, self.table), ports
                )
            path = self.netns_path(rec.id)
            try:
                await anyio.to_thread.run_sync(self._wire_sync, rec.id, path, eps, nets)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self._unwire_sync, rec.id, path)
                raise
            self._wired.add(rec.id)
            if ports:
                self._forwarding.add(rec.id)
            bridges = {n.bridge for n in nets.values() if n is not None and n.is_bridge}
            # New forwards (added to the table if it has the bridges' rules), or a bridge's NAT.
            if ports or not bridges <= self._nft_bridges:
                try:
                    add = fresh and bool(eps) and bridges <= self._nft_bridges
                    fwd = ports_.forwards(eps[0].ip, ports) if add else []
                    if not (add and await anyio.to_thread.run_sync(nft.add_forwards, self.table, fwd)):
                        await self._apply_nft()
                except BaseException:
                    self._wired.discard(rec.id)
                    self._forwarding.discard(rec.id)
                    with anyio.CancelScope(shield=True):
                        await anyio.to_thread.run_sync(self._unwire_sync, rec.id, path)
                    raise

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

        def ensure() -> int:
            index = netlink.ensure_bridge(net.bridge, net.gateway, prefix, mtu, True, v6, self.alias)[1]
            self._bridge_index[net.bridge] = index
            return int(index)

        def attach(index: int) -> None:
            v6_ep = (ep.ip6, v6[1], net.gateway6) if v6 and ep.ip6 else None
            default = primary and not net.internal
            veth = veth_name(cid, ep.idx)
            netlink.attach(
                path, veth, index, ep.idx, ep.ip, prefix, net.gateway, ep.mac, mtu, default, v6_ep, self.alias
            )

        # The bridge is set up (made if missing, address, MTU, sysctls) once per tugd, its index
        # kept; should it have gone meanwhile (deleted by someone), the wiring fails and is done
        # again after the bridge is set up anew.
        cached = self._bridge_index.get(net.bridge)
        try:
            attach(cached if cached is not None else ensure())
        except OSError as exc:
            if cached is None:
                raise
            log.info("wiring %s on %s failed (%s): setting the bridge up again", cid[:12], net.bridge, exc)
            attach(ensure())

    def _mtu(self, netlink: Any, net: NetworkRecord) -> int:
        """The network's MTU; 0 (the default) is the uplink's, at most 1500, found once."""
        if net.mtu:
            return net.mtu
        if self._uplink_mtu is None:
            self._uplink_mtu = int(netlink.uplink_mtu(ipam.DEFAULT_MTU))
        return self._uplink_mtu

    def _unwire_sync(self, cid: str, path: str) -> None:
        from . import netlink

        # By name, every index a container may have: one batch of requests, no dump of links.
        netlink.delete_links([veth_name(cid, idx) for idx in range(ipam.MAX_ENDPOINTS)])
        netlink.delete_netns(path)

    async def teardown(self, cid: str) -> None:
        """Undo :meth:`setup` (the container exited or is removed). Idempotent; a no-op for
        containers that never had a namespace of ours."""
        path = self.netns_path(cid)
        if cid not in self._wired and not os.path.exists(path):
            return
        async with self.lock:
            had_ports = cid in self._forwarding  # else the table has no rule of this container
            self._wired.discard(cid)
            self._forwarding.discard(cid)
            await anyio.to_thread.run_sync(self._unwire_sync, cid, path)
            if had_ports:
                await self._apply_nft()

    # ------------------------------------------------------------------- connect, disconnect

    async def connect(
        self, net_ref: Any, rec: ContainerRecord, ip: str | None, aliases: list[str], dirs: Any
    ) -> Endpoint:
        net = self._decide_default(self.get(net_ref))
        mode = rec.settings.network or NONE
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

    def network_refs(self) -> dict[str, tuple[list[str], list[str]]]:
        """Every container's networks as ``{container id: (names, ids)}``, in two queries (for
        ``container.list``; ``host`` and ``none`` are the container's ``network`` setting)."""
        nets = {n.id: n.name for n in self.db.networks()}
        out: dict[str, tuple[list[str], list[str]]] = {}
        for ep in self.db.endpoints():
            if ep.network_id in nets:
                names, ids = out.setdefault(ep.container_id, ([], []))
                names.append(nets[ep.network_id])
                ids.append(ep.network_id)
        return out

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
        mode = rec.settings.network or NONE
        if mode in (HOST, NONE) and mode not in out:
            out[mode] = {"network_id": self.builtin_ids[mode]} if mode in self.builtin_ids else {}
        return out

    # ------------------------------------------------------------------ reconcile, the table

    async def _apply_nft(self) -> None:
        ruleset = self._ruleset()
        await anyio.to_thread.run_sync(nft.apply, self.table, ruleset)
        self._nft_bridges = {b.bridge for b in ruleset.bridges}

    def _ruleset(self) -> nft.Ruleset:
        rs = nft.Ruleset()
        for net in self.db.networks():
            if net.is_bridge and net.subnet:  # (the default bridge's may be undecided yet)
                rs.bridges.append(nft.BridgeRules(net.bridge, net.subnet, net.internal, net.subnet6))
        for cid in sorted(self._wired):
            rec = self.store.get_container(cid)
            eps = self.db.endpoints(container_id=cid)
            if rec is None or not eps:
                continue
            published = [Port.from_json(d) for d in rec.settings.ports]
            rs.forwards += ports_.forwards(eps[0].ip, published)
        if self.owners is not None:
            rs.forwards += self.owners.forwards()
        return rs

    async def reconcile(self, keep: Iterable[str]) -> None:
        """At start: the bridges of our networks made if missing (:meth:`_ensure_bridges`); keep
        the namespaces of the containers in ``keep`` (running, paused, or of an unknown fate),
        remove every other namespace file, veth and bridge of ours (never another instance's),
        delete the shared table of an older tugd once nobody else uses it, and rebuild our nft
        table. Nothing to do (and pyroute2 not loaded) if no bridge was ever wired and the
        default network is not ``bridge``."""
        attached = self.owners.owner_ids() if self.owners is not None else set()
        for cid in self.db.orphan_endpoints():
            if cid not in attached:
                self.db.delete_endpoints_of(cid)
        keep_set = {cid for cid in keep if self._is_wirable_id(cid)}
        async with self.lock:
            await self._ensure_bridges()
        if not os.path.exists(self.marker):
            return
        bridges = self._bridges()
        keep_veths = {
            veth_name(cid, ep.idx)
            for cid in keep_set | (self.owners.live_ids() if self.owners is not None else set())
            for ep in self.db.endpoints(container_id=cid)
        }

        def sweep() -> list[str]:  # in a worker thread: no store access
            from . import netlink

            done = []
            for entry in fsutil.listdir(self.netns_dir, hidden=False):
                if entry not in keep_set:
                    netlink.delete_netns(os.path.join(self.netns_dir, entry))
                    done.append(entry)
            done += host.sweep_links(self.instance, bridges, keep_veths)
            return done

        async with self.lock:
            removed = await anyio.to_thread.run_sync(sweep)
            self._wired = {cid for cid in keep_set if os.path.exists(self.netns_path(cid))}
            recs = {cid: self.store.get_container(cid) for cid in self._wired}
            self._forwarding = {cid for cid, r in recs.items() if r is not None and r.settings.ports}
            self._bridge_index.clear()  # set up again on first use (a reboot, a sweep)
            await self._apply_nft()
            # Only now that our table forwards our ports: an older tugd's shared table goes.
            removed += await anyio.to_thread.run_sync(host.drop_legacy_tables, bridges)
        if removed:
            log.info("network reconcile removed %d leftovers: %s", len(removed), ", ".join(removed[:10]))

    async def reset(self) -> list[str]:
        """``system.reset``: remove everything of ours from the host (namespaces, veths, bridges,
        the nft tables); refused while any container exists. The networks stay defined, their
        subnets kept: their bridges come back when a container needs them or tugd next starts.
        What was removed."""
        recs = self.store.list_containers()
        if recs:
            names = ", ".join(r.name for r in recs[:5]) + (", ..." if len(recs) > 5 else "")
            raise FailedPrecondition(
                f"cannot reset: {len(recs)} container(s) exist ({names}); remove them first (tug rm -f)"
            )
        if self.owners is not None and self.owners.owner_ids():
            raise FailedPrecondition("cannot reset: pods exist; remove them first (tug pod rm)")
        async with self.lock:
            bridges = self._bridges()
            gone = await anyio.to_thread.run_sync(
                host.remove_all, self.instance, self.table, bridges, self.netns_dir, self.marker
            )
            self._wired.clear()
            self._forwarding.clear()
            self._bridge_index.clear()
            self._nft_bridges = set()
        log.info("reset removed: %s", ", ".join(gone) or "nothing")
        return gone

    def _is_wirable_id(self, cid: str) -> bool:
        rec = self.store.get_container(cid)
        return rec is not None and self._is_wirable(rec)
