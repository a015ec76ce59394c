"""Crash consistency through the CRI (issue 16): ``kill -9`` of tugd, and of tug-cri, in the middle
of RunPodSandbox, CreateContainer and StopPodSandbox, then the retry kubelet would make (the same
RPC again, or Remove then a new Run). Afterwards: every container in its true state, and once the
pod is removed nothing left (no namespace mount, address, veth, shim, mount, infra process).

tugd is stopped at a precise point by its failpoints (``supervisor/failpoints.py``): ``kill`` (a
crash of tugd there) or ``stop`` (tugd frozen there while the test kills tug-cri, whose call it is
in the middle of, then lets it go on). tests/test_pods.py covers the same points through tugd's
own API (``pod.*``) without containers; here the client is kubelet's gRPC, through tug-cri.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
from typing import Any

import grpc
import pytest

from cri.gen import api_pb2
from supervisor.network.host import table_name

from .conftest import needs_root, needs_runc, netns_links
from .cri_helpers import TugCri, make_tug_cri
from .waiting import wait_until

__all__ = ["make_tug_cri"]  # a fixture, imported for this module's tests

pytestmark = [pytest.mark.integration, pytest.mark.network, needs_root, needs_runc, pytest.mark.timeout(600)]


def arm(d: Any, spec: str) -> None:
    """Restart ``d`` with the failpoints ``spec`` armed (for this one start)."""
    d.stop()
    d.start_env = {"TUGD_FAILPOINTS": spec}
    d.start()
    d.start_env = {}


def restart_after_crash(d: Any) -> None:
    assert d.proc is not None
    assert d.proc.wait(timeout=30) == -signal.SIGKILL
    d.proc = None
    d.start()


def pod_config(name: str = "crash", attempt: int = 0) -> Any:
    cfg = api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(
            name=name, namespace="default", uid=f"uid-{name}", attempt=attempt
        ),
        labels={"test": "crash"},
    )
    cfg.port_mappings.add(container_port=80, host_port=18091)
    return cfg


def container_config(d: Any, attempt: int = 0) -> Any:
    return api_pb2.ContainerConfig(
        metadata=api_pb2.ContainerMetadata(name="c", attempt=attempt),
        image=api_pb2.ImageSpec(image=d.call("image.inspect", {"ref": "busybox"})["id"]),
        command=["sleep", "600"],
    )


def pods(cri: TugCri) -> list[Any]:
    return list(cri.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items)


def containers(cri: TugCri) -> list[Any]:
    return list(cri.runtime.ListContainers(api_pb2.ListContainersRequest()).containers)


def mounts_under(path: str) -> list[str]:
    with open("/proc/self/mounts") as f:
        return [m for m in (line.split()[1] for line in f) if m.startswith(path + "/")]


def pids_mentioning(words: list[str]) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    argv = f.read()
            except OSError:
                continue
            if any(w.encode() in argv for w in words):
                found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def check_true_states(d: Any, cri: TugCri) -> None:
    """Every container CRI reports: running if and only if its process lives."""
    for c in containers(cri):
        st = cri.runtime.ContainerStatus(api_pb2.ContainerStatusRequest(container_id=c.id)).status
        pid = d.call("container.inspect", {"id": c.id}).get("pid") or 0
        running = st.state == api_pb2.CONTAINER_RUNNING
        assert running == (pid > 0 and alive(pid)), (st, pid)
        assert st.state != api_pb2.CONTAINER_UNKNOWN or st.reason, st


def remove_everything(cri: TugCri) -> None:
    """What kubelet does to a pod it gives up: containers stopped and removed, the pod too."""
    for c in containers(cri):
        cri.runtime.StopContainer(api_pb2.StopContainerRequest(container_id=c.id, timeout=0))
        cri.runtime.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=c.id))
    for p in pods(cri):
        cri.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=p.id))
        cri.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=p.id))


def assert_nothing_left(d: Any, cri: TugCri, ids: list[str]) -> None:
    assert pods(cri) == [] and containers(cri) == []
    assert [n for n in netns_links(d.netns) if n.startswith("tv")] == []
    assert mounts_under(d.state) == [] and mounts_under(d.root) == []
    assert os.listdir(os.path.join(d.state, "pods")) == []
    # shims (``tug-shim ID``) and infra processes (their command lines name the pod's directory)
    wait_until(lambda: not pids_mentioning([*ids, os.path.join(d.state, "pods")]), 10, "no process left")
    got = d.tug("pod", "ls", "-q")  # tugd still answers its own CLI
    assert got.stdout == b""
    nft = subprocess.run(
        ["nsenter", f"--net=/run/netns/{d.netns}", "nft", "list", "table", "ip", table_name(d.root)],
        capture_output=True,
        text=True,
    )
    assert "18091" not in nft.stdout


def run_and_start(d: Any, cri: TugCri, attempt: int = 0) -> tuple[str, str]:
    cfg = pod_config(attempt=attempt)
    pod = cri.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=cfg)).pod_sandbox_id
    req = api_pb2.CreateContainerRequest(pod_sandbox_id=pod, config=container_config(d), sandbox_config=cfg)
    cid = cri.runtime.CreateContainer(req).container_id
    cri.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=cid))
    st = cri.runtime.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod)).status
    assert st.state == api_pb2.SANDBOX_READY and st.network.ip
    return pod, cid


def rpc_fails(fn: Any, *args: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        fn(*args)
    code: grpc.StatusCode = info.value.code()
    return code


# ------------------------------------------------------------------------------ tugd killed


@pytest.mark.parametrize("point", ["pod.create.after_namespaces", "pod.create.after_network"])
def test_tugd_killed_in_run_pod_sandbox_then_the_same_run_again(
    make_daemon: Any, make_tug_cri: Any, point: str, backend: str
) -> None:
    d = make_daemon(backend=backend, netns=True)
    arm(d, f"{point}=kill")
    cri: TugCri = make_tug_cri(d)
    cfg = pod_config()
    assert rpc_fails(cri.runtime.RunPodSandbox, api_pb2.RunPodSandboxRequest(config=cfg)) == (
        grpc.StatusCode.UNAVAILABLE
    )
    restart_after_crash(d)
    # The half-made pod is undone at the restart: nothing listed, nothing pinned, no veth.
    assert pods(cri) == []
    assert mounts_under(os.path.join(d.state, "pods")) == []
    assert [n for n in netns_links(d.netns) if n.startswith("tv")] == []
    # kubelet's retry: the same RunPodSandbox, which now works, and the pod's life goes on.
    pod, cid = run_and_start(d, cri)
    check_true_states(d, cri)
    remove_everything(cri)
    assert_nothing_left(d, cri, [pod, cid])


@pytest.mark.parametrize("point", ["container.create.after_bundle", "container.create.after_db"])
def test_tugd_killed_in_create_container_then_remove_and_create_again(
    make_daemon: Any, make_tug_cri: Any, point: str
) -> None:
    d = make_daemon(netns=True)
    arm(d, f"{point}=kill")
    cri: TugCri = make_tug_cri(d)
    cfg = pod_config()
    pod = cri.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=cfg)).pod_sandbox_id
    req = api_pb2.CreateContainerRequest(pod_sandbox_id=pod, config=container_config(d), sandbox_config=cfg)
    assert rpc_fails(cri.runtime.CreateContainer, req) == grpc.StatusCode.UNAVAILABLE
    restart_after_crash(d)
    # The pod survived the crash, ready; the container is gone, or recorded as created only.
    st = cri.runtime.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod)).status
    assert st.state == api_pb2.SANDBOX_READY and st.network.ip
    left = containers(cri)
    assert [c.state for c in left] == ([api_pb2.CONTAINER_CREATED] if point.endswith("after_db") else [])
    check_true_states(d, cri)
    # kubelet's retry: what is there removed (the garbage collector), a new CreateContainer.
    for c in left:
        cri.runtime.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=c.id))
    cid = cri.runtime.CreateContainer(req).container_id
    cri.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=cid))
    check_true_states(d, cri)
    assert [c.state for c in containers(cri)] == [api_pb2.CONTAINER_RUNNING]
    remove_everything(cri)
    assert_nothing_left(d, cri, [pod, cid, *(c.id for c in left)])


@pytest.mark.parametrize("point", ["container.stop.after_signal", "pod.stop.after_unmount"])
def test_tugd_killed_in_stop_pod_sandbox_then_stop_and_remove_again(
    make_daemon: Any, make_tug_cri: Any, point: str, backend: str
) -> None:
    d = make_daemon(backend=backend, netns=True)
    arm(d, f"{point}=kill")
    cri: TugCri = make_tug_cri(d)
    pod, cid = run_and_start(d, cri)
    stop = api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod)
    assert rpc_fails(cri.runtime.StopPodSandbox, stop) == grpc.StatusCode.UNAVAILABLE
    restart_after_crash(d)
    # The container's true state: its sleep had its signal (or was stopped) before the crash.
    wait_until(
        lambda: [c.state for c in containers(cri)] == [api_pb2.CONTAINER_EXITED], 20, "the container exited"
    )
    check_true_states(d, cri)
    # kubelet's retry: StopPodSandbox again (idempotent), then RemovePodSandbox.
    cri.runtime.StopPodSandbox(stop)
    st = cri.runtime.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod)).status
    assert st.state == api_pb2.SANDBOX_NOTREADY and st.network.ip == ""
    cri.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod))
    assert_nothing_left(d, cri, [pod, cid])


# ------------------------------------------------------------------------------ tug-cri killed


def kill_tug_cri_mid_call(d: Any, cri: TugCri, call: Any, request: Any) -> None:
    """``call(request)`` while tugd freezes itself at its armed ``stop`` failpoint; then tug-cri is
    killed (SIGKILL) and tugd let go on, without the client whose call it was in."""
    assert d.proc is not None and cri.proc is not None
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(call, request)

        def stopped() -> bool:
            with open(f"/proc/{d.proc.pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] == "T"

        wait_until(stopped, 30, "tugd to stop at its failpoint")
        cri.proc.kill()
        cri.proc.wait()
        cri.proc = None
        with pytest.raises(grpc.RpcError):
            future.result(timeout=30)
    os.kill(d.proc.pid, signal.SIGCONT)


def settled(d: Any) -> bool:
    """No pod half-made and tugd answering."""
    return all(p["state"] in ("ready", "notready") for p in d.call("pod.list", {}))


@pytest.mark.parametrize("step", ["run", "create", "stop"])
def test_tug_cri_killed_mid_call_then_the_retry(make_daemon: Any, make_tug_cri: Any, step: str) -> None:
    point = {
        "run": "pod.create.after_network",
        "create": "container.create.after_db",
        "stop": "pod.stop.after_unmount",
    }[step]
    d = make_daemon(netns=True)
    arm(d, f"{point}=stop")
    cri: TugCri = make_tug_cri(d)
    cfg = pod_config()
    ids: list[str] = []
    if step == "run":
        kill_tug_cri_mid_call(d, cri, cri.runtime.RunPodSandbox, api_pb2.RunPodSandboxRequest(config=cfg))
    elif step == "create":
        pod = cri.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=cfg)).pod_sandbox_id
        ids.append(pod)
        req = api_pb2.CreateContainerRequest(
            pod_sandbox_id=pod, config=container_config(d), sandbox_config=cfg
        )
        kill_tug_cri_mid_call(d, cri, cri.runtime.CreateContainer, req)
    else:
        ids += run_and_start(d, cri)
        kill_tug_cri_mid_call(
            d, cri, cri.runtime.StopPodSandbox, api_pb2.StopPodSandboxRequest(pod_sandbox_id=ids[0])
        )
    wait_until(lambda: settled(d), 30, "tugd to finish or undo the call of the killed tug-cri")
    # kubelet is served by a new tug-cri on the same socket.
    cri = make_tug_cri(d)
    check_true_states(d, cri)
    listed = pods(cri)
    # tugd finishes a call whose client went away: the pod ready, the container created, the
    # pod stopped (and its container exited)
    want_pods = [api_pb2.SANDBOX_NOTREADY if step == "stop" else api_pb2.SANDBOX_READY]
    want_containers = {"run": [], "create": [api_pb2.CONTAINER_CREATED], "stop": [api_pb2.CONTAINER_EXITED]}
    assert [p.state for p in listed] == want_pods
    assert [c.state for c in containers(cri)] == want_containers[step]
    for p in listed:
        st = cri.runtime.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(pod_sandbox_id=p.id)).status
        info = d.call("pod.inspect", {"id": p.id})
        netns = info["namespaces"].get("network")
        # the state told is the true one: a ready pod has its namespace pinned and its address
        ready = st.state == api_pb2.SANDBOX_READY
        assert ready == bool(netns and netns in mounts_under(os.path.join(d.state, "pods"))), (st, info)
        assert ready == bool(st.network.ip)
    if step == "stop":
        # the retry: StopPodSandbox again, then remove
        cri.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=ids[0]))
        assert [c.state for c in containers(cri)] == [api_pb2.CONTAINER_EXITED]
    else:
        # the retry: whatever was made removed (kubelet's GC), then a new Run at the next attempt
        remove_everything(cri)
        ids += [p.id for p in listed]
        ids += run_and_start(d, cri, attempt=1)
        check_true_states(d, cri)
    ids += [c.id for c in containers(cri)]
    remove_everything(cri)
    assert_nothing_left(d, cri, ids)
