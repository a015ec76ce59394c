"""The ``pod.*`` JSON-RPC methods (docs/api.md, "Pods"): thin, each reading its params into a
typed request and delegating to :class:`supervisor.pods.Pods`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tugwire import jsonrpc
from tugwire.errors import InvalidParams

from ..pods import DnsConfig, PodCreateRequest, PortMapping

if TYPE_CHECKING:
    from ..pods import Pods


def create_request(p: jsonrpc.Params) -> PodCreateRequest:
    """``pod.create``'s params, their types checked."""
    dns = None
    if p.raw.get("dns") is not None:
        d = jsonrpc.Params(p.raw["dns"]) if isinstance(p.raw["dns"], dict) else None
        if d is None:
            raise InvalidParams("parameter 'dns' must be an object", param="dns")
        dns = DnsConfig(d.list_of_str("servers"), d.list_of_str("searches"), d.list_of_str("options"))
    ports = []
    for raw in p.list_of_dict("ports"):
        q = jsonrpc.Params(raw)
        ports.append(
            PortMapping(
                container_port=q.integer("container_port", required=True),
                host_port=q.integer("host_port", 0),
                host_ip=q.string("host_ip", ""),
                protocol=q.string("protocol", "tcp"),
            )
        )
    return PodCreateRequest(
        name=p.string("name", required=True),
        namespace=p.string("namespace", ""),
        uid=p.string("uid", ""),
        attempt=p.integer("attempt", 0),
        labels=p.dict_of_str("labels"),
        annotations=p.dict_of_str("annotations"),
        hostname=p.string("hostname", ""),
        log_directory=p.string("log_directory", ""),
        dns=dns,
        ports=ports,
        cgroup_parent=p.string("cgroup_parent", ""),
        network=p.string("network", "pod"),
        pid=p.string("pid", "container"),
        ipc=p.string("ipc", "pod"),
        sysctls=p.dict_of_str("sysctls"),
    )


class PodApi:
    def __init__(self, pods: Pods) -> None:
        self.pods = pods

    def register(self, d: jsonrpc.Dispatcher) -> None:
        d.add("pod.create", self.create)
        d.add("pod.stop", self.stop)
        d.add("pod.remove", self.remove)
        d.add("pod.inspect", self.inspect)
        d.add("pod.list", self.list)
        d.add("pod.network_config", self.network_config)
        d.add("pod.stats", self.stats)

    async def create(self, call: jsonrpc.Call) -> Any:
        """RunPodSandbox. Returns ``pod.inspect``'s record."""
        rec = await self.pods.create(create_request(call.params))
        return self.pods.describe(rec)

    async def stop(self, call: jsonrpc.Call) -> Any:
        """Stop every container of the pod and release its network. Returns ``{id, state}``."""
        p = call.params
        rec = await self.pods.stop(p.string("id", required=True), p.integer("timeout"))
        return {"id": rec.id, "state": rec.state}

    async def remove(self, call: jsonrpc.Call) -> Any:
        """Stop, then remove the pod and every container of it. Returns ``{id}``."""
        rec = await self.pods.remove(call.params.string("id", required=True))
        return {"id": rec.id}

    async def inspect(self, call: jsonrpc.Call) -> Any:
        return self.pods.inspect(call.params.string("id", required=True))

    async def list(self, call: jsonrpc.Call) -> Any:
        """Every pod, or those matching ``filters``: ``{id: [prefix...], state, labels}``."""
        raw = call.params.raw.get("filters")
        if raw is not None and not isinstance(raw, dict):
            raise InvalidParams("parameter 'filters' must be an object", param="filters")
        f = jsonrpc.Params(raw or {})
        return self.pods.list(
            ids=f.list_of_str("id"), state=f.string("state"), labels=f.dict_of_str("labels")
        )

    async def stats(self, call: jsonrpc.Call) -> Any:
        """One sample of the pod's figures and its running containers' (docs/api.md)."""
        return await self.pods.stats(call.params.string("id", required=True))

    async def network_config(self, call: jsonrpc.Call) -> Any:
        """The pod network; with ``pod_cidr``, the node's pod CIDR is recorded first."""
        cidr = call.params.string("pod_cidr")
        if cidr is None:
            return self.pods.network_config()
        return await self.pods.set_network_config(cidr)
