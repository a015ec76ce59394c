"""A container's finer limits (issue 16: the CRI's LinuxContainerResources) and its CPU rate,
against a real tugd, real tug-cri and real runc: the cgroup v1 files read after create, after
UpdateContainerResources and after a restart; refused input changing nothing; ContainerStats'
``usage_nano_cores``; ContainerStatus' ``user`` with both SupplementalGroupsPolicy values."""

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
from supervisor import spec
from tugwire.errors import InvalidArgument

from .conftest import needs_root, needs_runc
from .cri_helpers import TugCri, make_tug_cri
from .waiting import wait_until

__all__ = ["make_tug_cri"]

pytestmark = [pytest.mark.integration, needs_root, needs_runc, pytest.mark.timeout(600)]

POD = "feedf00d" * 8
V1 = not os.path.exists("/sys/fs/cgroup/cgroup.controllers")
needs_v1 = pytest.mark.skipif(not V1, reason="reads cgroup v1 files")


@pytest.fixture
def logdir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="tbcrires", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def make(d: Any, logdir: str, name: str, cmd: str = "exec sleep 600", **extra: Any) -> str:
    params = {
        "image": extra.pop("image", "busybox"),
        "name": f"k8s_{name}_{POD[:16]}_0",
        "pod_id": POD,
        "cmd": ["sh", "-c", cmd],
        "log_directory": logdir,
        "log_path": os.path.join(logdir, f"{name}.log"),
        **extra,
    }
    cid: str = d.call("container.create", params)["id"]
    return cid


def cgroup(cid: str, controller: str, name: str) -> str:
    with open(f"/sys/fs/cgroup/{controller}{spec.cgroup_path(cid)}/{name}") as f:
        return f.read().strip()


def files(cid: str) -> dict[str, str]:
    return {
        "shares": cgroup(cid, "cpu", "cpu.shares"),
        "quota": cgroup(cid, "cpu", "cpu.cfs_quota_us"),
        "period": cgroup(cid, "cpu", "cpu.cfs_period_us"),
        "cpus": cgroup(cid, "cpuset", "cpuset.cpus"),
        "memory": cgroup(cid, "memory", "memory.limit_in_bytes"),
        "swap": cgroup(cid, "memory", "memory.memsw.limit_in_bytes"),
    }


def oom_score_adj(pid: int) -> int:
    with open(f"/proc/{pid}/oom_score_adj") as f:
        return int(f.read())


def touched(log: str, host: str) -> bool:
    """The container's touch is done: it logged its error, or made its file."""
    return (os.path.exists(log) and os.path.getsize(log) > 0) or os.path.exists(
        os.path.join(host, "tmpfs", "f")
    )


def code_of(call: Any, *args: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call(*args)
    code: grpc.StatusCode = info.value.code()
    return code


@needs_v1
def test_limits_at_create_update_and_restart(
    make_daemon: Any, make_tug_cri: Any, backend: str, logdir: str
) -> None:
    d = make_daemon(backend)
    cri: TugCri = make_tug_cri(d)
    rt = cri.runtime
    cid = make(
        d,
        logdir,
        "lim",
        memory=64 << 20,
        memory_swap=128 << 20,
        cpu_shares=512,
        cpu_quota=50_000,
        cpu_period=100_000,
        cpuset_cpus="0",
        oom_score_adj=500,
    )
    d.call("container.start", {"id": cid})
    pid = d.call("container.inspect", {"id": cid})["pid"]
    assert files(cid) == {
        "shares": "512",
        "quota": "50000",
        "period": "100000",
        "cpus": "0",
        "memory": str(64 << 20),
        "swap": str(128 << 20),
    }
    assert oom_score_adj(pid) == 500

    ncpu = os.cpu_count() or 1
    cpus = f"0-{ncpu - 1}" if ncpu > 1 else "0"
    res = api_pb2.LinuxContainerResources(
        cpu_shares=1024,
        cpu_quota=20_000,
        cpu_period=50_000,
        cpuset_cpus=cpus,
        memory_limit_in_bytes=96 << 20,
        memory_swap_limit_in_bytes=192 << 20,
        oom_score_adj=800,
        hugepage_limits=[api_pb2.HugepageLimit(page_size="2MB", limit=0)],  # dropped
    )
    rt.UpdateContainerResources(api_pb2.UpdateContainerResourcesRequest(container_id=cid, linux=res))
    want = {
        "shares": "1024",
        "quota": "20000",
        "period": "50000",
        "cpus": cpus,
        "memory": str(96 << 20),
        "swap": str(192 << 20),
    }
    assert files(cid) == want
    assert oom_score_adj(pid) == 800
    s = rt.ContainerStatus(api_pb2.ContainerStatusRequest(container_id=cid)).status.resources.linux
    assert (s.cpu_shares, s.cpu_quota, s.cpu_period, s.cpuset_cpus) == (1024, 20_000, 50_000, cpus)
    assert (s.memory_limit_in_bytes, s.memory_swap_limit_in_bytes, s.oom_score_adj) == (
        96 << 20,
        192 << 20,
        800,
    )

    # Refused input: an error, nothing changed (a CPU this host has not; swap below memory).
    for bad in (
        api_pb2.LinuxContainerResources(cpuset_cpus=str(ncpu + 7), cpu_shares=300),
        api_pb2.LinuxContainerResources(memory_limit_in_bytes=300 << 20, cpu_shares=300),
        api_pb2.LinuxContainerResources(cpu_shares=1, memory_limit_in_bytes=70 << 20),
        api_pb2.LinuxContainerResources(oom_score_adj=1001, cpu_shares=300),
    ):
        req = api_pb2.UpdateContainerResourcesRequest(container_id=cid, linux=bad)
        assert code_of(rt.UpdateContainerResources, req) == grpc.StatusCode.INVALID_ARGUMENT
        assert files(cid) == want

    # A restart keeps them (the settings and the bundle).
    d.call("container.stop", {"id": cid, "timeout": 0})
    d.call("container.start", {"id": cid})
    assert files(cid) == want
    assert oom_score_adj(d.call("container.inspect", {"id": cid})["pid"]) == 800
    config = d.call("container.inspect", {"id": cid})["config"]
    assert (config["cpu_shares"], config["cpu_quota"], config["cpuset_cpus"]) == (1024, 20_000, cpus)

    # docker's cpus replaces the CRI's quota and period, and the other way round.
    d.call("container.update", {"id": cid, "cpus": 0.25})
    assert (cgroup(cid, "cpu", "cpu.cfs_quota_us"), cgroup(cid, "cpu", "cpu.cfs_period_us")) == (
        "25000",
        "100000",
    )
    assert d.call("container.inspect", {"id": cid})["config"]["cpu_quota"] is None
    d.call("container.delete", {"id": cid, "force": True})


def test_oom_score_adj_never_below_tugds(make_daemon: Any, logdir: str) -> None:
    """Without CAP_SYS_RESOURCE tugd cannot give less than its own: it gives its own."""
    d = make_daemon()
    cid = make(d, logdir, "oom", oom_score_adj=-999)
    d.call("container.start", {"id": cid})
    pid = d.call("container.inspect", {"id": cid})["pid"]
    assert d.proc is not None
    with open(f"/proc/{d.proc.pid}/status") as f:
        capeff = next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))
    with open(f"/proc/{d.proc.pid}/oom_score_adj") as f:
        own = int(f.read())
    assert oom_score_adj(pid) == (-999 if capeff >> 24 & 1 else max(-999, own))
    d.call("container.delete", {"id": cid, "force": True})


def test_usage_nano_cores(make_daemon: Any, make_tug_cri: Any, backend: str, logdir: str) -> None:
    """tugd keeps each container's previous CPU sample: the second stats has the rate, which a
    quota of half a CPU bounds."""
    d = make_daemon(backend)
    cri: TugCri = make_tug_cri(d)
    rt = cri.runtime
    cid = make(d, logdir, "busy", cmd="while :; do :; done", cpu_quota=50_000, cpu_period=100_000)
    d.call("container.start", {"id": cid})
    first = rt.ContainerStats(api_pb2.ContainerStatsRequest(container_id=cid)).stats
    assert not first.cpu.HasField("usage_nano_cores")  # no previous sample yet
    t0 = time.monotonic()
    wait_until(lambda: time.monotonic() - t0 > 1.0, 10, "a second to pass")
    second = rt.ContainerStats(api_pb2.ContainerStatsRequest(container_id=cid)).stats
    rate = second.cpu.usage_nano_cores.value
    assert 0 < rate <= 0.6e9, rate  # at most half a CPU (the quota), with some slack
    listed = rt.ListContainerStats(api_pb2.ListContainerStatsRequest()).stats
    assert [s.cpu.HasField("usage_nano_cores") for s in listed] == [True]
    d.call("container.delete", {"id": cid, "force": True})


def test_user_and_supplemental_groups_policy(
    make_daemon: Any, make_tug_cri: Any, backend: str, logdir: str
) -> None:
    """ContainerStatus.user is PID 1's identity as resolved: Merge adds the image's /etc/group
    memberships of the user (by the name its uid has in /etc/passwd), Strict does not."""
    d = make_daemon(backend)
    cri: TugCri = make_tug_cri(d)
    rt = cri.runtime
    status = rt.Status(api_pb2.StatusRequest())
    assert status.features.supplemental_groups_policy
    # An image whose /etc/group has user tug (1000) in wheel (10).
    ctx = os.path.join(logdir, "ctx")
    os.mkdir(ctx)
    with open(os.path.join(ctx, "group"), "w") as f:
        f.write("root:x:0:\ntug:x:1000:\nwheel:x:10:root,tug\nnogroup:x:65534:\n")
    with open(os.path.join(ctx, "Dockerfile"), "w") as f:
        f.write("FROM busybox\nCOPY group /etc/group\n")
    d.tug("build", "-q", "-t", "grouped", ctx, timeout=120)
    cmd = "id -G; exec sleep 600"
    got = {}
    for policy in ("merge", "strict"):
        cid = make(
            d,
            logdir,
            policy,
            cmd=cmd,
            image="grouped",
            run_as_user=1000,  # by uid: its name in /etc/passwd finds its groups (Merge)
            supplemental_groups=[1234],
            supplemental_groups_policy=policy,
        )
        d.call("container.start", {"id": cid})
        user = rt.ContainerStatus(api_pb2.ContainerStatusRequest(container_id=cid)).status.user.linux
        got[policy] = (user.uid, user.gid, sorted(user.supplemental_groups))
        path = os.path.join(logdir, f"{policy}.log")
        wait_until(lambda p=path: os.path.exists(p) and os.path.getsize(p) > 0, 20, "the log")  # type: ignore[misc]
        with open(path) as f:
            line = f.readline().split(" ", 3)[-1].split()
        assert sorted(int(g) for g in line) == got[policy][2]  # what the process has
        d.call("container.delete", {"id": cid, "force": True})
    assert got == {"merge": (1000, 1000, [10, 1000, 1234]), "strict": (1000, 1000, [1000, 1234])}
    with pytest.raises(Exception, match="merge or strict"):
        make(d, logdir, "bad", supplemental_groups_policy="loose")


def test_recursive_read_only_volume(make_daemon: Any, make_tug_cri: Any, logdir: str) -> None:
    """A recursive read-only volume: its submount (a tmpfs) is read-only too; a plain read-only
    one leaves the submount writable. Refused: rro without readonly, or with propagation."""
    d = make_daemon()
    cri: TugCri = make_tug_cri(d)
    handlers = cri.runtime.Status(api_pb2.StatusRequest()).runtime_handlers
    if not (handlers and handlers[0].features.recursive_read_only_mounts):
        pytest.skip("the runtime here makes no recursive read-only mounts")
    host = os.path.join(logdir, "vol")
    os.makedirs(os.path.join(host, "tmpfs"))
    subprocess.run(["mount", "-t", "tmpfs", "none", os.path.join(host, "tmpfs")], check=True)
    try:
        cmd = "touch /v/tmpfs/f 2>&1; exec sleep 600"
        for name, rro in (("plain", False), ("rro", True)):
            vol = {"source": host, "destination": "/v", "readonly": True, "recursive_readonly": rro}
            cid = make(d, logdir, name, cmd=cmd, volumes=[vol])
            d.call("container.start", {"id": cid})
            path = os.path.join(logdir, f"{name}.log")
            wait_until(lambda: touched(path, host), 20, "the touch")  # noqa: B023 (called at once)
            if rro:
                with open(path) as f:
                    assert "Read-only file system" in f.read()
            else:
                os.unlink(os.path.join(host, "tmpfs", "f"))  # made through the plain mount
            d.call("container.delete", {"id": cid, "force": True})
        for bad in ({"readonly": False}, {"readonly": True, "propagation": "rslave"}):
            vol = {"source": host, "destination": "/v", "recursive_readonly": True, **bad}
            with pytest.raises(InvalidArgument, match="recursive read-only"):
                make(d, logdir, "bad", volumes=[vol])
    finally:
        subprocess.run(["umount", "-l", os.path.join(host, "tmpfs")], check=False)
