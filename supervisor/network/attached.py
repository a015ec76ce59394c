"""Endpoints whose namespace is not a container's: a pod's network namespace, made by its owner
(supervisor/pods) and wired onto a bridge network here, with the containers' own code.

The owner's namespace file lives where the owner keeps it (never in the containers' netns
directory, which a reconcile sweeps); its endpoint is a row of the endpoints table under the
owner's id, so that addresses come from the one allocator. The owner tells :class:`Networks`
which ids are its (so a reconcile keeps their endpoints and veths) and their port forwards
(so the nft table holds them) through :class:`Owners`.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Protocol

import anyio

from tugwire.errors import FailedPrecondition, InvalidArgument

from . import host, ipam, nft
from . import ports as ports_
from .ipam import Endpoint, Port

if TYPE_CHECKING:
    from . import Networks


class Owners(Protocol):
    """What the owner of attached endpoints tells the networks service."""

    def owner_ids(self) -> set[str]:
        """Every id whose endpoints are the owner's (kept at start)."""

    def live_ids(self) -> set[str]:
        """The ids whose namespace exists: their veths are kept by a reconcile."""

    def forwards(self) -> list[nft.Forward]:
        """The port forwards of the live ones."""

    def name_of(self, owner: str) -> str:
        """What ``network.inspect`` calls the owner of an endpoint ("" if none)."""


def taken_ports(nets: Networks) -> set[tuple[str, int, str]]:
    """(host address, port, proto) of every published port of the containers and the owner."""
    out = {("", p, proto) for p, proto in ports_.used(nets.store)}
    if nets.owners is not None:
        out |= {(f.host_ip, f.host_port, f.proto) for f in nets.owners.forwards()}
    return out


def check_pods(owners: Owners, ports: list[Port]) -> None:
    """FailedPrecondition if one of a container's ``ports`` is a host port of the owner's."""
    for f in owners.forwards():
        for pt in ports:
            if (
                f.host_port == pt.host_port
                and f.proto == pt.proto
                and (not f.host_ip or not pt.host_ip or f.host_ip == pt.host_ip)
            ):
                raise FailedPrecondition(
                    f"Bind for {pt.host_ip or '0.0.0.0'}:{pt.host_port} failed: port is already "
                    "allocated (a pod's host port)"
                )


async def attach(nets: Networks, owner: str, net_ref: str, path: str, ports: list[Port]) -> Endpoint:
    """An address on the bridge network ``net_ref`` for ``owner``, a veth into the existing
    network namespace at ``path`` (its loopback up, the default route), and ``ports``
    forwarded to it. Undone on any failure."""
    from . import netlink

    net = nets.get(net_ref)
    if not net.is_bridge or not net.subnet:
        raise InvalidArgument(f"network {net.name} is not a bridge network", field="network")
    taken = taken_ports(nets)
    for pt in ports:
        for h, p, proto in taken:
            if p == pt.host_port and proto == pt.proto and (not h or not pt.host_ip or h == pt.host_ip):
                raise InvalidArgument(
                    f"host port {pt.host_port}/{pt.proto} is already published", field="ports"
                )
    with nets.store.transaction():
        ip = ipam.allocate(net.subnet, net.ip_range, net.gateway, nets.db.taken_ips(net.id))
        ep = Endpoint(net.id, owner, 0, ip, ipam.mac_for(ip), [])
        nets.db.insert_endpoint(ep)
    try:
        async with nets.lock:
            if ports:
                ports_.check(nets.store, nets._wired, owner, ports)
                ports_.check_others(
                    await anyio.to_thread.run_sync(host.forwards_of_others, nets.table), ports
                )
            await anyio.to_thread.run_sync(nets._wire_endpoint, netlink, owner, path, ep, net, True)
            if ports or net.bridge not in nets._nft_bridges:  # (else the table has all it needs)
                await nets._apply_nft()
    except BaseException:
        with anyio.CancelScope(shield=True):
            await detach(nets, owner)
        raise
    return ep


async def detach(nets: Networks, owner: str) -> None:
    """Undo :func:`attach`: the veth, the address and the forwards. Idempotent."""
    from . import netlink

    eps = nets.db.endpoints(container_id=owner)
    ips = {ep.ip for ep in eps}
    forwarded = nets.owners is not None and any(f.ip in ips for f in nets.owners.forwards())
    async with nets.lock:
        await anyio.to_thread.run_sync(netlink.delete_links, [ipam.veth_name(owner, ep.idx) for ep in eps])
        nets.db.delete_endpoints_of(owner)
        if forwarded:  # its forwards leave the table (a pod without host ports has none there)
            await nets._apply_nft()


def address(nets: Networks, owner: str) -> tuple[str, int, str] | None:
    """(address, prefix length, network name) of ``owner``'s endpoint, if it has one."""
    for ep in nets.db.endpoints(container_id=owner):
        net = nets.db.network(ep.network_id)
        if net is not None and net.subnet:
            return ep.ip, ipaddress.ip_network(net.subnet).prefixlen, net.name
    return None
