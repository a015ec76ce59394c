"""The ``network.*`` JSON-RPC methods (docs/api.md, "Networks"): thin, each reading its params
into a typed request and delegating to :class:`supervisor.network.Networks`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tugwire import jsonrpc

from ..network.requests import EndpointRequest, NetworkCreateRequest

if TYPE_CHECKING:
    from ..containers import Containers


def create_request(p: jsonrpc.Params) -> NetworkCreateRequest:
    """``network.create``'s params, their types checked."""
    return NetworkCreateRequest(
        name=p.string("name", required=True),
        driver=p.string("driver"),
        subnet=p.string("subnet"),
        ip_range=p.string("ip_range"),
        gateway=p.string("gateway"),
        subnet6=p.string("subnet6"),
        gateway6=p.string("gateway6"),
        ipv6=p.boolean("ipv6"),
        mtu=p.integer("mtu"),
        internal=p.boolean("internal"),
        labels=p.dict_of_str("labels"),
    )


def endpoint_request(p: jsonrpc.Params) -> EndpointRequest:
    """The network options of ``container.create``, their types checked."""
    return EndpointRequest(
        network=p.string("network"),
        ip=p.string("ip"),
        ip6=p.string("ip6"),
        network_aliases=p.list_of_str("network_aliases"),
        ports=p.list_of_str("ports"),
        publish_all=p.boolean("publish_all"),
        dns=p.list_of_str("dns"),
        add_hosts=p.list_of_str("add_hosts"),
    )


class NetworkApi:
    def __init__(self, containers: Containers) -> None:
        self.containers = containers
        self.networks = containers.networks

    def register(self, d: jsonrpc.Dispatcher) -> None:
        d.add("network.create", self.create)
        d.add("network.list", self.list)
        d.add("network.inspect", self.inspect)
        d.add("network.delete", self.delete)
        d.add("network.connect", self.connect)
        d.add("network.disconnect", self.disconnect)
        d.add("network.prune", self.prune)
        d.add("system.reset", self.reset)  # a system.* method, but all of it is networks' work

    async def create(self, call: jsonrpc.Call) -> Any:
        """Create a bridge network. Returns ``{id, name}``."""
        net = await self.networks.create(create_request(call.params))
        return {"id": net.id, "name": net.name}

    async def list(self, call: jsonrpc.Call) -> Any:
        """Every network (the built-in bridge, host and none first), as ``network.inspect``."""
        return self.networks.list_all()

    async def inspect(self, call: jsonrpc.Call) -> Any:
        """One network: subnet, gateway, range, bridge device and its containers' endpoints."""
        return self.networks.describe(self.networks.get(call.params.string("id", required=True)))

    async def delete(self, call: jsonrpc.Call) -> Any:
        """Remove a network that no container uses. Returns ``{id, name}``."""
        net = await self.networks.remove(call.params.string("id", required=True))
        return {"id": net.id, "name": net.name}

    async def connect(self, call: jsonrpc.Call) -> Any:
        """Connect a container to one more network (live if it runs). Returns its endpoint."""
        p = call.params
        rec = self.containers.get(p.string("container", required=True))
        async with self.containers.live(rec.id).lock:
            rec = self.containers.get(rec.id)
            ep = await self.networks.connect(
                p.string("network", required=True),
                rec,
                p.string("ip"),
                p.list_of_str("aliases"),
                self.containers.cfg.container_dir,
            )
        return {"container": rec.id, "ip": ep.ip, "mac": ep.mac, "interface": f"eth{ep.idx}"}

    async def disconnect(self, call: jsonrpc.Call) -> Any:
        """Disconnect a container from a network (its address returns to the pool)."""
        p = call.params
        rec = self.containers.get(p.string("container", required=True))
        async with self.containers.live(rec.id).lock:
            rec = self.containers.get(rec.id)
            await self.networks.disconnect(
                p.string("network", required=True), rec, self.containers.cfg.container_dir
            )
        return {"container": rec.id}

    async def prune(self, call: jsonrpc.Call) -> Any:
        """Remove every user-defined network that no container uses. Returns ``{removed}``."""
        return {"removed": await self.networks.prune()}

    async def reset(self, call: jsonrpc.Call) -> Any:
        """Remove this tugd's bridges, nft tables and namespaces from the host; refused while any
        container exists. Returns ``{removed}``."""
        return {"removed": await self.networks.reset()}
