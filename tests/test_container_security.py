"""The container fields the CRI sets (issue 16), through tugd's JSON-RPC API with real runc, on
both anyio backends: the user and groups, capabilities, privileged, no_new_privileges, seccomp
(a profile file), masked and read-only paths, a read-only root, sysctls, annotations, the pod id
and its list filter, namespaces joined by path (a netns the test makes with ``unshare``), the
cgroup parent, the log written to a path of the caller's and reopened after a rename with no line
lost, and an exec's timeout."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import subprocess
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from tugwire import crilog
from tugwire.errors import FailedPrecondition, InvalidArgument
from tugwire.syncclient import Client

from .conftest import needs_root, needs_runc
from .helpers import output, run, start
from .waiting import wait_until

pytestmark = [pytest.mark.integration, needs_root, needs_runc]

POD1, POD2 = "a1" * 32, "b2" * 32  # pod ids (64 hex digits) tugd need not know


@pytest.fixture
def scratch() -> Iterator[str]:
    """A directory of the test's own under /tmp, removed (and anything mounted in it unmounted)."""
    base = tempfile.mkdtemp(prefix="tbsec", dir="/tmp")
    yield base
    with open("/proc/self/mountinfo") as f:
        mounted = [line.split()[4] for line in f if line.split()[4].startswith(base + "/")]
    for m in reversed(mounted):
        subprocess.run(["umount", m], check=False)
    subprocess.run(["rm", "-rf", base], check=False)


def status_field(text: str, name: str) -> str:
    for line in text.splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {name} in {text!r}")


def test_user_groups_caps_sysctls_readonly_root(make_daemon: Any, backend: str) -> None:
    d = make_daemon(backend)
    cid, result = run(
        d,
        ["sh", "-c", "id; cat /proc/sys/kernel/shm_rmid_forced; touch /x 2>&1; echo end"],
        run_as_user=1000,
        run_as_group=1001,
        supplemental_groups=[2000, 2001],
        read_only=True,
        sysctls={"kernel.shm_rmid_forced": "1"},
    )
    out, err = output(d, cid)
    assert result["exit_code"] == 0, (out, err)
    lines = out.decode().splitlines()
    assert re.fullmatch(r"uid=1000(\(\w+\))? gid=1001 groups=2000,2001", lines[0]), lines
    assert lines[1] == "1"
    assert "Read-only file system" in lines[2]

    # Capabilities: all dropped but one; CapEff shows exactly that bit (CAP_NET_RAW is 13).
    cid, result = run(d, ["cat", "/proc/self/status"], cap_drop=["ALL"], cap_add=["NET_RAW"])
    status = output(d, cid)[0].decode()
    assert status_field(status, "CapEff") == f"{1 << 13:016x}"
    assert status_field(status, "NoNewPrivs") == "1"  # tugd's default
    assert status_field(status, "Seccomp") == "2"  # filtered: tugd's default profile

    cid, _ = run(d, ["cat", "/proc/self/status"], no_new_privileges=False, seccomp="unconfined")
    status = output(d, cid)[0].decode()
    assert (status_field(status, "NoNewPrivs"), status_field(status, "Seccomp")) == ("0", "0")

    cid, _ = run(d, ["cat", "/proc/self/status"], privileged=True)
    status = output(d, cid)[0].decode()
    assert int(status_field(status, "CapEff"), 16) == int(status_field(status, "CapBnd"), 16) != 0

    # run_as_username: looked up in the image's /etc/passwd.
    cid, _ = run(d, ["id", "-u"], run_as_username="nobody")
    assert output(d, cid)[0].strip().isdigit() and output(d, cid)[0].strip() != b"0"


def test_seccomp_profile_file_masked_and_readonly_paths(make_daemon: Any, backend: str, scratch: str) -> None:
    d = make_daemon(backend)
    profile = os.path.join(scratch, "no-mkdir.json")
    with open(profile, "w") as f:
        json.dump(
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}],
            },
            f,
        )
    script = (
        "mkdir /tmp/d 2>&1; cat /proc/version | wc -c; touch /etc/t 2>&1; "
        "grep -c ' /proc/sys ' /proc/self/mountinfo; true"
    )
    cid, _ = run(
        d,
        ["sh", "-c", script],
        seccomp=profile,
        masked_paths=["/proc/version"],
        readonly_paths=["/etc"],
    )
    lines = output(d, cid)[0].decode().splitlines()
    assert "Operation not permitted" in lines[0], lines
    assert lines[1].strip() == "0"  # masked: /dev/null over it
    assert "Read-only file system" in lines[2]
    # The list replaced the defaults: /proc/sys is not bound read-only over itself any more.
    assert lines[3].strip() == "0"

    # Nothing is created on a bad profile or path.
    before = d.call("container.list", {"all": True})
    for bad in (
        {"seccomp": os.path.join(scratch, "missing.json")},
        {"seccomp": "relative.json"},
        {"masked_paths": ["proc/x"]},
        {"readonly_paths": ["/a/../b"]},
    ):
        with pytest.raises(InvalidArgument):
            d.call("container.create", {"image": "busybox", "cmd": ["true"], **bad})
    assert d.call("container.list", {"all": True}) == before


def test_annotations_pod_id_and_cgroup_parent(make_daemon: Any, backend: str) -> None:
    d = make_daemon(backend)
    annotations = {"io.kubernetes.x": "a=b, c", "empty": "", "ünï": "ç\n"}
    parent = f"/tbtest{secrets.token_hex(4)}/pod1"
    try:
        cid = start(
            d,
            ["sh", "-c", "cat /proc/self/cgroup; sleep 60"],
            annotations=annotations,
            pod_id=POD1,
            cgroup_parent=parent,
            labels={"l": "1"},
        )
        other = d.call("container.create", {"image": "busybox", "cmd": ["true"], "pod_id": POD2})["id"]
        info = d.call("container.inspect", {"id": cid})
        assert info["annotations"] == annotations and info["pod_id"] == POD1
        with open(os.path.join(info["bundle"], "config.json")) as f:
            oci = json.load(f)
        assert oci["annotations"] == annotations
        assert oci["linux"]["cgroupsPath"] == f"{parent}/{cid}"

        def in_pods(*pods: str) -> list[str]:
            return sorted(
                c["id"] for c in d.call("container.list", {"all": True, "filters": {"pod": list(pods)}})
            )

        assert in_pods(POD1) == [cid]
        assert in_pods(POD2) == [other]
        assert in_pods(POD1, POD2) == sorted([cid, other])
        assert in_pods("0" * 64) == []
        # The container's cgroup is under the parent, and the shim reads its figures there.
        wait_until(lambda: f"{parent}/{cid}" in output(d, cid)[0].decode(), 20, "the cgroup line")
        stats = d.call("container.stats", {"id": cid})[0]
        assert stats["memory_usage"] > 0, stats
        d.call("container.delete", {"id": cid, "force": True})
    finally:
        # runc removes the container's cgroup; the parents are the caller's (kubelet's): ours here.
        for hierarchy in os.listdir("/sys/fs/cgroup"):
            for sub in (parent, os.path.dirname(parent)):
                with contextlib.suppress(OSError):
                    os.rmdir(f"/sys/fs/cgroup/{hierarchy}{sub}")
    for bad in ({"cgroup_parent": "/a/../b"}, {"pod_id": "pod-1"}):
        with pytest.raises(InvalidArgument):
            d.call("container.create", {"image": "busybox", "cmd": ["true"], **bad})


def test_join_a_network_namespace_by_path(make_daemon: Any, backend: str, scratch: str) -> None:
    d = make_daemon(backend)
    nsfile = os.path.join(scratch, "netns")
    open(nsfile, "w").close()
    subprocess.run(["unshare", f"--net={nsfile}", "true"], check=True)
    inode = os.stat(nsfile).st_ino
    cid, _ = run(d, ["readlink", "/proc/self/ns/net"], namespaces={"network": nsfile})
    assert output(d, cid)[0].decode().strip() == f"net:[{inode}]"
    cid, _ = run(d, ["readlink", "/proc/self/ns/net"], namespaces={"network": "host"})
    assert output(d, cid)[0].decode().strip() == os.readlink("/proc/self/ns/net")
    d.call("container.delete", {"id": cid})
    for bad in (
        {"namespaces": {"network": os.path.join(scratch, "nope")}},
        {"namespaces": {"mount": nsfile}},
        {"namespaces": {"ipc": "rel/path"}},
    ):
        with pytest.raises(InvalidArgument):
            d.call("container.create", {"image": "busybox", "cmd": ["true"], **bad})


def test_log_path_and_reopen_lose_no_line(make_daemon: Any, backend: str, scratch: str) -> None:
    d = make_daemon(backend)
    logdir = os.path.join(scratch, "pod")
    os.mkdir(logdir)
    path = os.path.join(logdir, "c", "0.log")
    for bad in (
        {"log_path": path},  # no directory named
        {"log_path": os.path.join(scratch, "x.log"), "log_directory": logdir},  # outside it
        {"log_path": logdir + "/c/../../x.log", "log_directory": logdir},
        {"log_path": "c/0.log", "log_directory": logdir},
    ):
        with pytest.raises(InvalidArgument):
            d.call("container.create", {"image": "busybox", "cmd": ["true"], **bad})
    assert d.call("container.list", {"all": True}) == []

    script = "i=0; while :; do echo $i; i=$((i+1)); done"
    cid = start(d, ["sh", "-c", script], log_path=path, log_directory=logdir)
    assert d.call("container.inspect", {"id": cid})["log_path"] == path
    rotated = []
    for n in range(3):
        wait_until(lambda: os.path.exists(path) and os.path.getsize(path) > 4096, 20, "log output")
        old = f"{path}.{n}"
        os.rename(path, old)  # what kubelet does, then it asks for the reopen
        rotated.append(old)
        d.call("container.reopen_log", {"id": cid})
    wait_until(lambda: os.path.exists(path) and os.path.getsize(path) > 4096, 20, "log output")
    d.call("container.kill", {"id": cid, "signal": "SIGKILL"})
    d.call("container.wait", {"id": cid})
    numbers = []
    for f in [*rotated, path]:
        with open(f, "rb") as fh:
            for rec in fh.read().splitlines():
                _ts, stream, full, content = crilog.parse_record(rec)
                assert (stream, full) == (b"stdout", True)
                numbers.append(int(content))
    assert numbers == list(range(len(numbers))), "a line was lost or repeated across the reopens"
    # tugd's logs read the file at its path now (what was renamed away is kubelet's).
    assert output(d, cid)[0]
    # A stopped container, or one with tugd's own log, has nothing to reopen.
    with pytest.raises(FailedPrecondition):
        d.call("container.reopen_log", {"id": cid})
    other = start(d, ["sleep", "60"])
    with pytest.raises(FailedPrecondition):
        d.call("container.reopen_log", {"id": other})
    d.call("container.delete", {"id": other, "force": True})
    d.call("container.delete", {"id": cid})
    assert os.path.exists(path)  # the log is kubelet's: removing the container keeps it


def test_exec_timeout_kills_the_process(make_daemon: Any, backend: str) -> None:
    d = make_daemon(backend)
    cid = start(d, ["sleep", "600"])
    with Client(d.socket) as c:
        result = c.call("container.exec", {"id": cid, "cmd": ["sleep", "300"], "timeout": 0.5})
    assert result["timed_out"] is True and result["exit_code"] is None
    wait_until(
        lambda: not any("300" in p[-1] for p in d.call("container.top", {"id": cid})["processes"]),
        20,
        "the timed-out exec to be killed",
    )
    with Client(d.socket) as c:
        quick = c.call("container.exec", {"id": cid, "cmd": ["sh", "-c", "exit 3"], "timeout": 10})
    assert quick["exit_code"] == 3 and not quick.get("timed_out")
    with pytest.raises(InvalidArgument):
        d.call("container.exec", {"id": cid, "cmd": ["true"], "timeout": 0})
    d.call("container.delete", {"id": cid, "force": True})


def test_volume_propagation(make_daemon: Any, backend: str, scratch: str) -> None:
    """rprivate (the default) sees no later host mount; rslave sees it; rshared also sends the
    container's own mounts back to the host."""
    d = make_daemon(backend)
    src = os.path.join(scratch, "src")
    os.mkdir(src)
    subprocess.run(["mount", "-t", "tmpfs", "tbsrc", src], check=True)
    subprocess.run(["mount", "--make-shared", src], check=True)
    os.mkdir(os.path.join(src, "later"))
    os.mkdir(os.path.join(src, "inner"))
    wait = "while [ ! -f /stop ]; do sleep 0.05; done; grep -c ' /data/later ' /proc/self/mountinfo; true"
    ids = {}
    for prop in ("rprivate", "rslave"):
        ids[prop] = start(
            d, ["sh", "-c", wait], volumes=[{"source": src, "destination": "/data", "propagation": prop}]
        )
    shared = start(
        d,
        ["sh", "-c", "mount -t tmpfs tbin /data/inner && sleep 600"],
        privileged=True,
        volumes=[{"source": src, "destination": "/data", "propagation": "rshared"}],
    )
    subprocess.run(["mount", "-t", "tmpfs", "tblater", os.path.join(src, "later")], check=True)
    for cid in ids.values():
        d.tug("cp", "/etc/hostname", f"{cid}:/stop")
        d.call("container.wait", {"id": cid})
    assert output(d, ids["rprivate"])[0].strip() == b"0"
    assert output(d, ids["rslave"])[0].strip() == b"1"
    inner = os.path.join(src, "inner")
    wait_until(lambda: os.path.ismount(inner), 20, "the container's mount on the host")
    d.call("container.delete", {"id": shared, "force": True})
    with pytest.raises(InvalidArgument):
        d.call(
            "container.create",
            {
                "image": "busybox",
                "cmd": ["true"],
                "volumes": [{"source": src, "destination": "/d", "propagation": "x"}],
            },
        )
