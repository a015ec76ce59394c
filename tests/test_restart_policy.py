"""Restart policies with real containers: on-failure:N, always, stop cancels, and coming back
after a tugd restart and after a (simulated) reboot."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Callable
from typing import Any

import pytest

from tugwire import errors

from .conftest import http_get, needs_root, needs_runc
from .helpers import start
from .waiting import wait_actions, wait_until

pytestmark = [pytest.mark.integration, needs_root, needs_runc]


def inspect(d: Any, cid: str) -> dict[str, Any]:
    info: dict[str, Any] = d.call("container.inspect", {"id": cid})
    return info


def wait_inspect(d: Any, cid: str, done: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
    """The container's inspect once ``done(inspect)`` holds (the restart policy's timers have no
    event of their own to wait on)."""

    def reached() -> dict[str, Any] | None:
        info = inspect(d, cid)
        return info if done(info) else None

    return wait_until(reached, 20, what, describe=lambda: inspect(d, cid))


def settled(d: Any, cid: str) -> dict[str, Any]:
    """The inspect of an exited container once tugd has handled its last exit, the restart
    policy's decision included: a kill waits for the container's lock, which the handling of an
    exit holds from its ``die`` event until the policy has decided, and is then refused (the
    container is not running) without changing anything."""
    with pytest.raises(errors.FailedPrecondition, match="is not running"):
        d.call("container.kill", {"id": cid})
    return inspect(d, cid)


def test_on_failure_restarts_exactly_n_times(daemon: Any) -> None:
    cid = start(daemon, ["sh", "-c", "exit 1"], restart="on-failure:2")
    actions = wait_actions(daemon, cid, lambda a: a.count("die") == 3)
    assert actions.count("restart") == 2
    assert actions.count("start") == 3
    # No third restart is pending; that none comes later is tested on a fake clock
    # (test_restart_backoff.py), not by sleeping here.
    info = settled(daemon, cid)
    assert info["state"] == "exited" and info["exit_code"] == 1 and not info["restarting"]
    assert info["restart_count"] == 2
    assert info["restart_policy"] == "on-failure:2"
    _, body = http_get(f"http://127.0.0.1:{daemon.metrics_port}/metrics")
    assert b"\ntugboat_container_restarts_total 2.0\n" in body


def test_on_failure_leaves_a_clean_exit_alone(daemon: Any) -> None:
    cid = start(daemon, ["true"], restart="on-failure")
    wait_actions(daemon, cid, lambda a: "die" in a)
    info = settled(daemon, cid)
    assert info["state"] == "exited" and info["restart_count"] == 0 and not info["restarting"]


def test_always_restarts_a_killed_container_and_stop_ends_it(make_daemon: Any, backend: str) -> None:
    daemon = make_daemon(backend=backend)
    cid = start(daemon, ["sleep", "1000"], restart="always")
    pid = daemon.call("container.inspect", {"id": cid})["pid"]
    daemon.call("container.kill", {"id": cid})
    wait_actions(daemon, cid, lambda a: a.count("start") == 2)
    info = wait_inspect(daemon, cid, lambda i: i["state"] == "running", "the restarted container to run")
    assert info["restart_count"] == 1 and info["pid"] != pid
    daemon.tug("stop", "-t", "1", cid)
    info = settled(daemon, cid)
    assert info["state"] == "exited" and not info["restarting"] and info["restart_count"] == 1
    # a start by the user resets the count
    daemon.call("container.start", {"id": cid})
    assert daemon.call("container.inspect", {"id": cid})["restart_count"] == 0


def test_stop_cancels_a_pending_restart(daemon: Any) -> None:
    # Failing at once, again and again: the delay doubles (0.1, 0.2, 0.4, 0.8, 1.6 s...).
    cid = start(daemon, ["sh", "-c", "exit 3"], restart="always")
    info = wait_inspect(
        daemon, cid, lambda i: i["restart_count"] >= 4 and i["restarting"], "a fourth pending restart"
    )
    daemon.call("container.stop", {"id": cid})
    info = inspect(daemon, cid)
    assert not info["restarting"]
    count = info["restart_count"]
    # That the cancelled restart never comes, even after its delay, is tested on a fake clock
    # (test_restart_backoff.py); here: nothing is pending once the stop's exit is handled.
    info = settled(daemon, cid)
    assert info["state"] == "exited" and info["restart_count"] == count and not info["restarting"]
    # rm of a container with a pending restart
    cid = start(daemon, ["sh", "-c", "exit 3"], restart="always")
    wait_inspect(
        daemon, cid, lambda i: i["restart_count"] >= 3 and i["restarting"], "a third pending restart"
    )
    daemon.call("container.delete", {"id": cid})


def test_exit_while_tugd_was_down_is_restarted_when_it_returns(daemon: Any) -> None:
    cid = start(daemon, ["sleep", "1000"], restart="on-failure")
    pid = daemon.call("container.inspect", {"id": cid})["pid"]
    daemon.stop()
    os.kill(pid, signal.SIGKILL)  # the container's PID 1, started by this test's tugd
    daemon.start()
    info = wait_inspect(
        daemon, cid, lambda i: i["state"] == "running" and i["restart_count"] == 1, "the restart after tugd's"
    )
    assert info["pid"] != pid


def test_always_comes_back_after_a_reboot(daemon: Any) -> None:
    always = start(daemon, ["sleep", "1000"], restart="always")
    stopped = start(daemon, ["sleep", "1000"], restart="unless-stopped")
    plain = start(daemon, ["sleep", "1000"])
    daemon.call("container.stop", {"id": stopped, "timeout": 0})
    shim_pids = [daemon.call("container.inspect", {"id": c})["shim_pid"] for c in (always, plain)]
    daemon.stop()
    # The reboot: every container and shim gone, mounts gone, the state root emptied.
    runc_root = os.path.join(daemon.state, "runc")
    for cid in (always, plain):
        subprocess.run(["runc", "--root", runc_root, "delete", "--force", cid], check=True)
    for pid in shim_pids:
        os.kill(pid, signal.SIGKILL)
    for cid in (always, stopped, plain):
        subprocess.run(["umount", "-l", os.path.join(daemon.root, "containers", cid, "rootfs")], check=False)
    shutil.rmtree(daemon.state)
    os.makedirs(daemon.state)
    daemon.start()
    info = wait_inspect(daemon, always, lambda i: i["state"] == "running", "the start after the reboot")
    assert info["restart_count"] == 1
    assert daemon.call("container.inspect", {"id": plain})["state"] == "unknown"
    assert daemon.call("container.inspect", {"id": stopped})["state"] == "exited"


def test_the_cli_flags(daemon: Any) -> None:
    out = daemon.tug("run", "-d", "--restart", "on-failure:1", "--init", "busybox", "sh", "-c", "exit 2")
    cid = out.stdout.decode().strip()
    wait_actions(daemon, cid, lambda a: a.count("die") == 2)
    info = settled(daemon, cid)
    assert not info["restarting"] and info["state"] == "exited"
    assert info["restart_count"] == 1 and info["config"]["init"] is True
    bad = daemon.tug("run", "-d", "--restart", "sometimes", "busybox", "true", check=False)
    assert bad.returncode == 125 and b"invalid restart policy" in bad.stderr


def test_a_restart_policy_with_auto_remove_is_refused(daemon: Any) -> None:
    from tugwire import errors

    with pytest.raises(errors.InvalidArgument, match="conflicting options"):
        daemon.call(
            "container.create",
            {"image": "busybox", "cmd": ["true"], "restart": "always", "auto_remove": True},
        )
    assert daemon.call("container.list", {"all": True}) == []
