"""pause/unpause, top, stats, update, rename, restart, cp, --init and the stop signal, end to end:
real tugd, real shims, real runc, busybox containers."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import Any

import pytest

from tugwire import errors
from tugwire.syncclient import Client

from .conftest import needs_root, needs_runc
from .helpers import run, start
from .waiting import wait_output, wait_until

pytestmark = [pytest.mark.integration, needs_root, needs_runc]


def events(d: Any, cid: str) -> list[str]:
    with Client(d.socket) as c:
        rid = c.send("events.subscribe", {"since": 0, "until": time.time_ns(), "filters": {"container": cid}})
        actions: list[str] = []
        while True:
            msg = c.next_message()
            assert msg is not None
            if msg.get("id") == rid:
                return actions
            if msg.get("method") == "event":
                actions.append(msg["params"]["action"])


def freezer_state(cid: str) -> str | None:
    for path in (
        f"/sys/fs/cgroup/freezer/tugboat/{cid}/freezer.state",
        f"/sys/fs/cgroup/tugboat/{cid}/cgroup.freeze",
    ):
        if os.path.exists(path):
            with open(path) as f:
                return f.read().strip()
    return None


def test_pause_unpause_and_the_states_that_forbid_them(make_daemon: Any, backend: str) -> None:
    d = make_daemon(backend=backend)
    cid = start(d, ["sh", "-c", "while true; do sleep 0.1; done"])
    with pytest.raises(errors.FailedPrecondition, match="not paused"):
        d.call("container.unpause", {"id": cid})
    assert d.call("container.pause", {"id": cid})["state"] == "paused"
    assert freezer_state(cid) in ("FROZEN", "1")
    info = d.call("container.inspect", {"id": cid})
    assert info["state"] == "paused"
    assert [c["state"] for c in d.call("container.list") if c["id"] == cid] == ["paused"]
    assert "Up" in d.tug("ps").stdout.decode() and "(Paused)" in d.tug("ps").stdout.decode()
    with pytest.raises(errors.FailedPrecondition, match="already paused"):
        d.call("container.pause", {"id": cid})
    with pytest.raises(errors.FailedPrecondition, match="already running"):
        d.call("container.start", {"id": cid})
    d.call("container.unpause", {"id": cid})
    assert freezer_state(cid) in ("THAWED", "0")
    assert d.call("container.inspect", {"id": cid})["state"] == "running"
    d.call("container.kill", {"id": cid})
    d.call("container.wait", {"id": cid})
    with pytest.raises(errors.FailedPrecondition, match="container is exited"):
        d.call("container.pause", {"id": cid})
    assert d.call("container.inspect", {"id": cid})["state"] == "exited"
    assert events(d, cid) == ["create", "start", "pause", "unpause", "kill", "die"]


def test_stop_and_kill_of_a_paused_container(daemon: Any) -> None:
    cid = start(daemon, ["sh", "-c", "trap 'exit 3' TERM; echo ready; while true; do sleep 0.1; done"])
    wait_output(daemon, cid, b"ready")  # the trap is set
    daemon.call("container.pause", {"id": cid})
    result = daemon.call("container.stop", {"id": cid, "timeout": 10})
    assert result["exit_code"] == 3  # thawed, then the stop signal: a clean exit, not SIGKILL
    cid2 = start(daemon, ["sleep", "1000"])
    daemon.call("container.pause", {"id": cid2})
    daemon.call("container.kill", {"id": cid2})  # SIGKILL thaws it
    assert daemon.call("container.wait", {"id": cid2})["exit_code"] == 137
    cid3 = start(daemon, ["sleep", "1000"])
    daemon.call("container.pause", {"id": cid3})
    daemon.call("container.delete", {"id": cid3, "force": True})


def test_paused_survives_a_tugd_restart(daemon: Any) -> None:
    cid = start(daemon, ["sleep", "1000"])
    daemon.call("container.pause", {"id": cid})
    daemon.kill9()
    daemon.start()
    assert daemon.call("container.inspect", {"id": cid})["state"] == "paused"
    daemon.call("container.unpause", {"id": cid})
    assert daemon.call("container.inspect", {"id": cid})["state"] == "running"


def test_top_lists_the_processes_with_host_pids(daemon: Any) -> None:
    cid = start(daemon, ["sh", "-c", "sleep 1000 & sleep 2000"])

    def both() -> dict[str, Any] | None:
        top: dict[str, Any] = daemon.call("container.top", {"id": cid})
        cmds = {p[-1] for p in top["processes"]}
        return top if {"sleep 1000", "sleep 2000"} <= cmds else None

    top = wait_until(both, 10, "both sleeps to run")
    cmds = [p[-1] for p in top["processes"]]
    assert top["titles"] == ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
    assert "sleep 1000" in cmds and "sleep 2000" in cmds
    pid1 = daemon.call("container.inspect", {"id": cid})["pid"]
    assert str(pid1) in [p[1] for p in top["processes"]]
    assert all(p[0] == "root" for p in top["processes"])
    out = daemon.tug("top", cid).stdout.decode()
    assert out.splitlines()[0].split() == top["titles"]
    assert "sleep 2000" in out
    daemon.call("container.kill", {"id": cid})
    daemon.call("container.wait", {"id": cid})
    with pytest.raises(errors.FailedPrecondition, match="container is exited"):
        daemon.call("container.top", {"id": cid})


def test_stats_and_update_of_a_running_container(daemon: Any) -> None:
    cid = start(daemon, ["sh", "-c", "while true; do :; done"], memory=64 * 1024 * 1024, pids_limit=50)
    [sample] = daemon.call("container.stats", {"id": cid})
    assert sample["running"] is True
    assert sample["memory_limit"] == 64 * 1024 * 1024
    assert sample["pids"] >= 1
    assert sample["cpu_seconds"] is not None
    out = daemon.tug("stats", "--no-stream", cid).stdout.decode()
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["CONTAINER", "ID", "NAME"]
    cpu = float(lines[1].split()[2].rstrip("%"))
    assert cpu > 20  # a busy loop: most of one CPU
    assert "64MiB" in out
    daemon.call("container.update", {"id": cid, "memory": 128 * 1024 * 1024, "pids_limit": 80, "cpus": 0.5})
    [sample] = daemon.call("container.stats", {"id": cid})
    assert sample["memory_limit"] == 128 * 1024 * 1024
    info = daemon.call("container.inspect", {"id": cid})
    assert info["config"]["memory"] == 128 * 1024 * 1024
    assert info["config"]["pids_limit"] == 80
    assert info["config"]["cpus"] == 0.5
    for path in (f"/sys/fs/cgroup/pids/tugboat/{cid}/pids.max", f"/sys/fs/cgroup/tugboat/{cid}/pids.max"):
        if os.path.exists(path):
            with open(path) as f:
                assert f.read().strip() == "80"
    # kept for the next start
    daemon.call("container.restart", {"id": cid, "timeout": 0})
    [sample] = daemon.call("container.stats", {"id": cid})
    assert sample["memory_limit"] == 128 * 1024 * 1024
    with pytest.raises(errors.InvalidArgument):
        daemon.call("container.update", {"id": cid, "memory": 1024})
    daemon.tug("update", "--memory", "96m", cid)
    [sample] = daemon.call("container.stats", {"id": cid})
    assert sample["memory_limit"] == 96 * 1024 * 1024
    assert "update" in events(daemon, cid)


def test_rename(daemon: Any) -> None:
    cid = daemon.call("container.create", {"image": "busybox", "cmd": ["true"], "name": "one"})["id"]
    daemon.call("container.create", {"image": "busybox", "cmd": ["true"], "name": "two"})
    with pytest.raises(errors.AlreadyExists):
        daemon.call("container.rename", {"id": "one", "name": "two"})
    with pytest.raises(errors.InvalidArgument):
        daemon.call("container.rename", {"id": "one", "name": "../x"})
    assert daemon.call("container.inspect", {"id": cid})["name"] == "one"
    daemon.tug("rename", "one", "three")
    assert daemon.call("container.inspect", {"id": "three"})["id"] == cid
    with pytest.raises(errors.NotFound):
        daemon.call("container.inspect", {"id": "one"})
    assert events(daemon, cid)[-1] == "rename"


def test_restart_of_a_running_and_of_an_exited_container(daemon: Any) -> None:
    cid = start(daemon, ["sleep", "1000"])
    pid = daemon.call("container.inspect", {"id": cid})["pid"]
    daemon.tug("restart", "-t", "0", cid)
    info = daemon.call("container.inspect", {"id": cid})
    assert info["state"] == "running" and info["pid"] != pid
    daemon.call("container.kill", {"id": cid})
    daemon.call("container.wait", {"id": cid})
    daemon.call("container.restart", {"id": cid})
    assert daemon.call("container.inspect", {"id": cid})["state"] == "running"


def test_stop_signal_from_the_option_and_from_the_image(daemon: Any, busybox_tar: str) -> None:
    script = "trap 'exit 10' USR1; trap 'exit 11' TERM; echo ready; while true; do sleep 0.1; done"
    cid = start(daemon, ["sh", "-c", script], stop_signal="SIGUSR1")
    wait_output(daemon, cid, b"ready")  # the traps are set
    assert daemon.call("container.stop", {"id": cid, "timeout": 10})["exit_code"] == 10
    daemon.call("image.import", {"path": busybox_tar, "ref": "usr1box", "config": {"StopSignal": "SIGUSR1"}})
    cid = daemon.call("container.create", {"image": "usr1box", "cmd": ["sh", "-c", script]})["id"]
    daemon.call("container.start", {"id": cid})
    assert daemon.call("container.inspect", {"id": cid})["config"]["stop_signal"] == "SIGUSR1"
    wait_output(daemon, cid, b"ready")
    assert daemon.call("container.stop", {"id": cid, "timeout": 10})["exit_code"] == 10


def _states(d: Any, cid: str) -> list[str]:
    """The states of every process under the container's PID 1 (zombies are no longer in the
    cgroup, so they are found through /proc/PID/task/PID/children)."""
    todo = [d.call("container.inspect", {"id": cid})["pid"]]
    states = []
    while todo:
        pid = todo.pop()
        try:
            with open(f"/proc/{pid}/stat") as f:
                states.append(f.read().rsplit(")", 1)[1].split()[0])
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                todo.extend(int(c) for c in f.read().split())
        except FileNotFoundError:
            continue
    return states


def test_init_reaps_zombies_and_forwards_signals(daemon: Any) -> None:
    # Orphans re-parent to PID 1 and exit; a PID 1 that never waits (sleep) leaves them zombies.
    cmd = ["sh", "-c", "(sleep 0.3 &); (sleep 0.3 &); echo ready; exec sleep 1000"]
    cid = start(daemon, cmd, init=True)
    wait_output(daemon, cid, b"ready")
    top = daemon.call("container.top", {"id": cid})
    assert top["processes"][0][-1].startswith("/dev/init")
    assert daemon.call("container.inspect", {"id": cid})["command"] == " ".join(cmd)  # not tini's
    # the orphans exit 0.3 s after they started, and tini reaps them: left are tini and sleep
    wait_until(
        lambda: _states(daemon, cid) == ["S", "S"],
        what="the orphans to exit and be reaped",
        describe=lambda: _states(daemon, cid),
    )
    daemon.call("container.kill", {"id": cid})
    # without --init, the same orphans stay zombies (so the test above proves something)
    cid = start(daemon, cmd)
    wait_output(daemon, cid, b"ready")
    wait_until(
        lambda: _states(daemon, cid).count("Z") == 2,
        what="the orphans to exit (and stay zombies: nobody reaps them)",
        describe=lambda: _states(daemon, cid),
    )
    daemon.call("container.kill", {"id": cid})
    # tini passes the stop signal on to the command, and its exit status back
    cid = start(
        daemon, ["sh", "-c", "trap 'exit 5' TERM; echo ready; while true; do sleep 0.1; done"], init=True
    )
    wait_output(daemon, cid, b"ready")
    assert daemon.call("container.stop", {"id": cid, "timeout": 10})["exit_code"] == 5


def test_cp_both_ways(daemon: Any) -> None:
    host = tempfile.mkdtemp(prefix="tbcp", dir="/tmp")
    try:
        cid = start(
            daemon,
            [
                "sh",
                "-c",
                "mkdir -p /data/sub && echo hi > /data/sub/f && ln -s /etc/passwd /data/link && "
                "echo ready && sleep 1000",
            ],
        )
        wait_output(daemon, cid, b"ready")
        daemon.tug("cp", f"{cid}:/data/sub/f", host + "/f")
        with open(host + "/f") as f:
            assert f.read() == "hi\n"
        daemon.tug("cp", f"{cid}:/data", host)
        assert os.readlink(host + "/data/link") == "/etc/passwd"  # a link stays a link
        with open(host + "/data/sub/f") as f:
            assert f.read() == "hi\n"
        with open(host + "/up.txt", "w") as f:
            f.write("up\n")
        daemon.tug("cp", host + "/up.txt", f"{cid}:/data/sub/")
        daemon.call("container.kill", {"id": cid})
        daemon.call("container.wait", {"id": cid})
        # a stopped container: its root filesystem is mounted for the copy and unmounted after
        daemon.tug("cp", f"{cid}:/data/sub/up.txt", host + "/back.txt")
        with open(host + "/back.txt") as f:
            assert f.read() == "up\n"
        with pytest.raises(errors.NotFound):
            daemon.call("container.stat_path", {"id": cid, "path": "/nope"})
        assert b"no such file" in daemon.tug("cp", f"{cid}:/nope", host + "/x", check=False).stderr
    finally:
        shutil.rmtree(host)


def test_cp_never_escapes_the_container_root(daemon: Any) -> None:
    host = tempfile.mkdtemp(prefix="tbcp", dir="/tmp")
    secret = os.path.join(host, "secret")
    try:
        os.mkdir(secret)
        with open(os.path.join(secret, "s"), "w") as f:
            f.write("host secret\n")
        cid = start(
            daemon,
            [
                "sh",
                "-c",
                f"ln -s {secret} /esc && ln -s ../../../../../../{secret.lstrip('/')} /rel && "
                f"mkdir -p {secret} && echo container > {secret}/s && echo ready && sleep 1000",
            ],
        )
        wait_output(daemon, cid, b"ready")
        out = os.path.join(host, "out")
        os.mkdir(out)
        # /esc/s in the container is the container's own file, never the host's
        daemon.tug("cp", f"{cid}:/esc/s", out + "/a")
        daemon.tug("cp", f"{cid}:/rel/s", out + "/b")
        for name in ("a", "b"):
            with open(os.path.join(out, name)) as f:
                assert f.read() == "container\n"
        # writing through a link in the container lands inside the container
        with open(os.path.join(host, "w"), "w") as f:
            f.write("written\n")
        daemon.tug("cp", host + "/w", f"{cid}:/esc/w")
        assert not os.path.exists(os.path.join(secret, "w"))
        daemon.tug("cp", f"{cid}:{secret}/w", out + "/c")
        with open(os.path.join(out, "c")) as f:
            assert f.read() == "written\n"
        with open(os.path.join(secret, "s")) as f:
            assert f.read() == "host secret\n"
    finally:
        shutil.rmtree(host)


def test_the_cli_commands(daemon: Any) -> None:
    cid = start(daemon, ["sleep", "1000"])
    daemon.tug("pause", cid)
    assert "Paused" in daemon.tug("ps").stdout.decode()
    result = daemon.tug("pause", cid, check=False)
    assert result.returncode == 1 and b"already paused" in result.stderr
    daemon.tug("unpause", cid)
    assert daemon.call("container.inspect", {"id": cid})["state"] == "running"
    _, r = run(daemon, ["true"])
    assert r["exit_code"] == 0


def test_exec_into_a_paused_container_is_refused(daemon: Any) -> None:
    cid = start(daemon, ["sleep", "1000"])
    daemon.call("container.pause", {"id": cid})
    with pytest.raises(errors.FailedPrecondition, match="paused"):
        daemon.call("container.exec", {"id": cid, "cmd": ["true"]})
    assert daemon.call("container.inspect", {"id": cid})["state"] == "paused"
    daemon.call("container.unpause", {"id": cid})


def test_update_of_a_stopped_container_applies_at_its_next_start(daemon: Any) -> None:
    cid = daemon.call("container.create", {"image": "busybox", "cmd": ["sleep", "1000"]})["id"]
    daemon.call("container.update", {"id": cid, "memory": 32 * 1024 * 1024})
    daemon.call("container.start", {"id": cid})
    [sample] = daemon.call("container.stats", {"id": cid})
    assert sample["memory_limit"] == 32 * 1024 * 1024


def test_stats_streams_until_interrupted(daemon: Any) -> None:
    import signal
    import subprocess

    from .conftest import TUG

    cid = start(daemon, ["sleep", "1000"], name="streamed")
    proc = subprocess.Popen(
        [TUG, "--socket", daemon.socket, "stats", cid], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    try:
        assert proc.stdout is not None
        headers = 0
        while headers < 2:  # two refreshes
            line = proc.stdout.readline()
            assert line, "tug stats ended by itself"
            headers += line.startswith(b"CONTAINER ID")
            assert not line.startswith(cid[:12].encode()) or b"streamed" in line
    finally:
        proc.send_signal(signal.SIGINT)
        status = proc.wait(timeout=10)
        assert proc.stdout is not None
        proc.stdout.close()
    assert status == 130
