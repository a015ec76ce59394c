"""Crashes: tugd and shims killed with SIGKILL while containers run and exit."""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest

from tugwire.syncclient import Client

from .conftest import needs_root, needs_runc
from .helpers import output, start
from .waiting import wait_gone, wait_until

pytestmark = [pytest.mark.integration, needs_root, needs_runc]


def test_containers_survive_tugd_kill9_and_exits_while_down_are_kept(
    make_daemon: Any, backend: str, tmp_path: Any
) -> None:
    d = make_daemon(backend=backend)
    gate = tmp_path / "gate"
    gate.mkdir()
    runner = start(d, ["sh", "-c", "echo started; while true; do sleep 0.1; done"], name="runner")
    leaver = start(
        d,
        [
            "sh",
            "-c",
            "echo before; while [ ! -e /gate/go ]; do sleep 0.05; done; seq 1 5000; echo bye >&2; exit 42",
        ],
        name="leaver",
        volumes=[{"source": str(gate), "destination": "/gate"}],
    )
    shim_pids = {c: d.call("container.inspect", {"id": c})["shim_pid"] for c in (runner, leaver)}
    d.kill9()
    (gate / "go").write_text("")
    # The shim records the exit on its own; wait for its record rather than guessing a time.
    exit_file = os.path.join(d.state, "shims", leaver, "exit.json")
    wait_until(lambda: os.path.exists(exit_file), 20, "the shim to record the exit")
    d.start()
    info = d.call("container.inspect", {"id": "leaver"})
    assert info["state"] == "exited"
    assert info["exit_code"] == 42
    out, err = output(d, leaver)
    assert out == b"before\n" + b"".join(b"%d\n" % i for i in range(1, 5001))
    assert err == b"bye\n"
    wait_gone(shim_pids[leaver])  # a zombie counts: this machine's init reaps orphans lazily
    info = d.call("container.inspect", {"id": "runner"})
    assert info["state"] == "running"
    assert info["shim_pid"] == shim_pids[runner]
    # Following works on the re-attached container, and stop still reaches it.
    with Client(d.socket) as c:
        rid = c.send("container.logs", {"id": runner, "follow": True})
        msg = c.next_message()
        assert msg is not None and msg.get("method") == "container.logs.data"
        assert d.call("container.stop", {"id": runner, "timeout": 0})["exit_code"] == 137
        c.wait_for(rid)


def test_shim_kill9_is_reported_as_unknown_and_rm_cleans_up(daemon: Any) -> None:
    cid = start(daemon, ["sleep", "1000"])
    info = daemon.call("container.inspect", {"id": cid})
    os.kill(info["shim_pid"], signal.SIGKILL)
    result = daemon.call("container.wait", {"id": cid})
    assert result["state"] == "unknown"
    assert result["exit_code"] is None
    info = daemon.call("container.inspect", {"id": cid})
    assert info["state"] == "unknown"
    assert "shim" in info["reason"]
    daemon.call("container.delete", {"id": cid, "force": True})
    assert os.listdir(os.path.join(daemon.state, "runc")) == []


def test_shim_kill9_after_the_exit_keeps_the_true_code(daemon: Any, tmp_path: Any) -> None:
    cid = start(daemon, ["sh", "-c", "exit 3"])
    # Make tugd miss the exit: kill it, then kill the shim once its record is written.
    shim_pid = daemon.call("container.inspect", {"id": cid})["shim_pid"]
    daemon.kill9()
    exit_file = os.path.join(daemon.state, "shims", cid, "exit.json")
    wait_until(lambda: os.path.exists(exit_file), 20, "the shim to record the exit")
    os.kill(shim_pid, signal.SIGKILL)
    daemon.start()
    info = daemon.call("container.inspect", {"id": cid})
    assert (info["state"], info["exit_code"]) == ("exited", 3)


def test_restart_of_tugd_by_sigterm_leaves_containers_running(daemon: Any) -> None:
    cid = start(daemon, ["sleep", "1000"])
    pid = daemon.call("container.inspect", {"id": cid})["pid"]
    daemon.restart()
    os.kill(pid, 0)
    assert daemon.call("container.inspect", {"id": cid})["state"] == "running"


def test_template_death_leaves_shims_alone(daemon: Any) -> None:
    cid = start(daemon, ["sleep", "1000"])
    info = daemon.call("container.inspect", {"id": cid})
    template = [p for p in _children(daemon.proc.pid) if b"template" in _cmdline(p)]
    assert len(template) == 1
    os.kill(template[0], signal.SIGKILL)
    os.kill(info["shim_pid"], 0)
    # The next start gets a new template.
    cid2 = start(daemon, ["sleep", "1000"])
    assert daemon.call("container.inspect", {"id": cid2})["state"] == "running"
    daemon.kill9()  # the template dies with tugd (PDEATHSIG), the shims do not
    wait_gone(template[0])
    os.kill(info["shim_pid"], 0)
    daemon.start()
    assert daemon.call("container.inspect", {"id": cid})["state"] == "running"


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except (OSError, ValueError):
                pass
    return out


def _cmdline(pid: int) -> bytes:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read()
