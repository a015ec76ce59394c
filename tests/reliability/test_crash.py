"""Crash consistency: tugd killed with SIGKILL at each failpoint of create, start, stop, exit and
delete (supervisor/failpoints.py), and in the middle of runc (the runc wrapper); shims killed
mid-create. After tugd comes back on the same roots, every container is in its true state with its
true exit code (the test knows what each container did), and nothing leaked: no shim, container
process, mount, runc state, shim dir or bundle beyond the containers that really exist."""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest

from tugwire.syncclient import Client, Disconnected

from ..conftest import Daemon, needs_root, needs_runc
from ..helpers import output
from .conftest import (
    RuncFaults,
    alive,
    bundles,
    container_pids,
    crashed,
    leaks,
    runc_list,
    settled_leaks,
    wait_gone,
    wait_until,
)

pytestmark = [pytest.mark.reliability, pytest.mark.integration, needs_root, needs_runc]


def arm(d: Daemon, spec: str) -> None:
    """Restart tugd with ``TUGD_FAILPOINTS=spec`` (the next start has none)."""
    d.stop()
    d.start_env = {"TUGD_FAILPOINTS": spec}
    try:
        d.start()
    finally:
        d.start_env = {}


def crash_on(d: Daemon, method: str, params: dict[str, Any]) -> None:
    """Call ``method``; tugd must die (its failpoint) before answering."""
    with pytest.raises(Disconnected):
        d.call(method, params)
    crashed(d)


def create(d: Daemon, cmd: list[str], **opts: Any) -> str:
    cid: str = d.call("container.create", {"image": "busybox", "cmd": cmd, **opts})["id"]
    return cid


def state(d: Daemon, cid: str) -> tuple[str, int | None]:
    info = d.call("container.inspect", {"id": cid})
    return info["state"], info["exit_code"]


def test_unknown_failpoint_stops_tugd_at_start(make_daemon: Any) -> None:
    d = make_daemon(image=False)
    d.stop()
    d.start_env = {"TUGD_FAILPOINTS": "container.nowhere=kill"}
    with pytest.raises(RuntimeError, match="did not get ready"):
        d.start(timeout=3)  # it exits at once; this only bounds the wait
    d.start_env = {}
    assert d.proc is not None
    assert d.proc.wait(timeout=10) == 2
    d.proc = None
    assert "unknown failpoint 'container.nowhere'" in d.read_log()


def test_kill9_after_bundle_before_record_leaves_nothing(make_daemon: Any, backend: str) -> None:
    d = make_daemon(backend=backend)
    arm(d, "container.create.after_bundle=kill")
    crash_on(d, "container.create", {"image": "busybox", "cmd": ["true"], "name": "half"})
    assert len(bundles(d)) == 1  # the half-made bundle is there while tugd is down
    d.start()
    assert d.call("container.list", {"all": True}) == []
    assert bundles(d) == []
    assert leaks(d) == []
    # The name was never taken.
    cid = create(d, ["true"], name="half")
    assert state(d, cid) == ("created", None)


def test_kill9_after_record_keeps_a_created_container_that_starts(make_daemon: Any) -> None:
    d = make_daemon()
    arm(d, "container.create.after_db=kill")
    crash_on(d, "container.create", {"image": "busybox", "cmd": ["sh", "-c", "exit 7"], "name": "rec"})
    d.start()
    (c,) = d.call("container.list", {"all": True})
    assert (c["name"], c["state"]) == ("rec", "created")
    assert bundles(d) == [c["id"]]
    assert leaks(d) == []
    with Client(d.socket) as client:
        wid = client.send("container.wait", {"id": "rec", "condition": "next-exit"})
        client.call("container.start", {"id": "rec"})
        assert client.wait_for(wid)["exit_code"] == 7


def test_kill9_after_mount_before_shim_unmounts_and_cleans_on_restart(make_daemon: Any, backend: str) -> None:
    d = make_daemon(backend=backend)
    cid = create(d, ["sh", "-c", "echo once; exit 3"])
    arm(d, "container.start.after_mount=kill")
    crash_on(d, "container.start", {"id": cid})
    assert os.path.isdir(os.path.join(d.state, "shims", cid))  # the crash left these behind
    d.start()
    assert state(d, cid) == ("created", None)  # it never ran
    assert leaks(d) == []  # no mount, no shim dir, no runc state
    with Client(d.socket) as client:
        wid = client.send("container.wait", {"id": cid, "condition": "next-exit"})
        client.call("container.start", {"id": cid})
        assert client.wait_for(wid)["exit_code"] == 3
    assert output(d, cid) == (b"once\n", b"")


def test_kill9_after_launch_adopts_the_running_container(make_daemon: Any, backend: str) -> None:
    d = make_daemon(backend=backend)
    cid = create(d, ["sh", "-c", "echo up; exec sleep 1000"])
    arm(d, "container.start.after_launch=kill")
    crash_on(d, "container.start", {"id": cid})
    pids = container_pids(cid)
    assert pids, "the container must run: the shim started it before tugd died"
    d.start()
    info = d.call("container.inspect", {"id": cid})
    assert info["state"] == "running"
    assert info["pid"] in pids
    assert alive(info["shim_pid"])
    assert leaks(d, live={cid}) == []
    assert d.call("container.stop", {"id": cid, "timeout": 0})["exit_code"] == 137
    assert state(d, cid) == ("exited", 137)
    assert output(d, cid)[0] == b"up\n"
    wait_gone(info["shim_pid"])
    assert settled_leaks(d) == []  # the unmount after the shim's exit is tugd's, a moment later


def test_kill9_after_stop_signal_records_the_exit_that_happened_while_down(make_daemon: Any) -> None:
    d = make_daemon()
    cid = create(
        d, ["sh", "-c", "trap 'echo term; exit 42' TERM; echo ready; while true; do sleep 0.05; done"]
    )
    d.call("container.start", {"id": cid})
    wait_until(lambda: output(d, cid)[0] == b"ready\n", what="the trap to be set")
    shim_pid = d.call("container.inspect", {"id": cid})["shim_pid"]
    arm(d, "container.stop.after_signal=kill")
    crash_on(d, "container.stop", {"id": cid, "timeout": 30})
    wait_until(lambda: os.path.exists(os.path.join(d.state, "shims", cid, "exit.json")), what="the exit")
    d.start()
    assert state(d, cid) == ("exited", 42)
    assert output(d, cid) == (b"ready\nterm\n", b"")
    wait_gone(shim_pid)
    assert leaks(d) == []


@pytest.mark.parametrize("point", ["container.exit.before_record", "container.exit.after_record"])
def test_kill9_while_handling_an_exit_keeps_the_true_code(
    make_daemon: Any, tmp_path: Any, point: str
) -> None:
    d = make_daemon()
    gate = tmp_path / "gate"
    gate.mkdir()
    cid = create(
        d,
        ["sh", "-c", "echo waiting; while [ ! -e /gate/go ]; do sleep 0.05; done; seq 1 3000; exit 9"],
        volumes=[{"source": str(gate), "destination": "/gate"}],
    )
    d.call("container.start", {"id": cid})
    shim_pid = d.call("container.inspect", {"id": cid})["shim_pid"]
    arm(d, f"{point}=kill")  # the shim and the container run on across the restart
    assert state(d, cid) == ("running", None)
    (gate / "go").write_text("")
    crashed(d)  # the exit reaches tugd, which dies handling it
    d.start()
    assert state(d, cid) == ("exited", 9)
    out, _ = output(d, cid)
    assert out == b"waiting\n" + b"".join(b"%d\n" % i for i in range(1, 3001))
    wait_gone(shim_pid)
    assert leaks(d) == []
    # Exactly one die event for the one exit, whichever side of the record tugd died on.
    assert die_events(d, cid) == [9]


def die_events(d: Daemon, cid: str) -> list[int | None]:
    """The exit codes of the ``die`` events of ``cid`` stored so far (replayed by ``tug events``)."""
    import json

    out = d.tug("events", "--since", "1", "--until", "0s", "-f", f"container={cid}", "--format", "json")
    codes = []
    for line in out.stdout.decode().splitlines():
        event = json.loads(line)
        if event.get("action") == "die":
            codes.append(event.get("attributes", {}).get("exit_code"))
    return codes


@pytest.mark.parametrize("running", [False, True])
def test_kill9_in_delete_after_release_keeps_the_container_and_its_code(
    make_daemon: Any, running: bool
) -> None:
    d = make_daemon()
    cid = create(d, ["sleep", "1000"] if running else ["sh", "-c", "exit 4"])
    with Client(d.socket) as client:
        wid = client.send("container.wait", {"id": cid, "condition": "next-exit"})
        client.call("container.start", {"id": cid})
        if not running:
            assert client.wait_for(wid)["exit_code"] == 4
    arm(d, "container.delete.after_release=kill")
    crash_on(d, "container.delete", {"id": cid, "force": True})
    d.start()
    # Deleted was not reached: the container is there, with its true end (SIGKILL by rm -f).
    assert state(d, cid) == ("exited", 137 if running else 4)
    assert leaks(d) == []
    d.call("container.delete", {"id": cid})
    assert bundles(d) == []


def test_kill9_in_delete_after_row_removes_the_bundle_on_restart(make_daemon: Any, backend: str) -> None:
    d = make_daemon(backend=backend)
    cid = create(d, ["true"], name="goner")
    d.call("container.start", {"id": cid})
    d.call("container.wait", {"id": cid})
    arm(d, "container.delete.after_db=kill")
    crash_on(d, "container.delete", {"id": cid})
    assert bundles(d) == [cid]
    d.start()
    assert d.call("container.list", {"all": True}) == []
    assert bundles(d) == []
    assert leaks(d) == []
    create(d, ["true"], name="goner")  # the name is free again


def _tugd_pidfile(d: Daemon, faults: RuncFaults) -> str:
    assert d.proc is not None
    path = os.path.join(faults.base, "tugd.pid")
    with open(path, "w") as f:
        f.write(str(d.proc.pid))
    return path


def test_kill9_of_tugd_while_runc_creates_adopts_the_container(
    make_daemon: Any, runc_faults: RuncFaults
) -> None:
    d = make_daemon(runtime=runc_faults.path)
    cid = create(d, ["sh", "-c", "echo up; exec sleep 1000"])
    runc_faults.set("run", f"kill-pidfile {_tugd_pidfile(d, runc_faults)}", once=True)
    crash_on(d, "container.start", {"id": cid})
    d.start()
    # runc went on with its work: the container runs, and the new tugd adopted its shim.
    wait_until(lambda: d.call("container.inspect", {"id": cid})["state"] == "running", what="adoption")
    info = d.call("container.inspect", {"id": cid})
    assert info["pid"] in container_pids(cid)
    assert leaks(d, live={cid}) == []
    assert d.call("container.stop", {"id": cid, "timeout": 0})["exit_code"] == 137
    wait_gone(info["shim_pid"])
    assert settled_leaks(d) == []  # the unmount after the shim's exit is tugd's, a moment later


@pytest.mark.parametrize("when", ["kill-parent", "kill-parent-after"])
def test_kill9_of_the_shim_while_runc_creates_leaves_nothing(
    make_daemon: Any, runc_faults: RuncFaults, when: str
) -> None:
    d = make_daemon(runtime=runc_faults.path)
    cid = create(d, ["sleep", "1000"])
    # Before runc runs, or once runc has made and started the container but before the shim
    # could report it: either way the container must not be left running unseen.
    runc_faults.set("run", when, once=True)
    with pytest.raises(Exception, match="shim died before it answered"):
        d.call("container.start", {"id": cid})
    # The orphaned runc may still be finishing its work: whatever it made is cleaned up.
    wait_until(lambda: container_pids(cid) == [] and runc_list(d) == [], what="the orphan's cleanup")
    assert state(d, cid) == ("created", None)
    assert leaks(d) == []
    runc_faults.clear()
    d.call("container.start", {"id": cid})
    result = d.call("container.stop", {"id": cid, "timeout": 0})
    assert result["exit_code"] == 137, (result, output(d, cid), d.call("container.inspect", {"id": cid}))


def test_kill9_of_runc_between_create_and_start_leaves_nothing(
    make_daemon: Any, runc_faults: RuncFaults, backend: str
) -> None:
    d = make_daemon(backend=backend, runtime=runc_faults.path)
    cid = create(d, ["sleep", "1000"])
    runc_faults.set("run", "die-after-create", once=True)
    with pytest.raises(Exception, match="runc run failed"):
        d.call("container.start", {"id": cid})
    assert state(d, cid) == ("created", None)
    assert runc_list(d) == []
    assert container_pids(cid) == []
    assert leaks(d) == []
    d.call("container.start", {"id": cid})
    assert d.call("container.stop", {"id": cid, "timeout": 0})["exit_code"] == 137


def test_kill9_of_tugd_and_every_shim_mid_run_leaves_no_live_container_running_unseen(
    make_daemon: Any,
) -> None:
    d = make_daemon()
    cids = [create(d, ["sleep", "1000"]) for _ in range(3)]
    for cid in cids:
        d.call("container.start", {"id": cid})
    shims = [d.call("container.inspect", {"id": cid})["shim_pid"] for cid in cids]
    d.kill9()
    for pid in shims:
        os.kill(pid, signal.SIGKILL)
    for pid in shims:
        wait_gone(pid)
    d.start()
    for cid in cids:
        info = d.call("container.inspect", {"id": cid})
        # The truth: tugd cannot know how these end (nobody reaped them): never a guessed code.
        assert info["state"] == "unknown"
        assert info["exit_code"] is None
        assert "shim" in info["reason"]
    for cid in cids:
        d.call("container.delete", {"id": cid, "force": True})
    assert [container_pids(cid) for cid in cids] == [[], [], []]
    assert leaks(d) == []


def test_failpoint_specs_parse_and_count(monkeypatch: pytest.MonkeyPatch) -> None:
    from supervisor import failpoints
    from tugwire.errors import Internal

    assert failpoints.parse("") == {}
    assert failpoints.parse("container.create.after_db=kill; container.stop.after_signal=3*error") == {
        "container.create.after_db": (1, "kill"),
        "container.stop.after_signal": (3, "error"),
    }
    for bad in (
        "nowhere=kill",
        "container.create.after_db",
        "container.create.after_db=explode",
        "container.create.after_db=0*kill",
        "container.create.after_db=x*kill",
    ):
        with pytest.raises(failpoints.FailpointError):
            failpoints.parse(bad)
    monkeypatch.setenv(failpoints.ENV, "container.delete.after_db=2*error")
    try:
        failpoints.arm_from_environment()
        assert failpoints.ENV not in os.environ  # nothing tugd starts inherits it
        failpoints.failpoint("container.delete.after_db")  # the first pass goes through
        failpoints.failpoint("container.create.after_db")  # not armed
        with pytest.raises(Internal, match=r"failpoint container\.delete\.after_db"):
            failpoints.failpoint("container.delete.after_db")
        failpoints.failpoint("container.delete.after_db")  # acts once only
    finally:
        monkeypatch.delenv(failpoints.ENV, raising=False)
        failpoints.arm_from_environment()  # disarmed again


@pytest.mark.network
@pytest.mark.parametrize("point", ["network.setup.after_netns", "container.start.after_network"])
def test_kill9_in_network_setup_leaves_no_namespace_or_veth(make_daemon: Any, point: str) -> None:
    from ..conftest import netns_links

    d = make_daemon(netns=True)
    d.tug("network", "create", "--subnet", "10.78.0.0/24", "crashnet")
    cid = create(d, ["sh", "-c", "ip -o -4 addr show eth0; exit 0"], network="crashnet")
    arm(d, f"{point}=kill")
    crash_on(d, "container.start", {"id": cid})
    d.start()
    assert state(d, cid) == ("created", None)
    assert leaks(d) == []  # no namespace mount, shim dir, rootfs mount, runc state
    assert [n for n in netns_links(d.netns) if n.startswith("tv")] == []
    # The container starts after the crash with the address it was given.
    with Client(d.socket) as client:
        wid = client.send("container.wait", {"id": cid, "condition": "next-exit"})
        client.call("container.start", {"id": cid})
        assert client.wait_for(wid)["exit_code"] == 0
    assert b"10.78.0.2/24" in output(d, cid)[0]
    assert settled_leaks(d) == []


@pytest.mark.parametrize("point", ["image.ingest.after_fetch", "image.ingest.after_unpack"])
def test_kill9_in_image_load_records_nothing_and_a_retry_works(
    make_daemon: Any, tmp_path: Any, point: str
) -> None:
    d = make_daemon()
    archive = str(tmp_path / "busybox.oci.tar")
    d.call("image.save", {"path": archive, "refs": ["busybox"], "format": "oci-archive"})
    d.call("image.remove", {"ref": "busybox"})
    arm(d, f"{point}=kill")
    crash_on(d, "image.load", {"path": archive})
    d.start()
    assert d.call("image.list", {}) == []
    assert not _temp_files(d.root), _temp_files(d.root)
    # Nothing unreferenced stays on disk: the blobs and snapshots of the unrecorded image go.
    assert os.listdir(os.path.join(d.root, "snapshots")) == []
    assert os.listdir(os.path.join(d.root, "blobs", "sha256")) == []
    loaded = d.call("image.load", {"path": archive})["images"]
    assert len(loaded) == 1
    with Client(d.socket) as client:
        cid = client.call("container.create", {"image": "busybox", "cmd": ["sh", "-c", "echo ok; exit 2"]})[
            "id"
        ]
        wid = client.send("container.wait", {"id": cid, "condition": "next-exit"})
        client.call("container.start", {"id": cid})
        assert client.wait_for(wid)["exit_code"] == 2
    assert output(d, cid) == (b"ok\n", b"")


def _temp_files(root: str) -> list[str]:
    """Half-written files or directories (temp names) anywhere under the image store."""
    found = []
    for sub in ("blobs", "snapshots"):
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, sub)):
            if os.path.basename(dirpath) == "fs":
                dirnames.clear()  # inside a snapshot: the image's own files
                continue
            found += [os.path.join(dirpath, n) for n in dirnames + filenames if n.startswith((".", "tmp"))]
    return found


@pytest.mark.parametrize("torn", [b"", b'{"pid": 12, "exit_code": 4', b'{"pid": 12, "exit_code": "4"}\n'])
def test_a_half_written_exit_record_is_never_taken_for_an_exit(make_daemon: Any, torn: bytes) -> None:
    """A shim killed while its exit record was written (by hand here: the shim writes through a
    temp file and a rename, so a torn ``exit.json`` cannot come from it) leaves no valid record:
    the container is ``unknown``, never exited with a code read from a torn file."""
    d = make_daemon()
    cid = create(d, ["sleep", "1000"])
    d.call("container.start", {"id": cid})
    shim_pid = d.call("container.inspect", {"id": cid})["shim_pid"]
    d.kill9()
    os.kill(shim_pid, signal.SIGKILL)
    wait_gone(shim_pid)
    with open(os.path.join(d.state, "shims", cid, "exit.json"), "wb") as f:
        f.write(torn)
    d.start()
    info = d.call("container.inspect", {"id": cid})
    assert (info["state"], info["exit_code"]) == ("unknown", None)
    d.call("container.delete", {"id": cid, "force": True})
    assert container_pids(cid) == []
    assert leaks(d) == []
