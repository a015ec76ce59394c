"""A real kubelet drives Tugboat (issue 16, "A real kubelet"): kubelet v1.36.3, standalone (no API
server), its runtime tug-cri over a real tugd, all in a network namespace the test made. A static
pod of two busybox containers comes up with an address the namespace reaches (busybox httpd in one
container, fetched with a socket of the test's), its logs are where kubelet's pod log directory
says, kubelet restarts a container killed under it (``tug kill``), and removing the manifest tears
the pod down with nothing left (no shim, mount, pinned namespace, veth, pod or container).

Runs when scripts/install-kubelet.sh (``make kubelet``) has built the binary; ``make e2e-kubelet``
builds it (once: it is cached) and runs this. What it showed: docs/cri.md, "A real kubelet"."""

from __future__ import annotations

import ipaddress
import os
import time
from typing import Any

import pytest

from cri.gen import api_pb2

from .conftest import needs_root, needs_runc, netns_links
from .cri_helpers import TugCri, make_tug_cri
from .kubelet_helpers import KUBELET, LEGACY_LOG_DIR, NODE_NAME, Kubelet, try_http_get
from .waiting import wait_until

__all__ = ["make_tug_cri"]  # a fixture, imported for this module's test

pytestmark = [
    pytest.mark.integration,
    pytest.mark.network,
    needs_root,
    needs_runc,
    pytest.mark.timeout(900),
    pytest.mark.skipif(
        not os.access(KUBELET, os.X_OK),
        reason=f"kubelet is not built ({KUBELET}): `make kubelet` builds it (long, once), "
        "`make e2e-kubelet` builds it and runs this test",
    ),
]

POD_CIDR = "10.88.23.0/24"
POD = "tugpod"
POD_NAME = f"{POD}-{NODE_NAME}"  # kubelet names a static pod after its node
READY = api_pb2.SANDBOX_READY
PAGE = "hello from a pod that kubelet runs on tugboat"


def static_pod() -> dict[str, Any]:
    """Two busybox containers: ``web`` serves PAGE on 8080, ``ticker`` writes a line a second.
    ``busybox`` is the image tests/conftest.py imports into tugd (imagePullPolicy Never: there is
    no registry to pull from)."""
    busybox = {"image": "busybox", "imagePullPolicy": "Never"}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": POD, "namespace": "default", "labels": {"app": "tugboat-e2e"}},
        "spec": {
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 2,
            "containers": [
                {
                    **busybox,
                    "name": "web",
                    "command": [
                        "sh",
                        "-c",
                        f"mkdir -p /www && echo '{PAGE}' > /www/index.html && exec httpd -f -p 8080 -h /www",
                    ],
                    "ports": [{"containerPort": 8080}],
                },
                {
                    **busybox,
                    "name": "ticker",
                    "command": ["sh", "-c", "i=0; while :; do echo tick $i; i=$((i+1)); sleep 1; done"],
                },
            ],
        },
    }


def sandboxes(cri: TugCri) -> list[Any]:
    return list(cri.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items)


def ready_sandbox(cri: TugCri) -> Any:
    """The static pod's sandbox once it is ready, or None."""
    for p in sandboxes(cri):
        if p.metadata.name == POD_NAME and p.state == READY:
            return p
    return None


def containers(cri: TugCri) -> list[Any]:
    return list(cri.runtime.ListContainers(api_pb2.ListContainersRequest()).containers)


def running(cri: TugCri, name: str, attempt: int) -> Any:
    """The running container ``name`` of ``attempt``, or None."""
    for c in containers(cri):
        if c.metadata.name == name and c.metadata.attempt == attempt and c.state == api_pb2.CONTAINER_RUNNING:
            return c
    return None


def restart_count(kubelet: Kubelet, name: str) -> int | None:
    """The restart count kubelet reports for the container ``name`` of the pod (its /pods)."""
    for pod in kubelet.pods():
        if pod["metadata"]["name"] == POD_NAME:
            for status in pod.get("status", {}).get("containerStatuses", []):
                if status["name"] == name:
                    return int(status.get("restartCount", 0))
    return None


def shims_of(ids: set[str]) -> list[int]:
    """The pids of shims (their title is ``tug-shim ID``) of the containers ``ids``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].startswith(b"tug-shim") and any(i.encode() in b" ".join(argv) for i in ids):
            found.append(int(entry))
    return found


def mounts_under(path: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(path)]


def test_static_pod_under_a_real_kubelet(make_daemon: Any, make_tug_cri: Any, backend: str) -> None:
    d = make_daemon(backend=backend, netns=True)
    cri: TugCri = make_tug_cri(d)
    netns = f"/run/netns/{d.netns}"
    kubelet = Kubelet(netns, cri.endpoint, POD_CIDR)
    seen: set[str] = set()  # every container id the pod had
    phases: dict[str, float] = {}  # seconds each step took (printed: pytest -s or -rP shows them)
    clock = [time.monotonic()]

    def phase(name: str) -> None:
        now = time.monotonic()
        phases[name] = round(now - clock[0], 1)
        clock[0] = now

    def log_tail() -> str:
        return f"kubelet:\n{kubelet.read_log()[-4000:]}\ntug-cri:\n{cri.read_log()[-2000:]}"

    try:
        kubelet.start()
        phase("kubelet started (healthz)")
        manifest = kubelet.add_manifest(POD, static_pod())

        # The pod comes up: a ready sandbox with an address of the node's pod CIDR, both running.
        pod = wait_until(
            lambda: ready_sandbox(cri),
            180,
            "the static pod's sandbox",
            describe=log_tail,
        )
        assert pod.metadata.namespace == "default"
        assert pod.labels["app"] == "tugboat-e2e"
        web = wait_until(lambda: running(cri, "web", 0), 120, "web running", describe=log_tail)
        ticker = wait_until(lambda: running(cri, "ticker", 0), 120, "ticker running", describe=log_tail)
        seen |= {web.id, ticker.id}
        assert {web.pod_sandbox_id, ticker.pod_sandbox_id} == {pod.id}
        status = cri.runtime.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod.id)).status
        ip = status.network.ip
        phase("manifest to both containers running")
        assert ipaddress.ip_address(ip) in ipaddress.ip_network(POD_CIDR), ip

        # Its address answers from the test's namespace: httpd in the web container.
        got = wait_until(lambda: try_http_get(netns, ip, 8080, "/index.html"), 60, f"httpd on {ip}:8080")
        assert got == (200, PAGE.encode() + b"\n"), got

        # kubelet sees it, with its IP (its /pods: what PodSandboxStatus told it).
        kpod = wait_until(
            lambda: next((p for p in kubelet.pods() if p.get("status", {}).get("podIP") == ip), None),
            60,
            f"kubelet's /pods to show the pod at {ip}",
        )
        assert kpod["metadata"]["name"] == POD_NAME
        uid = kpod["metadata"]["uid"]
        assert pod.metadata.uid == uid

        # The logs are under kubelet's pod log directory, in the CRI format.
        log_dir = os.path.join(kubelet.pod_logs, f"default_{POD_NAME}_{uid}")
        first_log = os.path.join(log_dir, "ticker", "0.log")

        def ticks(path: str) -> bool:
            try:
                with open(path) as f:
                    return " stdout F tick 1\n" in f.read()
            except FileNotFoundError:
                return False

        wait_until(lambda: ticks(first_log), 60, f"ticks in {first_log}")
        phase("page fetched, logs there")
        assert os.path.exists(os.path.join(log_dir, "web", "0.log"))

        # Killed under kubelet (tug kill: SIGKILL to its main process): kubelet starts it again,
        # attempt 1, and counts the restart.
        d.tug("kill", ticker.id)
        again = wait_until(lambda: running(cri, "ticker", 1), 120, "ticker restarted", describe=log_tail)
        seen.add(again.id)
        phase("kill to the restarted container running")
        assert again.id != ticker.id
        old = cri.runtime.ContainerStatus(api_pb2.ContainerStatusRequest(container_id=ticker.id)).status
        assert old.state == api_pb2.CONTAINER_EXITED and old.exit_code == 137, old
        wait_until(lambda: restart_count(kubelet, "ticker") == 1, 60, "restartCount 1 in kubelet's /pods")
        wait_until(lambda: ticks(os.path.join(log_dir, "ticker", "1.log")), 60, "the restarted ticker's log")
        assert running(cri, "web", 0).id == web.id  # the other container untouched

        # The manifest removed: kubelet stops the pod, then its garbage collector (a minute's
        # period) removes the containers and the sandbox. Nothing of the pod is left.
        os.unlink(manifest)
        wait_until(
            lambda: not sandboxes(cri) and not containers(cri),
            240,
            "kubelet to stop and remove the pod",
            describe=lambda: (sandboxes(cri), containers(cri), log_tail()),
        )
        phase("manifest removed to no pod and no container")
        assert d.call("pod.list") == []
        assert d.call("container.list", {"all": True}) == []
        assert shims_of(seen) == []
        assert mounts_under(d.base) == []  # the pinned namespaces, the containers' roots
        assert [n for n in netns_links(d.netns) if n.startswith("tv")] == []  # the pod's veth
        assert not try_http_get(netns, ip, 8080, "/index.html")
        # kubelet's garbage collector removes the pod's log directory (the pass that removed it).
        wait_until(lambda: not os.path.exists(log_dir), 120, f"kubelet to remove {log_dir}")
        legacy = os.listdir(LEGACY_LOG_DIR) if os.path.isdir(LEGACY_LOG_DIR) else []
        assert [n for n in legacy if n.startswith(f"{POD_NAME}_")] == []  # kubelet's symlinks
        phase("log directory removed")
    finally:
        kubelet.stop()
        print(f"kubelet test ({backend}):", phases)
