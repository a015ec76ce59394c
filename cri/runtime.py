"""The CRI RuntimeService: the runtime's identity and health here (Version, Status,
RuntimeConfig, UpdateRuntimeConfig), the pod sandboxes in :mod:`.sandbox` (mixed in); every other
RuntimeService method answers ``UNIMPLEMENTED`` (docs/cri.md).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import grpc.aio

from tugwire.errors import TugError

from .containers import ContainerMethods
from .errors import rpc
from .gen import api_pb2, api_pb2_grpc
from .metrics import PodMetrics
from .sandbox import PodSandboxes
from .streaming import StreamServer
from .streamrpc import StreamingMethods
from .tugd import Tugd

log = logging.getLogger("tugboat.cri.runtime")

Context = grpc.aio.ServicerContext[Any, Any]

KUBELET_API_VERSION = "0.1.0"  # the only value kubelet accepts in VersionResponse.version
RUNTIME_API_VERSION = "v1"
RUNTIME_NAME = "tugboat"

NO_POD_NETWORK = "NoPodNetwork"
NETWORK_PLUGIN_NOT_READY = "NetworkPluginNotReady"  # CNI mode without a valid configuration


def handler_features(info: dict[str, Any] | None) -> api_pb2.RuntimeHandlerFeatures:
    """The default runtime handler's features: recursive read-only mounts as tugd's runtime
    makes them (``system.info``'s ``runtime_features``); no user namespaces."""
    features = (info or {}).get("runtime_features") or {}
    return api_pb2.RuntimeHandlerFeatures(
        recursive_read_only_mounts=bool(features.get("recursive_read_only_mounts"))
    )


class RuntimeService(
    PodSandboxes, PodMetrics, ContainerMethods, StreamingMethods, api_pb2_grpc.RuntimeServiceServicer
):
    """RuntimeService over one tugd: the runtime's identity and health here, the pods' RPCs
    from :class:`~cri.sandbox.PodSandboxes`, the containers' from
    :class:`~cri.containers.ContainerMethods`, Exec, Attach and PortForward from
    :class:`~cri.streamrpc.StreamingMethods`."""

    def __init__(self, tugd: Tugd, listen: str, streaming: StreamServer | None = None) -> None:
        self.tugd = tugd
        self.listen = listen
        self.streaming = streaming or StreamServer(tugd.socket)

    @rpc
    async def Version(self, request: api_pb2.VersionRequest, context: Context) -> api_pb2.VersionResponse:
        """``0.1.0`` (kubelet's one accepted value), ``tugboat``, tugd's version, ``v1``.
        UNAVAILABLE when tugd does not answer: there is no runtime to describe."""
        info = await self.tugd.call("system.info")
        return api_pb2.VersionResponse(
            version=KUBELET_API_VERSION,
            runtime_name=RUNTIME_NAME,
            runtime_version=str(info["version"]),
            runtime_api_version=RUNTIME_API_VERSION,
        )

    @rpc
    async def Status(self, request: api_pb2.StatusRequest, context: Context) -> api_pb2.StatusResponse:
        """``RuntimeReady`` is whether tugd answers ``system.info``; ``NetworkReady`` is whether
        tugd's pod network is ready (``pod.network_config``: the built-in bridge network is; CNI
        mode is when a valid configuration is found, else false with reason
        ``NetworkPluginNotReady`` and tugd's message; false, reason ``NoPodNetwork``, without an
        answer). ``features``: SupplementalGroupsPolicy is supported; the default runtime handler
        has recursive read-only mounts when tugd's runtime makes them. ``verbose`` adds ``info``: ``config``
        (tug-cri's sockets), ``tugd`` (its ``system.info``) and ``network`` (the pod network)
        as JSON."""
        info: dict[str, Any] | None = None
        try:
            info = await self.tugd.call("system.info")
            runtime = api_pb2.RuntimeCondition(type="RuntimeReady", status=True)
        except TugError as exc:
            runtime = api_pb2.RuntimeCondition(
                type="RuntimeReady", status=False, reason="TugdUnavailable", message=exc.message
            )
        net: dict[str, Any] | None = None
        try:
            net = await self.tugd.call("pod.network_config")
        except TugError as exc:
            network = api_pb2.RuntimeCondition(
                type="NetworkReady", status=False, reason=NO_POD_NETWORK, message=exc.message
            )
        else:
            network = api_pb2.RuntimeCondition(type="NetworkReady", status=bool(net["ready"]))
            if not net["ready"]:  # CNI mode without a valid configuration: as containerd says it
                network.reason = NETWORK_PLUGIN_NOT_READY if net.get("mode") == "cni" else NO_POD_NETWORK
                network.message = net.get("message") or "tugd's pod network is not ready"
        out = api_pb2.StatusResponse(
            status=api_pb2.RuntimeStatus(conditions=[runtime, network]),
            # SupplementalGroupsPolicy (Merge, Strict) and ContainerStatus.user are honoured.
            features=api_pb2.RuntimeFeatures(supplemental_groups_policy=True),
            runtime_handlers=[api_pb2.RuntimeHandler(name="", features=handler_features(info))],
        )
        if request.verbose:
            out.info["config"] = json.dumps({"listen": self.listen, "tugd_socket": self.tugd.socket})
            if info is not None:
                out.info["tugd"] = json.dumps(info, sort_keys=True)
            if net is not None:
                out.info["network"] = json.dumps(net, sort_keys=True)
        return out

    @rpc
    async def RuntimeConfig(
        self, request: api_pb2.RuntimeConfigRequest, context: Context
    ) -> api_pb2.RuntimeConfigResponse:
        """The cgroup driver: cgroupfs (tugd makes its cgroups itself; the proto's zero value,
        SYSTEMD, would be a wrong answer, so the field is always set)."""
        linux = api_pb2.LinuxRuntimeConfiguration(cgroup_driver=api_pb2.CgroupDriver.CGROUPFS)
        return api_pb2.RuntimeConfigResponse(linux=linux)

    @rpc
    async def UpdateRuntimeConfig(
        self, request: api_pb2.UpdateRuntimeConfigRequest, context: Context
    ) -> api_pb2.UpdateRuntimeConfigResponse:
        """The node's pod CIDR, forwarded to tugd (``pod.network_config``), which keeps it and
        makes it the pod network's subnet. An empty CIDR changes nothing."""
        cidr = request.runtime_config.network_config.pod_cidr
        if cidr:
            log.info("UpdateRuntimeConfig: pod CIDR %s", cidr)
            await self.tugd.call("pod.network_config", {"pod_cidr": cidr})
        return api_pb2.UpdateRuntimeConfigResponse()
