"""PodSandboxStats and ListPodSandboxStats (issue 16) through a real tug-cri and tugd, and the
pod-shared PID namespace's infra process: one process named ``pause``, PID 1 of the pod's
namespace, reaping the pod's orphans, in ``<cgroup parent>/<pod id>``; its cgroup removed with
the pod."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from cri.gen import api_pb2

from .conftest import needs_root, needs_runc
from .cri_helpers import TugCri, make_tug_cri
from .waiting import wait_until

__all__ = ["make_tug_cri"]  # fixtures, imported for this module's tests

pytestmark = [pytest.mark.integration, pytest.mark.network, needs_root, needs_runc, pytest.mark.timeout(600)]

PARENT = "/tugtest-podstats"


@pytest.fixture
def logdir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="tbpodst", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def cgroup_dirs(path: str) -> list[str]:
    """``path`` in every mounted cgroup hierarchy where it exists."""
    with open("/proc/self/mountinfo") as f:
        points = {
            line.split(" - ")[0].split(" ")[4] for line in f if line.split(" - ")[1].startswith("cgroup")
        }
    return sorted(
        os.path.join(p, path.strip("/")) for p in points if os.path.isdir(os.path.join(p, path.strip("/")))
    )


def infra_of(pod: dict[str, Any]) -> int:
    """The host pid of PID 1 of the pod's PID namespace (found by its namespace)."""
    ino = os.stat(pod["namespaces"]["pid"]).st_ino
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}/ns/pid").st_ino == ino:
                    found.append(int(entry))
            except OSError:
                continue
    # PID 1 inside is the one whose NSpid ends in 1.
    for pid in found:
        with open(f"/proc/{pid}/status") as f:
            nspid = next(line for line in f if line.startswith("NSpid:")).split()
        if nspid[-1] == "1":
            return pid
    raise AssertionError(f"no PID 1 in the pod's namespace among {found}")


def test_pod_stats_and_the_infra_process(
    make_daemon: Any, make_tug_cri: Any, backend: str, logdir: str
) -> None:
    d = make_daemon(backend, netns=True)
    cri: TugCri = make_tug_cri(d)
    rt = cri.runtime
    pod = d.call(
        "pod.create",
        {
            "name": "p",
            "namespace": "default",
            "uid": "u1",
            "log_directory": logdir,
            "cgroup_parent": PARENT,
            "pid": "pod",
            "labels": {"app": "stats"},
        },
    )
    pod_id = pod["id"]
    try:
        # The infra: one process named pause, in <parent>/<pod id> of every hierarchy.
        infra = infra_of(pod)
        with open(f"/proc/{infra}/comm") as f:
            assert f.read().strip() == "pause"
        with open(f"/proc/{infra}/cmdline", "rb") as raw:
            assert os.path.basename(raw.read().split(b"\0")[0].decode()) == "pause"
        ino = os.stat(pod["namespaces"]["pid"]).st_ino
        in_ns = [e for e in os.listdir("/proc") if e.isdigit() and _ns_ino(e) == ino]
        assert in_ns == [str(infra)]
        own = f"{PARENT}/{pod_id}"
        dirs = cgroup_dirs(own)
        assert dirs
        for path in dirs:
            with open(os.path.join(path, "cgroup.procs")) as f:
                assert str(infra) in f.read().split()

        # Orphans of the pod are reaped by it.
        subprocess.run(
            [
                "nsenter",
                f"--pid={pod['namespaces']['pid']}",
                "--",
                "sh",
                "-c",
                "sleep 0.2 & sleep 0.2 & exit 0",
            ],
            check=True,
        )
        wait_until(lambda: not _children(infra), 20, "the orphans to be reaped by the pod's PID 1")

        image = d.call("image.inspect", {"ref": "busybox"})["id"]
        config = api_pb2.ContainerConfig(
            metadata=api_pb2.ContainerMetadata(name="c", attempt=0),
            image=api_pb2.ImageSpec(image=image),
            command=["sh", "-c", "wget -q -T 1 -O /dev/null http://10.255.255.1/ || true; exec sleep 600"],
            log_path="c/0.log",
        )
        req = api_pb2.CreateContainerRequest(pod_sandbox_id=pod_id, config=config)
        cid = rt.CreateContainer(req).container_id
        rt.StartContainer(api_pb2.StartContainerRequest(container_id=cid))

        def stats() -> Any:
            return rt.PodSandboxStats(api_pb2.PodSandboxStatsRequest(pod_sandbox_id=pod_id[:12])).stats

        wait_until(
            lambda: stats().linux.network.default_interface.tx_bytes.value > 0, 30, "bytes sent by the pod"
        )
        s = stats()
        assert s.attributes.id == pod_id and s.attributes.metadata.name == "p"
        assert dict(s.attributes.labels) == {"app": "stats"}
        lx = s.linux
        assert lx.cpu.usage_core_nano_seconds.value > 0 and lx.cpu.timestamp > 0
        assert lx.memory.working_set_bytes.value > 0 and lx.memory.usage_bytes.value > 0
        assert lx.process.process_count.value >= 2  # the infra and the container's sleep
        assert lx.network.default_interface.name == "eth0"
        assert [i.name for i in lx.network.interfaces] == ["eth0"]
        assert [c.attributes.id for c in lx.containers] == [cid]
        assert lx.containers[0].memory.working_set_bytes.value > 0

        # The cAdvisor-style metrics: every series named by a descriptor, with its labels.
        descs = {
            x.name: list(x.label_keys)
            for x in rt.ListMetricDescriptors(api_pb2.ListMetricDescriptorsRequest()).descriptors
        }
        assert "container_cpu_usage_seconds_total" in descs
        assert descs["container_network_transmit_bytes_total"][-1] == "interface"
        all_metrics = rt.ListPodSandboxMetrics(api_pb2.ListPodSandboxMetricsRequest()).pod_metrics
        [pm] = [m for m in all_metrics if m.pod_sandbox_id == pod_id]
        net = {
            (m.name, dict(zip(descs[m.name], m.label_values, strict=True))["interface"]): m
            for m in pm.metrics
        }
        tx = net["container_network_transmit_bytes_total", "eth0"]
        assert tx.value.value > 0 and tx.metric_type == api_pb2.COUNTER and tx.timestamp > 0
        assert net["container_network_receive_bytes_total", "eth0"].metric_type == api_pb2.COUNTER
        assert net["container_network_transmit_packets_total", "eth0"].value.value > 0
        assert ("container_network_receive_packets_dropped_total", "eth0") in net
        [cm] = pm.container_metrics
        assert cm.container_id == cid
        by_name = {m.name: m for m in cm.metrics}
        assert set(by_name) <= set(descs)
        for m in cm.metrics:
            assert len(m.label_values) == len(descs[m.name])
        labels = dict(
            zip(
                descs["container_cpu_usage_seconds_total"],
                by_name["container_cpu_usage_seconds_total"].label_values,
                strict=True,
            )
        )
        assert labels["container"] == "c" and labels["pod"] == "p" and labels["namespace"] == "default"
        assert labels["id"] == cid
        assert by_name["container_cpu_usage_seconds_total"].value.value >= 0
        assert by_name["container_memory_working_set_bytes"].value.value > 0
        assert by_name["container_memory_working_set_bytes"].metric_type == api_pb2.GAUGE
        assert by_name["container_processes"].value.value >= 1
        # The finer figures: the cgroup's, the processes', the writable layer's, the record's.
        assert by_name["container_threads"].value.value >= 1
        assert by_name["container_file_descriptors"].value.value >= 1
        assert by_name["container_spec_cpu_period"].value.value > 0
        assert by_name["container_cpu_user_seconds_total"].metric_type == api_pb2.COUNTER
        assert "container_memory_rss" in by_name and "container_memory_max_usage_bytes" in by_name
        started = by_name["container_start_time_seconds"].value.value
        assert abs(started - time.time()) < 600
        fs = by_name["container_fs_usage_bytes"].value.value
        assert by_name["container_fs_limit_bytes"].value.value > fs
        assert by_name["container_fs_inodes_total"].value.value > 0
        failures = [m for m in cm.metrics if m.name == "container_memory_failures_total"]
        assert {tuple(m.label_values[-2:]) for m in failures} >= {("pgfault", "container")}

        def listed(**f: Any) -> list[str]:
            req = api_pb2.ListPodSandboxStatsRequest(filter=api_pb2.PodSandboxStatsFilter(**f))
            return [x.attributes.id for x in rt.ListPodSandboxStats(req).stats]

        assert listed() == [pod_id]
        assert listed(id=pod_id[:8]) == [pod_id]
        assert listed(id="0" * 12) == []
        assert listed(label_selector={"app": "stats"}) == [pod_id]
        assert listed(label_selector={"app": "other"}) == []
        with pytest.raises(grpc.RpcError) as info:
            rt.PodSandboxStats(api_pb2.PodSandboxStatsRequest(pod_sandbox_id="f" * 64))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND

        rt.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
        assert listed() == []  # ready pods only
        wait_until(lambda: not os.path.exists(f"/proc/{infra}"), 20, "the infra process to be gone")
    finally:
        d.call("pod.remove", {"id": pod_id})
    assert cgroup_dirs(own) == [] and cgroup_dirs(PARENT) == []


def _ns_ino(pid: str) -> int:
    try:
        return os.stat(f"/proc/{pid}/ns/pid").st_ino
    except OSError:
        return 0


def _children(pid: int) -> list[str]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return f.read().split()
