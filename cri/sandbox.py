"""The CRI's pod sandboxes: RunPodSandbox, StopPodSandbox, RemovePodSandbox, PodSandboxStatus
and ListPodSandbox, translated to tugd's ``pod.*`` methods (docs/api.md, "Pods"). tugd keeps the
pods; nothing is kept here. Mixed into :class:`cri.runtime.RuntimeService`."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from tugwire.errors import InvalidArgument, NotFound

from .errors import rpc
from .gen import api_pb2

if TYPE_CHECKING:
    from .tugd import Tugd

Context = grpc.aio.ServicerContext[Any, Any]

# NamespaceMode <-> tugd's pod.create modes.
MODE_NAMES = {api_pb2.POD: "pod", api_pb2.CONTAINER: "container", api_pb2.NODE: "node"}
MODES = {name: mode for mode, name in MODE_NAMES.items()}
PROTOCOLS = {api_pb2.TCP: "tcp", api_pb2.UDP: "udp"}
STATES = {"ready": api_pb2.SANDBOX_READY, "notready": api_pb2.SANDBOX_NOTREADY}
RUNTIME_HANDLERS = ("", "runc")


def create_params(config: api_pb2.PodSandboxConfig) -> dict[str, Any]:
    """``pod.create``'s params of a PodSandboxConfig. InvalidArgument for what tugd cannot do."""
    opts = config.linux.security_context.namespace_options
    modes = {}
    for key, mode in (("network", opts.network), ("pid", opts.pid), ("ipc", opts.ipc)):
        if mode not in MODE_NAMES:
            raise InvalidArgument(f"namespace mode {api_pb2.NamespaceMode.Name(mode)} for {key} of a pod")
        modes[key] = MODE_NAMES[mode]
    ports = []
    for pm in config.port_mappings:
        if pm.protocol not in PROTOCOLS:
            raise InvalidArgument(f"port protocol {api_pb2.Protocol.Name(pm.protocol)} is not supported")
        ports.append(
            {
                "container_port": pm.container_port,
                "host_port": pm.host_port,
                "host_ip": pm.host_ip,
                "protocol": PROTOCOLS[pm.protocol],
            }
        )
    md = config.metadata
    params: dict[str, Any] = {
        "name": md.name,
        "namespace": md.namespace,
        "uid": md.uid,
        "attempt": md.attempt,
        "labels": dict(config.labels),
        "annotations": dict(config.annotations),
        "hostname": config.hostname,
        "log_directory": config.log_directory,
        "ports": ports,
        "cgroup_parent": config.linux.cgroup_parent,
        "sysctls": dict(config.linux.sysctls),
        **modes,
    }
    if config.HasField("dns_config"):
        dns = config.dns_config
        params["dns"] = {
            "servers": list(dns.servers),
            "searches": list(dns.searches),
            "options": list(dns.options),
        }
    return params


def metadata(pod: dict[str, Any]) -> api_pb2.PodSandboxMetadata:
    return api_pb2.PodSandboxMetadata(
        name=pod["name"], uid=pod["uid"], namespace=pod["namespace"], attempt=pod["attempt"]
    )


def status_of(pod: dict[str, Any]) -> api_pb2.PodSandboxStatus:
    opts = pod["namespace_options"]
    return api_pb2.PodSandboxStatus(
        id=pod["id"],
        metadata=metadata(pod),
        state=STATES[pod["state"]],
        created_at=pod["created_ns"],
        network=api_pb2.PodSandboxNetworkStatus(ip=pod["network"]["ip"]),
        linux=api_pb2.LinuxPodSandboxStatus(
            namespaces=api_pb2.Namespace(
                options=api_pb2.NamespaceOption(
                    network=MODES[opts["network"]], pid=MODES[opts["pid"]], ipc=MODES[opts["ipc"]]
                )
            )
        ),
        labels=pod["labels"],
        annotations=pod["annotations"],
    )


def uint(value: Any) -> api_pb2.UInt64Value:
    return api_pb2.UInt64Value(value=max(0, int(value)))


def sandbox_stats(
    pod: dict[str, Any], figures: dict[str, Any], containers: list[api_pb2.ContainerStats]
) -> api_pb2.PodSandboxStats:
    """A PodSandboxStats from ``pod.inspect``'s record and ``pod.stats``' figures."""
    now = int(figures.get("timestamp_ns") or 0)
    linux = api_pb2.LinuxPodSandboxStats()
    linux.cpu.timestamp = now
    if figures.get("cpu_seconds") is not None:
        linux.cpu.usage_core_nano_seconds.CopyFrom(uint(float(figures["cpu_seconds"]) * 1e9))
    linux.memory.timestamp = now
    if figures.get("memory_working_set") is not None:
        linux.memory.working_set_bytes.CopyFrom(uint(figures["memory_working_set"]))
    if figures.get("memory_usage") is not None:
        linux.memory.usage_bytes.CopyFrom(uint(figures["memory_usage"]))
    linux.process.timestamp = now
    linux.process.process_count.CopyFrom(uint(figures.get("process_count") or 0))
    net = figures.get("network") or {}
    linux.network.timestamp = now
    for dev in net.get("interfaces") or []:
        usage = api_pb2.NetworkInterfaceUsage(
            name=dev["name"],
            rx_bytes=uint(dev["rx_bytes"]),
            rx_errors=uint(dev["rx_errors"]),
            tx_bytes=uint(dev["tx_bytes"]),
            tx_errors=uint(dev["tx_errors"]),
        )
        linux.network.interfaces.append(usage)
        if dev["name"] == net.get("default_interface"):
            linux.network.default_interface.CopyFrom(usage)
    linux.containers.extend(containers)
    return api_pb2.PodSandboxStats(
        attributes=api_pb2.PodSandboxAttributes(
            id=pod["id"], metadata=metadata(pod), labels=pod["labels"], annotations=pod["annotations"]
        ),
        linux=linux,
    )


class PodSandboxes:
    """The pod sandbox RPCs of the RuntimeService (a mixin: ``self.tugd`` is the tugd; the
    containers' ``_list`` and ``_stats`` are :class:`cri.containers.ContainerMethods`')."""

    tugd: Tugd

    if TYPE_CHECKING:

        async def _list(self, cid: str, pod_id: str) -> list[dict[str, Any]]: ...

        async def _stats(self, entries: list[dict[str, Any]]) -> list[api_pb2.ContainerStats]: ...

    async def _sandbox_stats(self, pod: dict[str, Any]) -> api_pb2.PodSandboxStats:
        figures = await self.tugd.call("pod.stats", {"id": pod["id"]})
        running = {c["id"] for c in figures.get("containers") or []}
        entries = [e for e in await self._list("", pod["id"]) if e["id"] in running]
        return sandbox_stats(pod, figures, await self._stats(entries))

    @rpc
    async def PodSandboxStats(
        self, request: api_pb2.PodSandboxStatsRequest, context: Context
    ) -> api_pb2.PodSandboxStatsResponse:
        """``pod.stats``: the pod's CPU, memory, processes and network, and its running
        containers' ContainerStats; NOT_FOUND for an unknown pod."""
        if not request.pod_sandbox_id:
            raise InvalidArgument("a pod sandbox id is required")
        pod = await self.tugd.call("pod.inspect", {"id": request.pod_sandbox_id})
        return api_pb2.PodSandboxStatsResponse(stats=await self._sandbox_stats(pod))

    @rpc
    async def ListPodSandboxStats(
        self, request: api_pb2.ListPodSandboxStatsRequest, context: Context
    ) -> api_pb2.ListPodSandboxStatsResponse:
        """The stats of the ready pods that pass the filter (an id prefix, every label)."""
        filters: dict[str, Any] = {"state": "ready"}
        f = request.filter
        if f.id:
            filters["id"] = [f.id]
        if f.label_selector:
            filters["labels"] = dict(f.label_selector)
        out = []
        for pod in await self.tugd.call("pod.list", {"filters": filters}):
            try:
                out.append(await self._sandbox_stats(pod))
            except NotFound:
                continue  # removed meanwhile
        return api_pb2.ListPodSandboxStatsResponse(stats=out)

    @rpc
    async def RunPodSandbox(
        self, request: api_pb2.RunPodSandboxRequest, context: Context
    ) -> api_pb2.RunPodSandboxResponse:
        """``pod.create``: pinned namespaces and an address on the pod network."""
        if request.runtime_handler not in RUNTIME_HANDLERS:
            raise InvalidArgument(f"no runtime handler {request.runtime_handler!r}: tugboat has runc only")
        pod = await self.tugd.call("pod.create", create_params(request.config))
        return api_pb2.RunPodSandboxResponse(pod_sandbox_id=pod["id"])

    @rpc
    async def StopPodSandbox(
        self, request: api_pb2.StopPodSandboxRequest, context: Context
    ) -> api_pb2.StopPodSandboxResponse:
        """``pod.stop``; an unknown or removed pod is success (kubelet retries)."""
        try:
            await self.tugd.call("pod.stop", {"id": request.pod_sandbox_id})
        except NotFound:
            pass
        return api_pb2.StopPodSandboxResponse()

    @rpc
    async def RemovePodSandbox(
        self, request: api_pb2.RemovePodSandboxRequest, context: Context
    ) -> api_pb2.RemovePodSandboxResponse:
        """``pod.remove`` (its containers too); an unknown or removed pod is success."""
        try:
            await self.tugd.call("pod.remove", {"id": request.pod_sandbox_id})
        except NotFound:
            pass
        return api_pb2.RemovePodSandboxResponse()

    @rpc
    async def PodSandboxStatus(
        self, request: api_pb2.PodSandboxStatusRequest, context: Context
    ) -> api_pb2.PodSandboxStatusResponse:
        """``pod.inspect``; NOT_FOUND for an unknown id. ``verbose``: ``info.info`` is tugd's
        whole record (namespace paths, files, containers) as JSON."""
        if not request.pod_sandbox_id:
            raise InvalidArgument("a pod sandbox id is required")
        pod = await self.tugd.call("pod.inspect", {"id": request.pod_sandbox_id})
        out = api_pb2.PodSandboxStatusResponse(status=status_of(pod))
        if request.verbose:
            out.info["info"] = json.dumps(pod, sort_keys=True)
        return out

    @rpc
    async def ListPodSandbox(
        self, request: api_pb2.ListPodSandboxRequest, context: Context
    ) -> api_pb2.ListPodSandboxResponse:
        """``pod.list`` with the filter's id (a prefix, as crictl gives), state and labels."""
        filters: dict[str, Any] = {}
        f = request.filter
        if f.id:
            filters["id"] = [f.id]
        if f.HasField("state"):
            filters["state"] = "ready" if f.state.state == api_pb2.SANDBOX_READY else "notready"
        if f.label_selector:
            filters["labels"] = dict(f.label_selector)
        pods = await self.tugd.call("pod.list", {"filters": filters})
        items = [
            api_pb2.PodSandbox(
                id=p["id"],
                metadata=metadata(p),
                state=STATES[p["state"]],
                created_at=p["created_ns"],
                labels=p["labels"],
                annotations=p["annotations"],
            )
            for p in pods
        ]
        return api_pb2.ListPodSandboxResponse(items=items)
