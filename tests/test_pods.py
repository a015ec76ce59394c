"""Pods in tugd (issue 16): ``pod.*`` with a real tugd in a network namespace the test made
(``make_daemon(netns=True)``): pinned namespaces, an address on the pod network reachable from
the host side, host ports, stop and remove leaving nothing, recovery after kill -9."""

from __future__ import annotations

import concurrent.futures
import ipaddress
import json
import os
import subprocess
import time
from typing import Any

import pytest

from tugwire import errors

from .conftest import TUGD, needs_root, needs_runc, netns_links
from .helpers import start
from .test_events import collect
from .waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.network, needs_root, needs_runc]


def in_ns(d: Any, *cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["nsenter", f"--net=/run/netns/{d.netns}", *cmd], capture_output=True, text=True, timeout=20
    )


def mounted(path: str) -> bool:
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == path for line in f)


def pings(d: Any, ip: str) -> bool:
    return in_ns(d, "busybox", "ping", "-c", "1", "-W", "2", ip).returncode == 0


POD = {
    "name": "web",
    "namespace": "default",
    "uid": "u-1",
    "attempt": 0,
    "hostname": "web-host",
    "labels": {"app": "web", "tier": "front"},
    "annotations": {"note": "a b=c"},
    "log_directory": "/var/log/pods/default_web_u-1",
    "dns": {"servers": ["10.0.0.10"], "searches": ["svc.local"], "options": ["ndots:5"]},
    "cgroup_parent": "/kubepods/pod-u-1",
    "pid": "pod",
    "sysctls": {"net.ipv4.ip_unprivileged_port_start": "53", "kernel.shmmni": "1000"},
}


def test_pod_life(make_daemon: Any, backend: str) -> None:
    d = make_daemon(backend=backend, netns=True, image=False)
    pod = d.call("pod.create", POD)
    pid = pod["id"]
    assert pod["state"] == "ready"
    assert (pod["labels"], pod["annotations"]) == (POD["labels"], POD["annotations"])
    assert pod["cgroup_parent"] == "/kubepods/pod-u-1"
    ns = pod["namespaces"]
    for kind in ("network", "ipc", "uts", "pid"):
        assert ns[kind] and mounted(ns[kind]), (kind, ns)
    # The pod-shared PID namespace: its infra process is PID 1, a newcomer gets another pid.
    joined = subprocess.run(
        ["nsenter", f"--pid={ns['pid']}", "sh", "-c", "echo $$"], capture_output=True, text=True
    )
    assert joined.returncode == 0 and int(joined.stdout) > 1, joined
    uts = subprocess.run(["nsenter", f"--uts={ns['uts']}", "hostname"], capture_output=True, text=True)
    assert uts.stdout.strip() == "web-host"
    # Sysctls in the pod's own namespaces, the host's untouched.
    for kind, key, want in (
        ("net", "net/ipv4/ip_unprivileged_port_start", "53"),
        ("ipc", "kernel/shmmni", "1000"),
    ):
        path = ns["network" if kind == "net" else "ipc"]
        got = subprocess.run(
            ["nsenter", f"--{kind}={path}", "cat", f"/proc/sys/{key}"], capture_output=True, text=True
        )
        assert got.stdout.strip() == want
        with open(f"/proc/sys/{key}") as f:
            assert f.read().strip() != want
    ip = pod["network"]["ip"]
    net = d.call("pod.network_config")
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(net["subnet"])
    assert pings(d, ip)  # the host side reaches the pod
    with open(pod["files"]["resolv.conf"]) as f:
        assert f.read() == "nameserver 10.0.0.10\nsearch svc.local\noptions ndots:5\n"
    veths = [n for n in netns_links(d.netns) if n.startswith("tv")]
    assert veths == [f"tv0{pid[:12]}"]
    # The same name, namespace, uid and attempt again: refused, nothing changed.
    with pytest.raises(errors.AlreadyExists):
        d.call("pod.create", POD)
    other = d.call("pod.create", {**POD, "attempt": 1, "labels": {"app": "other"}})
    assert other["network"]["ip"] != ip
    # Filters.
    assert [p["id"] for p in d.call("pod.list", {"filters": {"labels": {"app": "web"}}})] == [pid]
    assert [p["id"] for p in d.call("pod.list", {"filters": {"id": [pid[:6]]}})] == [pid]
    assert len(d.call("pod.list")) == 2
    # Stop: not ready, namespaces unmounted, address and veth gone; idempotent.
    assert d.call("pod.stop", {"id": pid})["state"] == "notready"
    assert d.call("pod.stop", {"id": pid})["state"] == "notready"
    assert not any(mounted(p) for p in ns.values() if p)
    assert f"tv0{pid[:12]}" not in netns_links(d.netns)
    stopped = d.call("pod.inspect", {"id": pid})
    assert stopped["network"]["ip"] == "" and stopped["namespaces"]["network"] is None
    assert [p["id"] for p in d.call("pod.list", {"filters": {"state": "notready"}})] == [pid]
    assert [p["id"] for p in d.call("pod.list", {"filters": {"state": "ready"}})] == [other["id"]]
    # Remove (a ready pod too: it is stopped first).
    d.call("pod.remove", {"id": pid})
    d.call("pod.remove", {"id": other["id"]})
    with pytest.raises(errors.NotFound):
        d.call("pod.inspect", {"id": pid})
    assert d.call("pod.list") == []
    assert not [n for n in netns_links(d.netns) if n.startswith("tv")]
    assert os.listdir(os.path.join(d.state, "pods")) == []
    # Events: create, stop, destroy, with the pod's labels and metadata.
    events = collect(d, {"until": time.time_ns(), "filters": {"type": ["pod"]}})
    mine = [(e["action"], e["attributes"]["app"]) for e in events if e["id"] == pid]
    assert mine == [("create", "web"), ("stop", "web"), ("destroy", "web")], events


def test_pod_cidr_host_ports_and_bad_requests(make_daemon: Any) -> None:
    d = make_daemon(netns=True)
    with pytest.raises(errors.InvalidArgument):
        d.call("pod.network_config", {"pod_cidr": "fd00:10::/64"})
    with pytest.raises(errors.InvalidArgument):
        d.call("pod.network_config", {"pod_cidr": "10.244.3.0/33"})
    got = d.call("pod.network_config", {"pod_cidr": "fd00:10::/64,10.244.3.0/24"})
    assert (got["pod_cidr"], got["subnet"], got["ready"]) == ("10.244.3.0/24", "", True)
    pod = d.call(
        "pod.create",
        {"name": "p", "ports": [{"container_port": 80, "host_port": 18080, "protocol": "tcp"}]},
    )
    assert pod["network"]["ip"] == "10.244.3.2"
    assert d.call("network.inspect", {"id": "cri"})["containers"][pod["id"]]["name"] == "pod p"
    assert d.call("pod.network_config")["subnet"] == "10.244.3.0/24"
    from supervisor.network.host import table_name

    rules = in_ns(d, "nft", "list", "table", "ip", table_name(d.root)).stdout
    assert "18080" in rules and "10.244.3.2:80" in rules
    # A server in the pod's network namespace answers on the host port.
    server = subprocess.Popen(
        [
            "nsenter",
            f"--net={pod['namespaces']['network']}",
            "busybox",
            "nc",
            "-l",
            "-p",
            "80",
            "-e",
            "echo",
            "hi",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        from .waiting import wait_until

        def answer() -> str | None:
            res = in_ns(d, "busybox", "timeout", "2", "busybox", "nc", "10.244.3.1", "18080")
            return res.stdout if "hi" in res.stdout else None

        wait_until(answer, 20, "the pod's server on the host port", interval=0.1)
    finally:
        server.kill()
        server.wait()
    # The same host port again: refused, nothing made; a container's too.
    with pytest.raises(errors.InvalidArgument):
        d.call("pod.create", {"name": "q", "ports": [{"container_port": 81, "host_port": 18080}]})
    cid = d.call("container.create", {"image": "busybox", "cmd": ["sleep", "9"], "ports": ["18080:80"]})["id"]
    with pytest.raises(errors.FailedPrecondition, match="a pod's host port"):
        d.call("container.start", {"id": cid})
    d.call("container.delete", {"id": cid, "force": True})
    with pytest.raises(errors.FailedPrecondition, match="pods exist"):
        d.call("system.reset")
    for bad in (
        {"name": ""},
        {"name": "x", "network": "bogus"},
        {"name": "x", "hostname": "bad host"},
        {"name": "x", "ports": [{"container_port": 0}]},
        {"name": "x", "ports": [{"container_port": 1, "protocol": "sctp"}]},
        {"name": "x", "sysctls": {"kernel.panic": "1"}},  # the host's: never a pod's
        {"name": "x", "network": "node", "sysctls": {"net.ipv4.ip_forward": "1"}},
        {"name": "x", "sysctls": {"net.ipv4.no_such_knob": "1"}},  # sysctl fails: undone
    ):
        with pytest.raises((errors.InvalidArgument, errors.InvalidParams)):
            d.call("pod.create", bad)
    assert [p["name"] for p in d.call("pod.list")] == ["p"]
    assert os.listdir(os.path.join(d.state, "pods")) == [pod["id"]]  # nothing of the refused ones
    # A pod CIDR while a pod uses the network: recorded, the subnet kept.
    assert d.call("pod.network_config", {"pod_cidr": "10.245.0.0/24"})["subnet"] == "10.244.3.0/24"
    d.call("pod.remove", {"id": pod["id"]})
    assert "18080" not in in_ns(d, "nft", "list", "table", "ip", table_name(d.root)).stdout
    # Host network and host IPC: no namespace of its own.
    host = d.call("pod.create", {"name": "h", "network": "node", "ipc": "node"})
    assert host["namespaces"] == {"network": None, "ipc": None, "uts": None, "pid": None}
    # tug pod: ls, inspect, stop, rm (by name or id prefix).
    table = d.tug("pod", "ls").stdout.decode().splitlines()
    assert table[0].split()[:4] == ["POD", "ID", "NAME", "NAMESPACE"]
    assert table[1].split()[:5] == [host["id"][:12], "h", "READY", "host", "0"]
    assert d.tug("pod", "ls", "-q", "--state", "notready").stdout == b""
    assert json.loads(d.tug("pod", "inspect", "h").stdout)[0]["id"] == host["id"]
    bad = d.tug("pod", "inspect", "nosuchpod", check=False)
    assert bad.returncode == 1 and b"pod nosuchpod not found" in bad.stderr
    assert d.tug("pod", "stop", host["id"][:8]).stdout.decode() == host["id"][:8] + "\n"
    assert d.tug("pod", "ls", "-q", "--no-trunc", "--state", "notready").stdout.decode() == host["id"] + "\n"
    d.tug("pod", "rm", "h")
    assert d.tug("pod", "ls", "-q").stdout == b""


def test_pod_recovery(make_daemon: Any, backend: str) -> None:
    d = make_daemon(backend=backend, netns=True, image=False)
    pod = d.call("pod.create", {"name": "keep", "pid": "pod"})
    gone = d.call("pod.create", {"name": "gone"})
    d.kill9()
    for path in gone["namespaces"].values():
        if path:
            subprocess.run(["umount", path], check=True)  # as after a reboot
    d.start()
    kept = d.call("pod.inspect", {"id": pod["id"]})
    assert kept["state"] == "ready" and kept["network"]["ip"] == pod["network"]["ip"]
    assert pings(d, pod["network"]["ip"])
    assert subprocess.run(["nsenter", f"--pid={kept['namespaces']['pid']}", "true"]).returncode == 0
    assert d.call("pod.inspect", {"id": gone["id"]})["state"] == "notready"
    assert f"tv0{gone['id'][:12]}" not in netns_links(d.netns)
    # Killed in the middle of a create: the half-made pod is undone at the next start.
    d.stop()
    d.start_env = {"TUGD_FAILPOINTS": "pod.create.after_network=kill"}
    d.start()
    d.start_env = {}
    with pytest.raises(errors.TugError):
        d.call("pod.create", {"name": "half"})
    assert d.proc is not None
    d.proc.wait()
    d.proc = None
    cleanup = subprocess.run([TUGD, "--root", d.root, "--state", d.state, "--cleanup"], capture_output=True)
    assert cleanup.returncode == 1 and b"pod(s) exist" in cleanup.stderr, cleanup
    d.start()
    assert sorted(p["name"] for p in d.call("pod.list")) == ["gone", "keep"]
    assert sorted(os.listdir(os.path.join(d.state, "pods"))) == sorted([pod["id"], gone["id"]])
    assert len([n for n in netns_links(d.netns) if n.startswith("tv")]) == 1
    for p in (pod, gone):
        d.call("pod.remove", {"id": p["id"]})
    with open("/proc/self/mounts") as f:
        assert d.state + "/pods" not in f.read()


def test_pod_stops_and_removes_its_containers(make_daemon: Any, backend: str) -> None:
    d = make_daemon(backend=backend, netns=True)
    pod = d.call("pod.create", {"name": "members"})
    # A container of the pod (joining its namespaces is CreateContainer's business: here only
    # its membership, pod_id, matters) and one outside it.
    member = start(d, ["sleep", "300"], name="member", pod_id=pod["id"], network="none")
    outsider = start(d, ["sleep", "300"], name="outsider", network="none")
    assert d.call("container.inspect", {"id": member})["config"]["pod_id"] == pod["id"]
    listed = d.call("container.list", {"all": True, "filters": {"pod": [pod["id"]]}})
    assert [c["id"] for c in listed] == [member]
    assert d.call("pod.inspect", {"id": pod["id"]})["containers"] == [member]
    with pytest.raises(errors.InvalidArgument):
        d.call("container.create", {"image": "busybox", "pod_id": "not-an-id"})
    d.call("pod.stop", {"id": pod["id"], "timeout": 1})
    assert d.call("container.inspect", {"id": member})["state"] == "exited"
    assert d.call("container.inspect", {"id": outsider})["state"] == "running"
    d.call("pod.remove", {"id": pod["id"]})
    with pytest.raises(errors.NotFound):
        d.call("container.inspect", {"id": member})
    assert d.call("container.inspect", {"id": outsider})["state"] == "running"


def test_pods_made_and_removed_in_parallel(make_daemon: Any, backend: str) -> None:
    d = make_daemon(backend=backend, netns=True, image=False)
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        pods = list(pool.map(lambda i: d.call("pod.create", {"name": f"p{i}", "pid": "pod"}), range(6)))
        ips = {p["network"]["ip"] for p in pods}
        assert len(ips) == 6 and all(p["state"] == "ready" for p in pods)
        assert all(pings(d, ip) for ip in ips)
        list(pool.map(lambda p: d.call("pod.remove", {"id": p["id"]}), pods))
    assert d.call("pod.list") == []
    assert not [n for n in netns_links(d.netns) if n.startswith("tv")]


@pytest.mark.parametrize("point", ["pod.stop.after_unmount", "pod.remove.after_dir"])
def test_tugd_killed_in_stop_or_remove_then_the_retry(make_daemon: Any, point: str) -> None:
    """kill -9 of tugd in the middle of pod.stop or pod.remove, then kubelet's retry (stop, then
    remove): the pod is NOTREADY after the restart, and the retry leaves nothing."""
    d = make_daemon(netns=True, image=False)
    d.stop()
    d.start_env = {"TUGD_FAILPOINTS": f"{point}=kill"}
    d.start()
    d.start_env = {}
    pod = d.call(
        "pod.create", {"name": "crash", "pid": "pod", "ports": [{"container_port": 80, "host_port": 18090}]}
    )
    with pytest.raises(errors.TugError):
        d.call("pod.stop" if point.startswith("pod.stop") else "pod.remove", {"id": pod["id"]})
    assert d.proc is not None
    d.proc.wait()
    d.proc = None
    d.start()
    assert d.call("pod.inspect", {"id": pod["id"]})["state"] == "notready"
    d.call("pod.stop", {"id": pod["id"]})
    d.call("pod.remove", {"id": pod["id"]})
    assert d.call("pod.list") == []
    assert not [n for n in netns_links(d.netns) if n.startswith("tv")]
    from supervisor.network.host import table_name

    assert "18090" not in in_ns(d, "nft", "list", "table", "ip", table_name(d.root)).stdout


def test_pod_shared_pid_pods_stopped_at_once_leave_no_process(make_daemon: Any) -> None:
    """A pod stopped right after it is made: its infra process (the shell, PID 1 of the pod's
    namespace, and its sleep) goes too, however early (a kill of the unshare alone could beat
    its child's parent-death signal)."""
    d = make_daemon(netns=True, image=False)
    for i in range(15):
        pod = d.call("pod.create", {"name": f"quick{i}", "pid": "pod", "network": "node"})
        d.call("pod.remove", {"id": pod["id"]})
    where = os.path.join(d.state, "pods").encode()

    def ours() -> list[int]:
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/cmdline", "rb") as f:
                        if where in f.read():
                            found.append(int(entry))
                except OSError:
                    pass
        return found

    wait_until(lambda: not ours(), 10, "the infra processes to go")
