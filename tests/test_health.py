"""Health checks end to end: real containers, checks run as execs of the shim."""

from __future__ import annotations

import calendar
import time
from typing import Any

import pytest

from .conftest import needs_root, needs_runc
from .helpers import start
from .waiting import wait_events, wait_until

pytestmark = [pytest.mark.integration, needs_root, needs_runc]


def health_events(d: Any, cid: str, count: int) -> list[str]:
    """The statuses of the first ``count`` ``health_status`` events of the container."""
    events = wait_events(
        d,
        lambda evs: len(evs) >= count,
        what=f"{count} health_status events of {cid[:12]}",
        container=cid,
        event="health_status",
    )
    return [e["attributes"]["status"] for e in events[:count]]


def health(d: Any, cid: str) -> dict[str, Any]:
    check: dict[str, Any] = d.call("container.inspect", {"id": cid})["health_check"]
    return check


def epoch_ns(rfc3339: str) -> int:
    """``2026-01-02T03:04:05.123456789Z`` in nanoseconds since the epoch."""
    seconds = calendar.timegm(time.strptime(rfc3339[:19], "%Y-%m-%dT%H:%M:%S"))
    frac = rfc3339[20:].rstrip("Z")
    return seconds * 1_000_000_000 + int(frac.ljust(9, "0")[:9] or 0)


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
    # the timed-out checks were killed: once three of them are done, at most the one running
    # now is left (they would run for 77 s if not; a killed one takes a moment to go)
    wait_until(
        lambda: sum("exceeded timeout" in e["output"] for e in health(daemon, cid)["log"]) >= 3,
        what="three timed-out checks",
        describe=lambda: health(daemon, cid),
    )

    def checks_left() -> int:
        cmds = [p[-1] for p in daemon.call("container.top", {"id": cid})["processes"]]
        return sum("sleep 77" in c for c in cmds)

    wait_until(lambda: checks_left() <= 1, 10, "the timed-out checks to be killed", describe=checks_left)


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
    events = wait_events(daemon, lambda evs: len(evs) >= 2, container=cid, event="health_status")
    assert [e["attributes"]["status"] for e in events[:2]] == ["starting", "unhealthy"]
    # not before the start period ended (a counted failure would have made it unhealthy at the
    # first check, 100 ms after the start)
    started = epoch_ns(daemon.call("container.inspect", {"id": cid})["started_at"])
    assert events[1]["time_nano"] - started >= 1_000_000_000
    # failures inside a start period do not count: still starting after three of them
    cid = start(
        daemon,
        ["sleep", "1000"],
        health_cmd="exit 1",
        health_interval=0.1,
        health_retries=1,
        health_start_period=600,
    )

    def three_failed() -> dict[str, Any] | None:
        h = health(daemon, cid)
        return h if len(h["log"]) >= 3 else None

    failed = wait_until(three_failed, what="three failed checks", describe=lambda: health(daemon, cid))
    assert failed["status"] == "starting" and failed["failing_streak"] == 0
    assert all(e["exit_code"] == 1 for e in failed["log"])
    assert "(health: starting)" in daemon.tug("ps").stdout.decode()


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
