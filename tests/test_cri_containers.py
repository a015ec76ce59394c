"""tug-cri's container RPCs (issue 16) against a real tugd and real runc: a gRPC client, then the
real crictl. Containers are made with tugd's ``container.create`` and a ``pod_id`` (what
CreateContainer sends), so that everything but CreateContainer itself is tested whether or not
tugd has pods yet; CreateContainer (and crictl ``create``) need ``pod.create`` and skip, saying
so, on a tugd without it."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from cri.gen import api_pb2
from tugwire.errors import InvalidArgument, MethodNotFound

from .conftest import needs_root, needs_runc
from .cri_helpers import TugCri, crictl, crictl_path, make_tug_cri
from .waiting import wait_until

__all__ = ["crictl_path", "make_tug_cri"]  # fixtures, imported for this module's tests

pytestmark = [pytest.mark.integration, needs_root, needs_runc, pytest.mark.timeout(3600)]

POD = "f00dfeed" * 8  # a pod id tugd need not know: containers only record it


@pytest.fixture
def logdir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="tbcrilog", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def read(path: str) -> bytes:
    """A file's bytes, or none while it does not exist."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return b""


def code_of(call: Any, *args: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call(*args)
    code: grpc.StatusCode = info.value.code()
    return code


def make_container(d: Any, logdir: str, name: str = "web", attempt: int = 1, **extra: Any) -> str:
    """A container as CreateContainer makes it (pod id, CRI name, labels, annotations, log path)."""
    params = {
        "image": "busybox",
        "name": f"k8s_{name}_{POD[:16]}_{attempt}",
        "pod_id": POD,
        "cmd": ["sh", "-c", "echo out; echo err >&2; exec sleep 600"],
        "labels": {"io.kubernetes.container.name": name, "tier": "web"},
        "annotations": {"io.kubernetes.container.hash": "abc", "note": "two words, ünïcode"},
        "log_directory": logdir,
        "log_path": os.path.join(logdir, name, f"{attempt}.log"),
        **extra,
    }
    cid: str = d.call("container.create", params)["id"]
    return cid


def has_pods(d: Any) -> bool:
    try:
        d.call("pod.list")
    except MethodNotFound:
        return False
    return True


def test_unknown_ids_and_idempotent_stop_remove(make_daemon: Any, make_tug_cri: Any, backend: str) -> None:
    d = make_daemon(backend)
    cri: TugCri = make_tug_cri(d)
    rt = cri.runtime
    rt.StopContainer(api_pb2.StopContainerRequest(container_id="nope", timeout=1))
    rt.RemoveContainer(api_pb2.RemoveContainerRequest(container_id="nope"))
    for call, req in (
        (rt.ContainerStatus, api_pb2.ContainerStatusRequest(container_id="nope")),
        (rt.StartContainer, api_pb2.StartContainerRequest(container_id="nope")),
        (rt.ExecSync, api_pb2.ExecSyncRequest(container_id="nope", cmd=["true"])),
        (rt.ReopenContainerLog, api_pb2.ReopenContainerLogRequest(container_id="nope")),
        (rt.ContainerStats, api_pb2.ContainerStatsRequest(container_id="nope")),
        (rt.UpdateContainerResources, api_pb2.UpdateContainerResourcesRequest(container_id="nope")),
    ):
        assert code_of(call, req) == grpc.StatusCode.NOT_FOUND, call
    assert list(rt.ListContainers(api_pb2.ListContainersRequest()).containers) == []
    assert list(rt.ListContainerStats(api_pb2.ListContainerStatsRequest()).stats) == []
    # A container that is not a pod's is not the CRI's: not listed.
    d.call("container.create", {"image": "busybox", "cmd": ["true"], "name": "plain"})
    assert list(rt.ListContainers(api_pb2.ListContainersRequest()).containers) == []
    # CreateContainer needs the pod from tugd: an unknown pod, or a tugd without pods, says so.
    create = api_pb2.CreateContainerRequest(
        pod_sandbox_id="nopod",
        config=api_pb2.ContainerConfig(
            metadata=api_pb2.ContainerMetadata(name="c"), image=api_pb2.ImageSpec(image="busybox")
        ),
    )
    want = grpc.StatusCode.NOT_FOUND if has_pods(d) else grpc.StatusCode.UNIMPLEMENTED
    assert code_of(rt.CreateContainer, create) == want


def test_lifecycle_status_list_exec_stats_reopen(
    make_daemon: Any, make_tug_cri: Any, backend: str, logdir: str
) -> None:
    d = make_daemon(backend)
    cri: TugCri = make_tug_cri(d)
    rt = cri.runtime
    vol = os.path.join(logdir, "vol")
    os.mkdir(vol)
    cid = make_container(d, logdir, volumes=[{"source": vol, "destination": "/data", "readonly": True}])
    other = make_container(d, logdir, name="side", attempt=0)
    bb = d.call("image.inspect", {"ref": "busybox"})

    status = rt.ContainerStatus(api_pb2.ContainerStatusRequest(container_id=cid[:12], verbose=True))
    s = status.status
    assert (s.id, s.metadata.name, s.metadata.attempt) == (cid, "web", 1)
    assert s.state == api_pb2.CONTAINER_CREATED and s.started_at == 0 and s.finished_at == 0
    assert abs(s.created_at - time.time_ns()) < 120 * 10**9
    assert dict(s.labels) == {"io.kubernetes.container.name": "web", "tier": "web"}  # no image labels
    assert dict(s.annotations) == {"io.kubernetes.container.hash": "abc", "note": "two words, ünïcode"}
    assert s.image_ref == bb["id"] and s.image.image == "docker.io/library/busybox:latest"
    assert s.log_path == os.path.join(logdir, "web", "1.log")
    assert [(m.container_path, m.host_path, m.readonly) for m in s.mounts] == [("/data", vol, True)]
    assert json.loads(status.info["info"])["id"] == cid
    assert s.stop_signal == api_pb2.SIGTERM  # busybox has no StopSignal: tugd's default

    rt.StartContainer(api_pb2.StartContainerRequest(container_id=cid))
    s = rt.ContainerStatus(api_pb2.ContainerStatusRequest(container_id=cid)).status
    assert s.state == api_pb2.CONTAINER_RUNNING and s.started_at >= s.created_at

    def listed(**f: Any) -> list[str]:
        req = api_pb2.ListContainersRequest(filter=api_pb2.ContainerFilter(**f))
        return sorted(c.id for c in rt.ListContainers(req).containers)

    assert listed() == sorted([cid, other])
    assert listed(id=cid[:10]) == [cid]
    assert listed(pod_sandbox_id=POD) == sorted([cid, other])
    assert listed(pod_sandbox_id="0" * 64) == []
    assert listed(state=api_pb2.ContainerStateValue(state=api_pb2.CONTAINER_RUNNING)) == [cid]
    assert listed(state=api_pb2.ContainerStateValue(state=api_pb2.CONTAINER_CREATED)) == [other]
    assert listed(label_selector={"io.kubernetes.container.name": "side"}) == [other]
    assert listed(label_selector={"tier": "web", "x": "y"}) == []
    c = next(c for c in rt.ListContainers(api_pb2.ListContainersRequest()).containers if c.id == cid)
    assert (c.pod_sandbox_id, c.metadata.name, c.image_ref) == (POD, "web", bb["id"])

    r = rt.ExecSync(api_pb2.ExecSyncRequest(container_id=cid, cmd=["sh", "-c", "echo o; echo e >&2; exit 7"]))
    assert (r.stdout, r.stderr, r.exit_code) == (b"o\n", b"e\n", 7)
    t0 = time.monotonic()
    assert (
        code_of(rt.ExecSync, api_pb2.ExecSyncRequest(container_id=cid, cmd=["sleep", "444"], timeout=1))
        == grpc.StatusCode.DEADLINE_EXCEEDED
    )
    assert time.monotonic() - t0 < 30
    wait_until(
        lambda: not any("444" in p[-1] for p in d.call("container.top", {"id": cid})["processes"]),
        20,
        "the timed-out exec to be killed",
    )

    rt.UpdateContainerResources(
        api_pb2.UpdateContainerResourcesRequest(
            container_id=cid, linux=api_pb2.LinuxContainerResources(memory_limit_in_bytes=64 << 20)
        )
    )
    s = rt.ContainerStatus(api_pb2.ContainerStatusRequest(container_id=cid)).status
    assert s.resources.linux.memory_limit_in_bytes == 64 << 20

    st = rt.ContainerStats(api_pb2.ContainerStatsRequest(container_id=cid)).stats
    assert st.attributes.id == cid and st.attributes.metadata.name == "web"
    assert st.memory.working_set_bytes.value > 0 and st.cpu.usage_core_nano_seconds.value > 0
    assert st.writable_layer.used_bytes.value >= 0 and st.writable_layer.fs_id.mountpoint == d.root
    listed_stats = rt.ListContainerStats(api_pb2.ListContainerStatsRequest()).stats
    assert [x.attributes.id for x in listed_stats] == [cid]  # the running ones

    # The log at the path kubelet named; renamed, then reopened: new output goes to a new file.
    path = s.log_path
    wait_until(lambda: b"err" in read(path), 20, "the log")
    os.rename(path, path + ".old")
    rt.ReopenContainerLog(api_pb2.ReopenContainerLogRequest(container_id=cid))
    assert os.path.exists(path)

    rt.StopContainer(api_pb2.StopContainerRequest(container_id=cid, timeout=1))
    s = rt.ContainerStatus(api_pb2.ContainerStatusRequest(container_id=cid)).status
    assert s.state == api_pb2.CONTAINER_EXITED and s.finished_at >= s.started_at > 0
    assert (s.exit_code, s.reason) == (137, "Error")  # sleep as PID 1 ignores SIGTERM
    assert code_of(rt.ReopenContainerLog, api_pb2.ReopenContainerLogRequest(container_id=cid)) == (
        grpc.StatusCode.FAILED_PRECONDITION
    )
    rt.StopContainer(api_pb2.StopContainerRequest(container_id=cid, timeout=1))  # again: fine
    rt.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=cid))
    rt.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=cid))
    assert code_of(rt.ContainerStatus, api_pb2.ContainerStatusRequest(container_id=cid)) == (
        grpc.StatusCode.NOT_FOUND
    )
    rt.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=other))


def test_crictl_ps_inspect_exec_logs_stats_stop_rm(
    make_daemon: Any, make_tug_cri: Any, crictl_path: str, logdir: str
) -> None:
    d = make_daemon()
    cri: TugCri = make_tug_cri(d)
    cid = make_container(d, logdir, cmd=["sh", "-c", "echo hello; echo oops >&2; exec sleep 600"])

    def run(*args: str, check: bool = True) -> Any:
        return crictl(crictl_path, cri, *args, check=check)

    assert run("ps", "-q").stdout.decode() == ""  # running ones only
    assert run("ps", "-a", "-q").stdout.decode() == f"{cid}\n"
    run("start", cid)
    ps = json.loads(run("ps", "-o", "json").stdout)["containers"]
    assert [(c["id"], c["metadata"]["name"], c["podSandboxId"]) for c in ps] == [(cid, "web", POD)]
    assert ps[0]["state"] == "CONTAINER_RUNNING"
    assert run("ps", "--pod", POD, "-q").stdout.decode() == f"{cid}\n"
    assert run("ps", "--label", "tier=web", "-q").stdout.decode() == f"{cid}\n"
    assert run("ps", "--name", "nomatch", "-q").stdout.decode() == ""

    info = json.loads(run("inspect", cid).stdout)
    assert info["status"]["labels"] == {"io.kubernetes.container.name": "web", "tier": "web"}
    assert info["status"]["logPath"] == os.path.join(logdir, "web", "1.log")
    assert info["info"]["id"] == cid

    out = run("exec", "-s", cid, "sh", "-c", "echo in; exit 0")
    assert out.stdout.rstrip(b"\n") == b"in"  # crictl prints it with newlines of its own
    bad = run("exec", "-s", cid, "sh", "-c", "exit 3", check=False)
    assert bad.returncode == 1 and b"exited with 3" in bad.stderr, bad  # crictl's own words
    slow = run("exec", "-s", "--timeout", "1", cid, "sleep", "333", check=False)
    assert slow.returncode != 0 and b"DeadlineExceeded" in slow.stderr + slow.stdout, slow

    wait_until(lambda: b"oops" in run("logs", cid).stderr, 20, "the log")
    logs = run("logs", cid)
    assert (logs.stdout, logs.stderr) == (b"hello\n", b"oops\n")

    stats = json.loads(run("stats", "-o", "json", cid).stdout)["stats"]
    assert stats[0]["attributes"]["id"] == cid and int(stats[0]["memory"]["workingSetBytes"]["value"]) > 0

    run("stop", "-t", "1", cid)
    assert json.loads(run("inspect", cid).stdout)["status"]["state"] == "CONTAINER_EXITED"
    run("rm", cid)
    assert run("ps", "-a", "-q").stdout.decode() == ""
    assert run("inspect", cid, check=False).returncode != 0


def test_create_container_in_a_pod(make_daemon: Any, make_tug_cri: Any, backend: str, logdir: str) -> None:
    """CreateContainer through the pod's namespaces and log directory (needs tugd's pods)."""
    d = make_daemon(backend, netns=True)  # the pod's network is made in a namespace of the test's
    if not has_pods(d):
        pytest.skip("tugd has no pod.create yet (the pods work of issue 16): CreateContainer needs a pod")
    cri: TugCri = make_tug_cri(d)
    rt = cri.runtime
    pod = d.call("pod.create", {"name": "p", "namespace": "default", "uid": "u1", "log_directory": logdir})
    pod_id = pod["id"]
    try:
        config = api_pb2.ContainerConfig(
            metadata=api_pb2.ContainerMetadata(name="c", attempt=0),
            image=api_pb2.ImageSpec(image=d.call("image.inspect", {"ref": "busybox"})["id"]),
            command=["sh", "-c"],
            args=["for n in net ipc uts; do readlink /proc/self/ns/$n; done; id -u; exec sleep 600"],
            labels={"a": "b"},
            annotations={"k": "v"},
            log_path="c/0.log",
            linux=api_pb2.LinuxContainerConfig(
                security_context=api_pb2.LinuxContainerSecurityContext(
                    run_as_user=api_pb2.Int64Value(value=1234),
                    readonly_rootfs=True,
                    capabilities=api_pb2.Capability(drop_capabilities=["ALL"]),
                    seccomp=api_pb2.SecurityProfile(profile_type=api_pb2.SecurityProfile.RuntimeDefault),
                )
            ),
        )
        req = api_pb2.CreateContainerRequest(pod_sandbox_id=pod_id, config=config)
        cid = rt.CreateContainer(req).container_id
        # The same name and attempt in the same pod again: refused.
        assert code_of(rt.CreateContainer, req) == grpc.StatusCode.ALREADY_EXISTS
        rt.StartContainer(api_pb2.StartContainerRequest(container_id=cid))
        log = os.path.join(logdir, "c", "0.log")
        wait_until(lambda: b"1234" in read(log), 20, "the log")
        text = read(log).decode()
        paths = d.call("pod.inspect", {"id": pod_id})["namespaces"]
        for kind, name in (("network", "net"), ("ipc", "ipc"), ("uts", "uts")):
            if paths.get(kind):
                assert f"{name}:[{os.stat(paths[kind]).st_ino}]" in text
        s = rt.ContainerStatus(api_pb2.ContainerStatusRequest(container_id=cid)).status
        assert (dict(s.labels), dict(s.annotations), s.log_path) == ({"a": "b"}, {"k": "v"}, log)
        rt.RemoveContainer(api_pb2.RemoveContainerRequest(container_id=cid))
    finally:
        d.call("pod.remove", {"id": pod_id})


def test_crictl_runp_create_start_logs(
    make_daemon: Any, make_tug_cri: Any, crictl_path: str, logdir: str
) -> None:
    """crictl's own pod and container configs, as in cri-tools' docs (needs tugd's pods)."""
    d = make_daemon(netns=True)
    if not has_pods(d):
        pytest.skip("tugd has no pod.create yet (the pods work of issue 16): crictl create needs a pod")
    cri: TugCri = make_tug_cri(d)

    def run(*args: str, check: bool = True) -> Any:
        return crictl(crictl_path, cri, *args, check=check)

    pod_json = os.path.join(logdir, "pod.json")
    ctr_json = os.path.join(logdir, "ctr.json")
    with open(pod_json, "w") as f:
        json.dump(
            {
                "metadata": {"name": "crictl-pod", "namespace": "default", "uid": "u-1", "attempt": 1},
                "log_directory": os.path.join(logdir, "pods", "u-1"),
                "linux": {},
            },
            f,
        )
    with open(ctr_json, "w") as f:
        json.dump(
            {
                "metadata": {"name": "box"},
                "image": {"image": "busybox"},
                "command": ["sh", "-c", "echo from-crictl; exec sleep 600"],
                "log_path": "box/0.log",
                "labels": {"app": "x"},
                "linux": {},
            },
            f,
        )
    pod_id = run("runp", pod_json).stdout.decode().strip()
    try:
        cid = run("create", pod_id, ctr_json, pod_json).stdout.decode().strip()
        run("start", cid)
        assert run("ps", "--pod", pod_id, "-q").stdout.decode() == f"{cid}\n"
        wait_until(lambda: b"from-crictl" in run("logs", cid).stdout, 20, "the log")
        assert os.path.exists(os.path.join(logdir, "pods", "u-1", "box", "0.log"))
        assert run("exec", "-s", cid, "echo", "hi").stdout.rstrip(b"\n") == b"hi"
        run("stop", "-t", "1", cid)
        run("rm", cid)
    finally:
        run("stopp", pod_id)
        run("rmp", pod_id)


# ----------------------------------------------------------------------------- the translation


def test_names_and_metadata_round_trip() -> None:
    from cri.containers import container_name, metadata_of

    md = api_pb2.ContainerMetadata(name="web-1", attempt=3)
    name = container_name(POD, md)
    assert name == f"k8s_web-1_{POD[:16]}_3"
    assert metadata_of(name) == md
    assert metadata_of("brave_otter") == api_pb2.ContainerMetadata(name="brave_otter")


def test_seccomp_and_security_context_translation() -> None:
    from cri.containers import create_params, seccomp_option

    sp = api_pb2.SecurityProfile
    ctx = api_pb2.LinuxContainerSecurityContext
    assert seccomp_option(ctx()) == "unconfined"
    assert seccomp_option(ctx(seccomp=sp(profile_type=sp.RuntimeDefault))) == "default"
    assert seccomp_option(ctx(seccomp=sp(profile_type=sp.Unconfined))) == "unconfined"
    assert seccomp_option(ctx(seccomp=sp(profile_type=sp.Localhost, localhost_ref="/p.json"))) == "/p.json"
    assert seccomp_option(ctx(seccomp_profile_path="runtime/default")) == "default"
    assert seccomp_option(ctx(seccomp_profile_path="localhost//x.json")) == "/x.json"
    for bad in (
        ctx(seccomp=sp(profile_type=sp.Localhost, localhost_ref="rel.json")),
        ctx(seccomp_profile_path="x"),
    ):
        with pytest.raises(InvalidArgument):
            seccomp_option(bad)

    pod = {"id": POD, "cgroup_parent": "/kubepods/p1", "log_directory": "/var/log/pods/x", "files": {}}
    cfg = api_pb2.ContainerConfig(
        metadata=api_pb2.ContainerMetadata(name="c", attempt=1),
        image=api_pb2.ImageSpec(image="busybox"),
        command=["/bin/sh"],
        args=["-c", "true"],
        envs=[api_pb2.KeyValue(key="A", value=b"1")],
        mounts=[
            api_pb2.Mount(
                host_path="/h",
                container_path="/c",
                readonly=True,
                propagation=api_pb2.PROPAGATION_BIDIRECTIONAL,
            )
        ],
        log_path="c/1.log",
        stop_signal=api_pb2.SIGINT,
        linux=api_pb2.LinuxContainerConfig(
            resources=api_pb2.LinuxContainerResources(
                memory_limit_in_bytes=1 << 26, cpu_quota=50_000, cpu_period=100_000
            ),
            security_context=ctx(
                run_as_user=api_pb2.Int64Value(value=0),
                run_as_group=api_pb2.Int64Value(value=5),
                supplemental_groups=[7],
                capabilities=api_pb2.Capability(add_capabilities=["NET_ADMIN"], drop_capabilities=["ALL"]),
                no_new_privs=True,
                masked_paths=["/proc/x"],
            ),
        ),
    )
    sandbox = api_pb2.PodSandboxConfig(
        linux=api_pb2.LinuxPodSandboxConfig(sysctls={"kernel.shm_rmid_forced": "1"})
    )
    params = create_params(
        api_pb2.CreateContainerRequest(config=cfg, sandbox_config=sandbox), pod, {"ipc": "host"}
    )
    assert params["entrypoint"] == ["/bin/sh"] and params["cmd"] == ["-c", "true"]
    assert params["env"] == ["A=1"] and params["stop_signal"] == "SIGINT"
    assert (params["run_as_user"], params["run_as_group"], params["supplemental_groups"]) == (0, 5, [7])
    assert (params["cap_add"], params["cap_drop"], params["no_new_privileges"]) == (
        ["NET_ADMIN"],
        ["ALL"],
        True,
    )
    assert params["masked_paths"] == ["/proc/x"] and "readonly_paths" not in params
    assert (params["memory"], params["cpu_quota"], params["cpu_period"]) == (1 << 26, 50_000, 100_000)
    assert params["supplemental_groups_policy"] == "merge" and params["oom_score_adj"] == 0
    assert params["log_path"] == "/var/log/pods/x/c/1.log" and params["log_directory"] == "/var/log/pods/x"
    assert params["cgroup_parent"] == "/kubepods/p1" and params["sysctls"] == {"kernel.shm_rmid_forced": "1"}
    assert params["volumes"] == [
        {"source": "/h", "destination": "/c", "readonly": True, "propagation": "rshared"}
    ]
    assert params["namespaces"] == {"ipc": "host"} and params["pod_id"] == POD
