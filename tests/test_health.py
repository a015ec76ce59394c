"""Health checks end to end: real containers, checks run as execs of the shim."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tugwire.syncclient import Client

from .conftest import needs_root, needs_runc
from .helpers import start

pytestmark = [pytest.mark.integration, needs_root, needs_runc]


def health_events(d: Any, cid: str, count: int) -> list[str]:
    """The statuses of the first ``count`` ``health_status`` events of the container."""
    with Client(d.socket) as c:
        c.send("events.subscribe", {"since": 0, "filters": {"container": cid, "event": "health_status"}})
        statuses: list[str] = []
        while len(statuses) < count:
            msg = c.next_message()
            assert msg is not None
            if msg.get("method") == "event":
                statuses.append(msg["params"]["attributes"]["status"])
        return statuses


def test_starting_healthy_unhealthy_with_an_event_on_each_change(make_daemon: Any, backend: str) -> None:
    daemon = make_daemon(backend=backend)
    script = "touch /tmp/ok; sleep 1.5; rm /tmp/ok; sleep 1000"
    cid = start(
        daemon,
        ["sh", "-c", script],
        health_cmd="test -f /tmp/ok",
        health_interval=0.2,
        health_retries=2,
        health_timeout=5,
    )
    assert daemon.call("container.inspect", {"id": cid})["health_check"]["status"] == "starting"
    assert health_events(daemon, cid, 2) == ["starting", "healthy"]
    assert "(healthy)" in daemon.tug("ps").stdout.decode()
    assert [c["health"] for c in daemon.call("container.list") if c["id"] == cid] == ["healthy"]
    assert health_events(daemon, cid, 3) == ["starting", "healthy", "unhealthy"]
    info = daemon.call("container.inspect", {"id": cid})
    assert info["health_check"]["status"] == "unhealthy"
    assert info["health_check"]["failing_streak"] >= 2
    assert info["health_check"]["log"][-1]["exit_code"] == 1
    daemon.call("container.kill", {"id": cid})
    daemon.call("container.wait", {"id": cid})
    assert daemon.call("container.inspect", {"id": cid})["health_check"] is None


def test_a_check_that_times_out_fails_and_is_killed(daemon: Any) -> None:
    cid = start(
        daemon,
        ["sleep", "1000"],
        health_cmd="sleep 77",
        health_interval=0.1,
        health_timeout=0.3,
        health_retries=1,
    )
    assert health_events(daemon, cid, 2) == ["starting", "unhealthy"]
    log = daemon.call("container.inspect", {"id": cid})["health_check"]["log"]
    assert "exceeded timeout" in log[-1]["output"]
    # the timed-out checks were killed: at most the one running now is left
    time.sleep(0.2)
    cmds = [p[-1] for p in daemon.call("container.top", {"id": cid})["processes"]]
    assert sum("sleep 77" in c for c in cmds) <= 1


def test_start_period_and_the_cli_flags(daemon: Any) -> None:
    out = daemon.tug(
        "run",
        "-d",
        "--health-cmd",
        "exit 1",
        "--health-interval",
        "100ms",
        "--health-retries",
        "1",
        "--health-start-period",
        "1s",
        "busybox",
        "sleep",
        "1000",
    )
    cid = out.stdout.decode().strip()
    time.sleep(0.6)  # inside the start period: failures do not count
    assert daemon.call("container.inspect", {"id": cid})["health_check"]["status"] == "starting"
    assert "(health: starting)" in daemon.tug("ps").stdout.decode()
    assert health_events(daemon, cid, 2) == ["starting", "unhealthy"]


def test_the_images_healthcheck(daemon: Any, busybox_tar: str) -> None:
    check = {"Test": ["CMD-SHELL", "exit 3"], "Interval": 100_000_000, "Retries": 1}
    daemon.call("image.import", {"path": busybox_tar, "ref": "checked", "config": {"Healthcheck": check}})
    cid = daemon.call("container.create", {"image": "checked", "cmd": ["sleep", "1000"]})["id"]
    daemon.call("container.start", {"id": cid})
    assert health_events(daemon, cid, 2) == ["starting", "unhealthy"]
    assert daemon.call("container.inspect", {"id": cid})["health_check"]["log"][-1]["exit_code"] == 3
    # health_cmd "none" turns the image's check off
    cid = daemon.call("container.create", {"image": "checked", "cmd": ["sleep", "1"], "health_cmd": "none"})[
        "id"
    ]
    assert daemon.call("container.inspect", {"id": cid})["config"]["health"] is None
