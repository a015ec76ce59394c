"""The CRI's cAdvisor-style metrics: ListMetricDescriptors and ListPodSandboxMetrics, a
translation of tugd's ``pod.stats`` (docs/api.md) into the metric names and labels kubelet's CRI
stats provider and cAdvisor use. Only the figures tugd measures are described; nothing is kept
here, and each metric carries the time tugd read it (``timestamp_ns``). Mixed into
:class:`cri.runtime.RuntimeService`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import grpc.aio

from tugwire.errors import NotFound

from .containers import image_spec, metadata_of
from .errors import rpc
from .gen import api_pb2

if TYPE_CHECKING:
    from .tugd import Tugd

Context = grpc.aio.ServicerContext[Any, Any]

# cAdvisor's labels of a container's series; the network ones add the interface.
LABELS = ("container", "id", "image", "name", "namespace", "pod")
NET_LABELS = (*LABELS, "interface")


class Spec(NamedTuple):
    name: str
    help: str
    kind: int  # api_pb2.COUNTER or api_pb2.GAUGE
    labels: tuple[str, ...]


CONTAINER_METRICS = (
    Spec(
        "container_cpu_usage_seconds_total",
        "Cumulative cpu time consumed in seconds.",
        api_pb2.COUNTER,
        LABELS,
    ),
    Spec(
        "container_memory_usage_bytes",
        "Current memory usage in bytes, including all memory regardless of when it was accessed",
        api_pb2.GAUGE,
        LABELS,
    ),
    Spec("container_memory_working_set_bytes", "Current working set in bytes.", api_pb2.GAUGE, LABELS),
    Spec(
        "container_processes",
        "Number of processes running inside the container (the pids controller's tasks).",
        api_pb2.GAUGE,
        LABELS,
    ),
    Spec("container_spec_memory_limit_bytes", "Memory limit for the container.", api_pb2.GAUGE, LABELS),
    Spec("container_last_seen", "Last time a container was seen by the exporter", api_pb2.GAUGE, LABELS),
)
# pod.stats' interface keys -> the network metrics (cumulative counters of the interface).
NETWORK = {
    "rx_bytes": ("container_network_receive_bytes_total", "Cumulative count of bytes received"),
    "rx_packets": ("container_network_receive_packets_total", "Cumulative count of packets received"),
    "rx_errors": (
        "container_network_receive_errors_total",
        "Cumulative count of errors encountered while receiving",
    ),
    "rx_dropped": (
        "container_network_receive_packets_dropped_total",
        "Cumulative count of packets dropped while receiving",
    ),
    "tx_bytes": ("container_network_transmit_bytes_total", "Cumulative count of bytes transmitted"),
    "tx_packets": ("container_network_transmit_packets_total", "Cumulative count of packets transmitted"),
    "tx_errors": (
        "container_network_transmit_errors_total",
        "Cumulative count of errors encountered while transmitting",
    ),
    "tx_dropped": (
        "container_network_transmit_packets_dropped_total",
        "Cumulative count of packets dropped while transmitting",
    ),
}
NETWORK_METRICS = {
    key: Spec(name, text, api_pb2.COUNTER, NET_LABELS) for key, (name, text) in NETWORK.items()
}


def descriptors() -> list[api_pb2.MetricDescriptor]:
    return [
        api_pb2.MetricDescriptor(name=s.name, help=s.help, label_keys=list(s.labels))
        for s in (*CONTAINER_METRICS, *NETWORK_METRICS.values())
    ]


def metric(spec: Spec, labels: list[str], value: float, now: int) -> api_pb2.Metric:
    return api_pb2.Metric(
        name=spec.name,
        timestamp=now,
        metric_type=spec.kind,  # type: ignore[arg-type]
        label_values=labels,
        value=api_pb2.UInt64Value(value=max(0, int(value))),
    )


def container_figures(sample: dict[str, Any], now: int) -> list[float | None]:
    """The values of CONTAINER_METRICS, in order, from a ``container.stats`` sample (None:
    tugd does not say). An unlimited container's limit is 0, as cAdvisor gives it."""
    cpu = sample.get("cpu_seconds")
    return [
        float(cpu) if cpu is not None else None,
        sample.get("memory_usage"),
        sample.get("memory_working_set"),
        sample.get("pids"),
        sample.get("memory_limit") or 0,
        now // 1_000_000_000,
    ]


def pod_metrics(
    pod: dict[str, Any], figures: dict[str, Any], entries: dict[str, Any]
) -> api_pb2.PodSandboxMetrics:
    """One pod's metrics from its ``pod.inspect`` record, ``pod.stats``' figures and its
    containers' ``container.list`` entries (by id). The network series are the pod's (cAdvisor
    gives them on the pod's sandbox container, container label ``POD``)."""
    now = int(figures.get("timestamp_ns") or 0)
    pod_labels = ["POD", pod["id"], "", pod["id"], pod["namespace"], pod["name"]]
    out = api_pb2.PodSandboxMetrics(pod_sandbox_id=pod["id"])
    for dev in (figures.get("network") or {}).get("interfaces") or []:
        for key, spec in NETWORK_METRICS.items():
            if dev.get(key) is not None:  # a tugd older than the packet counts
                out.metrics.append(metric(spec, [*pod_labels, dev["name"]], dev[key], now))
    for sample in figures.get("containers") or []:
        entry = entries.get(sample["id"])
        if entry is None:
            continue  # removed meanwhile
        name = metadata_of(entry["name"]).name
        labels = [name, sample["id"], image_spec(entry).image, sample["id"], pod["namespace"], pod["name"]]
        cm = api_pb2.ContainerMetrics(container_id=sample["id"])
        for spec, value in zip(CONTAINER_METRICS, container_figures(sample, now), strict=True):
            if value is not None:
                cm.metrics.append(metric(spec, labels, value, now))
        out.container_metrics.append(cm)
    return out


class PodMetrics:
    """ListMetricDescriptors and ListPodSandboxMetrics (a mixin: ``self.tugd`` is the tugd; the
    containers' ``_list`` is :class:`cri.containers.ContainerMethods`')."""

    tugd: Tugd

    if TYPE_CHECKING:

        async def _list(self, cid: str, pod_id: str) -> list[dict[str, Any]]: ...

    @rpc
    async def ListMetricDescriptors(
        self, request: api_pb2.ListMetricDescriptorsRequest, context: Context
    ) -> api_pb2.ListMetricDescriptorsResponse:
        """The metrics ListPodSandboxMetrics gives: those tugd measures."""
        return api_pb2.ListMetricDescriptorsResponse(descriptors=descriptors())

    @rpc
    async def ListPodSandboxMetrics(
        self, request: api_pb2.ListPodSandboxMetricsRequest, context: Context
    ) -> api_pb2.ListPodSandboxMetricsResponse:
        """Every ready pod's metrics: ``pod.list``, then ``pod.stats`` and ``container.list``."""
        out = []
        for pod in await self.tugd.call("pod.list", {"filters": {"state": "ready"}}):
            try:
                figures = await self.tugd.call("pod.stats", {"id": pod["id"]})
            except NotFound:
                continue  # removed meanwhile
            entries = {e["id"]: e for e in await self._list("", pod["id"])}
            out.append(pod_metrics(pod, figures, entries))
        return api_pb2.ListPodSandboxMetricsResponse(pod_metrics=out)
