"""The CRI's cAdvisor-style metrics: ListMetricDescriptors and ListPodSandboxMetrics, a
translation of tugd's ``pod.stats`` (docs/api.md) into the metric names and labels kubelet's CRI
stats provider and cAdvisor use. Only the figures tugd measures are described; nothing is kept
here, and each metric carries the time tugd read it (``timestamp_ns``). Mixed into
:class:`cri.runtime.RuntimeService`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import grpc.aio

from tugwire.errors import NotFound
from tugwire.timefmt import parse_rfc3339

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


C, G = api_pb2.COUNTER, api_pb2.GAUGE
# (name, help, type, container.stats' key): one series per container, labels LABELS.
SIMPLE = (
    ("container_cpu_usage_seconds_total", "Cumulative cpu time consumed in seconds.", C, "cpu_seconds"),
    (
        "container_cpu_user_seconds_total",
        "Cumulative user cpu time consumed in seconds.",
        C,
        "cpu_user_seconds",
    ),
    (
        "container_cpu_system_seconds_total",
        "Cumulative system cpu time consumed in seconds.",
        C,
        "cpu_system_seconds",
    ),
    (
        "container_cpu_cfs_periods_total",
        "Number of elapsed enforcement period intervals.",
        C,
        "cpu_cfs_periods",
    ),
    (
        "container_cpu_cfs_throttled_periods_total",
        "Number of throttled period intervals.",
        C,
        "cpu_cfs_throttled_periods",
    ),
    (
        "container_cpu_cfs_throttled_seconds_total",
        "Total time duration the container has been throttled.",
        C,
        "cpu_cfs_throttled_seconds",
    ),
    (
        "container_memory_usage_bytes",
        "Current memory usage in bytes, including all memory regardless of when it was accessed",
        G,
        "memory_usage",
    ),
    ("container_memory_working_set_bytes", "Current working set in bytes.", G, "memory_working_set"),
    ("container_memory_cache", "Number of bytes of page cache memory.", G, "memory_cache"),
    ("container_memory_rss", "Size of RSS in bytes.", G, "memory_rss"),
    ("container_memory_mapped_file", "Size of memory mapped files in bytes.", G, "memory_mapped_file"),
    (
        "container_memory_kernel_usage",
        "Size of kernel memory allocated in bytes.",
        G,
        "memory_kernel",
    ),
    ("container_memory_swap", "Container swap usage in bytes.", G, "memory_swap"),
    ("container_memory_max_usage_bytes", "Maximum memory usage recorded in bytes", G, "memory_max_usage"),
    ("container_memory_failcnt", "Number of memory usage hits limits", C, "memory_failcnt"),
    (
        "container_oom_events_total",
        "Count of out of memory events observed for the container",
        C,
        "oom_events",
    ),
    (
        "container_processes",
        "Number of processes running inside the container (the pids controller's tasks).",
        G,
        "pids",
    ),
    ("container_threads", "Number of threads running inside the container", G, "threads"),
    (
        "container_threads_max",
        "Maximum number of threads allowed inside the container, 0 if no limit",
        G,
        "pids_limit",
    ),
    (
        "container_file_descriptors",
        "Number of open file descriptors for the container.",
        G,
        "file_descriptors",
    ),
    ("container_sockets", "Number of open sockets for the container.", G, "sockets"),
    ("container_spec_cpu_period", "CPU period of the container.", G, "cpu_period"),
    ("container_spec_cpu_shares", "CPU share of the container.", G, "cpu_shares"),
    ("container_spec_memory_limit_bytes", "Memory limit for the container.", G, "memory_limit"),
    (
        "container_spec_memory_swap_limit_bytes",
        "Memory swap limit for the container.",
        G,
        "memory_swap_limit",
    ),
    (
        "container_start_time_seconds",
        "Start time of the container since unix epoch in seconds.",
        G,
        "started_at",
    ),
    ("container_last_seen", "Last time a container was seen by the exporter", G, "timestamp"),
)
CONTAINER_METRICS = tuple(Spec(name, text, kind, LABELS) for name, text, kind, _ in SIMPLE)
# The writable layer's filesystem figures: labels LABELS and the device.
FS_LABELS = (*LABELS, "device")
FS = (
    (
        "container_fs_usage_bytes",
        "Number of bytes that are consumed by the container on this filesystem.",
        "fs_usage",
    ),
    (
        "container_fs_limit_bytes",
        "Number of bytes that can be consumed by the container on this filesystem.",
        "fs_limit",
    ),
    ("container_fs_inodes_total", "Number of Inodes", "fs_inodes_total"),
    ("container_fs_inodes_free", "Number of available Inodes", "fs_inodes_free"),
)
FS_METRICS = tuple(Spec(name, text, G, FS_LABELS) for name, text, _ in FS)
# Per block device (container.stats' ``io``): reads and writes (bytes and operations).
IO = (
    ("container_fs_reads_bytes_total", "Cumulative count of bytes read", "read_bytes"),
    ("container_fs_reads_total", "Cumulative count of reads completed", "read_ops"),
    ("container_fs_writes_bytes_total", "Cumulative count of bytes written", "write_bytes"),
    ("container_fs_writes_total", "Cumulative count of writes completed", "write_ops"),
)
IO_METRICS = tuple(Spec(name, text, C, FS_LABELS) for name, text, _ in IO)
BLKIO = Spec(
    "container_blkio_device_usage_total",
    "Blkio Device bytes usage",
    C,
    (*LABELS, "device", "major", "minor", "operation"),
)
FAILURES = Spec(
    "container_memory_failures_total",
    "Cumulative count of memory allocation failures.",
    C,
    (*LABELS, "failure_type", "scope"),
)
EXTRA_METRICS = (*FS_METRICS, *IO_METRICS, BLKIO, FAILURES)


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
        for s in (*CONTAINER_METRICS, *EXTRA_METRICS, *NETWORK_METRICS.values())
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
    values = {
        **sample,
        "memory_limit": sample.get("memory_limit") or 0,
        "started_at": parse_rfc3339(sample["started_at"]) // 1_000_000_000
        if sample.get("started_at")
        else None,
        "timestamp": now // 1_000_000_000,
    }
    return [values.get(key) for *_, key in SIMPLE]


def extra_metrics(sample: dict[str, Any], labels: list[str], now: int) -> list[api_pb2.Metric]:
    """The series with labels of their own: the writable layer's filesystem, the block devices'
    I/O, and the page faults (cAdvisor's memory failures, container scope and hierarchy alike:
    the cgroup's ``total_`` figures)."""
    out = []
    device = sample.get("fs_device") or ""
    for spec, (*_, key) in zip(FS_METRICS, FS, strict=True):
        if sample.get(key) is not None:
            out.append(metric(spec, [*labels, device], sample[key], now))
    for dev in sample.get("io") or []:
        name = dev.get("name") or dev["device"]
        for spec, (*_, key) in zip(IO_METRICS, IO, strict=True):
            if dev.get(key) is not None:
                out.append(metric(spec, [*labels, name], dev[key], now))
        major, _, minor = dev["device"].partition(":")
        for op, key in (("Read", "read_bytes"), ("Write", "write_bytes")):
            if dev.get(key) is not None:
                out.append(metric(BLKIO, [*labels, name, major, minor, op], dev[key], now))
    for kind, key in (("pgfault", "memory_pgfault"), ("pgmajfault", "memory_pgmajfault")):
        if sample.get(key) is not None:
            out.extend(
                metric(FAILURES, [*labels, kind, scope], sample[key], now)
                for scope in ("container", "hierarchy")
            )
    return out


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
        cm.metrics.extend(extra_metrics(sample, labels, now))
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
