"""Pod sandboxes through tug-cri (issue 16): the real crictl (``runp``, ``pods``, ``inspectp``,
``stopp``, ``rmp``) and a gRPC client against a real tug-cri and a real tugd that runs in a
network namespace the test made; the pod's address answers from that namespace (the host side),
and nothing is left behind (namespaces unmounted, veths gone: checked by the fixtures too)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Any

import grpc
import pytest

from cri.gen import api_pb2

from .conftest import needs_root, needs_runc, netns_links
from .cri_helpers import TugCri, crictl, crictl_path, critest_path, make_tug_cri

__all__ = ["crictl_path", "critest_path", "make_tug_cri"]  # fixtures, imported for this module's tests

pytestmark = [
    pytest.mark.integration,
    pytest.mark.network,
    needs_root,
    needs_runc,
    pytest.mark.timeout(3600),  # the first run builds crictl
]

POD_JSON: dict[str, Any] = {
    "metadata": {
        "name": "nginx-sandbox",
        "namespace": "default",
        "attempt": 1,
        "uid": "hdishd83djaidwnduwk28bcsb",
    },
    "hostname": "sandbox-host",
    "log_directory": "/var/log/pods/default_nginx-sandbox_hdishd83djaidwnduwk28bcsb",
    "dns_config": {
        "servers": ["10.96.0.10"],
        "searches": ["default.svc.cluster.local"],
        "options": ["ndots:5"],
    },
    "port_mappings": [{"protocol": 0, "container_port": 80, "host_port": 18081}],
    "labels": {"app": "nginx", "weird": "a=b,c"},
    "annotations": {"kubernetes.io/config.source": "file", "empty": ""},
    "linux": {
        "cgroup_parent": "/kubepods/besteffort/podhdishd83",
        "sysctls": {"net.ipv4.ping_group_range": "0 2147483647"},
    },
}


def mounted(path: str) -> bool:
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == path for line in f)


def code_of(fn: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    code: grpc.StatusCode = info.value.code()
    return code


def test_crictl_runp_pods_inspectp_stopp_rmp(
    make_daemon: Any, make_tug_cri: Any, crictl_path: str, backend: str
) -> None:
    d = make_daemon(backend=backend, netns=True, image=False)
    cri: TugCri = make_tug_cri(d)

    def run(*args: str) -> str:
        return crictl(crictl_path, cri, *args).stdout.decode()

    # The node's pod CIDR, as kubelet gives it.
    update = api_pb2.UpdateRuntimeConfigRequest()
    update.runtime_config.network_config.pod_cidr = "10.88.7.0/24"
    cri.runtime.UpdateRuntimeConfig(update)
    info = json.loads(run("info"))
    assert {c["type"]: c["status"] for c in info["status"]["conditions"]} == {
        "RuntimeReady": True,
        "NetworkReady": True,
    }

    config = os.path.join(d.base, "pod.json")
    with open(config, "w") as f:
        json.dump(POD_JSON, f)
    pid = run("runp", config).strip()
    assert len(pid) == 64, pid

    status = json.loads(run("inspectp", "-o", "json", pid))
    st = status["status"]
    assert st["id"] == pid and st["state"] == "SANDBOX_READY"
    assert st["metadata"] == POD_JSON["metadata"]
    assert st["labels"] == POD_JSON["labels"] and st["annotations"] == POD_JSON["annotations"]
    assert st["network"]["ip"] == "10.88.7.2"
    assert st["createdAt"].startswith(time.strftime("%Y-", time.gmtime()))
    opts = st["linux"]["namespaces"]["options"]
    assert (opts["network"], opts["pid"], opts["ipc"]) == ("POD", "POD", "POD")  # crictl's zero values
    tugd_pod: dict[str, Any] = status["info"]  # verbose: tugd's pod.inspect
    netns = tugd_pod["namespaces"]["network"]
    assert mounted(tugd_pod["namespaces"]["pid"])  # pod-shared PID: the infra process holds it
    assert mounted(netns) and tugd_pod["cgroup_parent"] == POD_JSON["linux"]["cgroup_parent"]
    assert tugd_pod["sysctls"] == POD_JSON["linux"]["sysctls"]
    got = subprocess.run(
        ["nsenter", f"--net={netns}", "sysctl", "-n", "net.ipv4.ping_group_range"], capture_output=True
    )
    assert got.stdout.split() == [b"0", b"2147483647"]
    # The pod's address answers from the host side (tugd's namespace).
    ping = subprocess.run(
        ["nsenter", f"--net=/run/netns/{d.netns}", "busybox", "ping", "-c", "1", "-W", "2", "10.88.7.2"],
        capture_output=True,
    )
    assert ping.returncode == 0, ping

    listed = json.loads(run("pods", "-o", "json"))["items"]
    assert [p["id"] for p in listed] == [pid]
    assert run("pods", "-q", "--label", "app=nginx") == f"{pid}\n"
    assert run("pods", "-q", "--label", "app=other") == ""
    assert run("pods", "-q", "--state", "ready") == f"{pid}\n"
    assert run("pods", "-q", "--id", pid[:8]) == f"{pid}\n"
    assert run("pods", "-q", "--name", "nginx-sandbox") == f"{pid}\n"

    assert run("stopp", pid) == f"Stopped sandbox {pid}\n"
    st = json.loads(run("inspectp", "-o", "json", pid))["status"]
    assert st["state"] == "SANDBOX_NOTREADY" and st["network"]["ip"] == ""
    assert not mounted(netns)
    assert not [n for n in netns_links(d.netns) if n.startswith("tv")]
    assert run("pods", "-q", "--state", "notready") == f"{pid}\n"
    assert run("rmp", pid) == f"Removed sandbox {pid}\n"
    assert run("pods", "-q") == ""

    # Unknown and removed ids: NOT_FOUND for the status; stop and remove succeed.
    r = crictl(crictl_path, cri, "inspectp", pid, check=False)
    assert r.returncode != 0 and b"NotFound" in r.stderr, r.stderr
    assert code_of(
        lambda: cri.runtime.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pid))
    ) == (grpc.StatusCode.NOT_FOUND)
    cri.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pid))
    cri.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id="f" * 64))
    assert os.listdir(os.path.join(d.state, "pods")) == []


def test_grpc_sandbox_options_and_bad_requests(make_daemon: Any, make_tug_cri: Any) -> None:
    d = make_daemon(netns=True, image=False)
    cri: TugCri = make_tug_cri(d)
    cfg = api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(name="hostnet", namespace="kube-system", uid="u2", attempt=0),
        labels={"a": "1"},
    )
    cfg.linux.security_context.namespace_options.network = api_pb2.NODE
    cfg.linux.security_context.namespace_options.ipc = api_pb2.NODE
    cfg.linux.security_context.namespace_options.pid = api_pb2.NODE
    pid = cri.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=cfg)).pod_sandbox_id
    st = cri.runtime.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pid)).status
    opts = st.linux.namespaces.options
    assert (opts.network, opts.ipc, opts.pid) == (api_pb2.NODE, api_pb2.NODE, api_pb2.NODE)
    assert st.network.ip == "" and st.state == api_pb2.SANDBOX_READY
    # The same metadata again, a bad handler, SCTP, TARGET: refused, nothing made.
    assert code_of(lambda: cri.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=cfg))) == (
        grpc.StatusCode.ALREADY_EXISTS
    )
    bad_handler = api_pb2.RunPodSandboxRequest(config=cfg, runtime_handler="kata")
    assert code_of(lambda: cri.runtime.RunPodSandbox(bad_handler)) == grpc.StatusCode.INVALID_ARGUMENT
    sctp = api_pb2.PodSandboxConfig(metadata=api_pb2.PodSandboxMetadata(name="sctp"))
    sctp.port_mappings.add(protocol=api_pb2.SCTP, container_port=5, host_port=5)
    assert code_of(lambda: cri.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=sctp))) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    noname = api_pb2.PodSandboxConfig()
    assert code_of(lambda: cri.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=noname))) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    items = cri.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items
    assert [p.id for p in items] == [pid]
    f = api_pb2.PodSandboxFilter(state=api_pb2.PodSandboxStateValue(state=api_pb2.SANDBOX_NOTREADY))
    assert list(cri.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest(filter=f)).items) == []
    cri.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pid))
    assert "Traceback" not in cri.read_log()


CRITEST_POD_SPECS = (
    r"Runtime info runtime should support returning runtime info"
    r"|PodSandbox runtime should support basic operations on PodSandbox"
    r"|Idempotence (StopPodSandbox|RemovePodSandbox)"
)


def test_critest_runtime_info_and_pod_sandbox_specs_pass(
    make_daemon: Any, make_tug_cri: Any, critest_path: str
) -> None:
    """critest's Runtime info specs (NetworkReady is true now), its basic PodSandbox specs and
    the pod idempotence specs. Its sysctl PodSandbox specs need registry.k8s.io images and
    containers (docs/cri.md)."""
    d = make_daemon(netns=True, image=False)
    cri: TugCri = make_tug_cri(d)
    r = subprocess.run(
        [
            critest_path,
            "--runtime-endpoint",
            cri.endpoint,
            "--image-endpoint",
            cri.endpoint,
            "--ginkgo.focus",
            CRITEST_POD_SPECS,
            "--ginkgo.no-color",
        ],
        capture_output=True,
        timeout=900,
        cwd=d.base,  # critest looks for a crictl.yaml beside itself and in its directory
        stdin=subprocess.DEVNULL,
    )
    out = r.stdout.decode(errors="replace")
    assert r.returncode == 0, f"{out[-4000:]}\n{r.stderr.decode(errors='replace')[-2000:]}"
    assert "Ran 9 of " in out and "SUCCESS! -- 9 Passed | 0 Failed" in out, out[-4000:]
    assert d.call("pod.list") == []
