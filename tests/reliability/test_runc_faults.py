"""runc failure injection with the runc wrapper (tests/reliability/runc-wrapper): runc that exits
non-zero with a message (the user sees runc's own words), that hangs (every call has a deadline:
``--runtime-timeout``; stop still returns), that dies before or between create and start. Each
time: nothing changes that should not, and nothing is left behind."""

from __future__ import annotations

from typing import Any

import pytest

from tugwire.errors import RuntimeFailed, TugError

from ..conftest import Daemon, needs_root, needs_runc
from .conftest import RuncFaults, container_pids, leaks, runc_list, settled_leaks

pytestmark = [pytest.mark.reliability, pytest.mark.integration, needs_root, needs_runc]

TIMEOUT = 2  # --runtime-timeout of these tests, in seconds


def faulty(make_daemon: Any, faults: RuncFaults, backend: str = "asyncio") -> Daemon:
    d: Daemon = make_daemon(backend=backend, runtime=faults.path, extra=["--runtime-timeout", str(TIMEOUT)])
    return d


def create(d: Daemon, cmd: list[str]) -> str:
    cid: str = d.call("container.create", {"image": "busybox", "cmd": cmd})["id"]
    return cid


def state(d: Daemon, cid: str) -> tuple[str, int | None]:
    info = d.call("container.inspect", {"id": cid})
    return info["state"], info["exit_code"]


def test_runc_error_message_reaches_the_user_and_changes_nothing(
    make_daemon: Any, runc_faults: RuncFaults, backend: str
) -> None:
    d = faulty(make_daemon, runc_faults, backend)
    cid = create(d, ["sh", "-c", "exit 6"])
    runc_faults.set("run", "fail unable to start container: injected by the wrapper (errno 28)")
    with pytest.raises(RuntimeFailed) as err:
        d.call("container.start", {"id": cid})
    assert "injected by the wrapper (errno 28)" in err.value.message
    assert "run failed (exit status 1)" in err.value.message
    # The CLI shows the same words, and fails.
    result = d.tug("start", cid, check=False)
    assert result.returncode != 0
    assert b"injected by the wrapper (errno 28)" in result.stderr
    assert state(d, cid) == ("created", None)
    assert leaks(d) == []
    runc_faults.clear()
    d.call("container.start", {"id": cid})
    assert d.call("container.wait", {"id": cid})["exit_code"] == 6


def test_a_hung_runc_create_is_killed_at_its_deadline(make_daemon: Any, runc_faults: RuncFaults) -> None:
    d = faulty(make_daemon, runc_faults)
    cid = create(d, ["sleep", "1000"])
    runc_faults.set("run", "hang")
    with pytest.raises(RuntimeFailed, match=f"timed out after {TIMEOUT}s"):
        d.call("container.start", {"id": cid})
    assert state(d, cid) == ("created", None)
    assert leaks(d) == []  # the hung runc was killed, its state (if any) deleted
    runc_faults.clear()
    d.call("container.start", {"id": cid})
    assert d.call("container.stop", {"id": cid, "timeout": 0})["exit_code"] == 137


@pytest.mark.parametrize("rule", ["die", "die-after-create"])
def test_runc_killed_before_or_between_create_and_start(
    make_daemon: Any, runc_faults: RuncFaults, rule: str
) -> None:
    d = faulty(make_daemon, runc_faults)
    cid = create(d, ["sleep", "1000"])
    runc_faults.set("run", rule, once=True)
    with pytest.raises(RuntimeFailed, match="run failed"):
        d.call("container.start", {"id": cid})
    assert state(d, cid) == ("created", None)
    assert runc_list(d) == []
    assert container_pids(cid) == []
    assert leaks(d) == []


def test_stop_never_waits_on_runc_kill(make_daemon: Any, runc_faults: RuncFaults) -> None:
    """Stop signals PID 1 itself, never through ``runc kill``: a runc whose kill hangs cannot hang
    it. The container ignores SIGTERM: stop escalates to SIGKILL after its 1 s and returns."""
    d = faulty(make_daemon, runc_faults)
    cid = create(d, ["sh", "-c", "trap '' TERM; while true; do sleep 0.05; done"])
    d.call("container.start", {"id": cid})
    runc_faults.set("kill", "hang")
    result = d.call("container.stop", {"id": cid, "timeout": 1})
    assert (result["state"], result["exit_code"]) == ("exited", 137)
    assert not [c for c in runc_faults.calls() if c.startswith("kill")]
    assert settled_leaks(d) == []


def test_a_hung_runc_delete_after_the_exit_is_cleaned_up(make_daemon: Any, runc_faults: RuncFaults) -> None:
    """The shim's ``runc delete`` after the exit hangs: it is killed at its deadline, the exit is
    recorded with its true code all the same, and tugd's cleanup deletes the runtime's state."""
    d = faulty(make_daemon, runc_faults)
    cid = create(d, ["sleep", "1000"])
    d.call("container.start", {"id": cid})
    runc_faults.set("delete", "hang", once=True)
    result = d.call("container.stop", {"id": cid, "timeout": 0})
    assert (result["state"], result["exit_code"]) == ("exited", 137)
    d.call("container.delete", {"id": cid})
    assert "delete hang" in runc_faults.calls()
    assert settled_leaks(d) == []


def test_a_hung_runc_kill_all_fails_at_its_deadline_and_changes_nothing(
    make_daemon: Any, runc_faults: RuncFaults
) -> None:
    d = faulty(make_daemon, runc_faults)
    cid = create(d, ["sleep", "1000"])
    d.call("container.start", {"id": cid})
    runc_faults.set("kill", "hang")
    with pytest.raises(TugError, match="timed out"):
        d.call("container.kill", {"id": cid, "signal": "TERM", "all": True})
    assert state(d, cid) == ("running", None)
    runc_faults.clear()
    assert d.call("container.stop", {"id": cid, "timeout": 0})["exit_code"] == 137
    assert settled_leaks(d) == []


def test_pause_failure_shows_runc_message_and_the_container_keeps_running(
    make_daemon: Any, runc_faults: RuncFaults
) -> None:
    d = faulty(make_daemon, runc_faults)
    cid = create(d, ["sleep", "1000"])
    d.call("container.start", {"id": cid})
    runc_faults.set("pause", "fail freezer: injected failure to freeze")
    with pytest.raises(TugError, match="injected failure to freeze"):
        d.call("container.pause", {"id": cid})
    assert state(d, cid) == ("running", None)
    runc_faults.set("pause", "hang")
    with pytest.raises(TugError, match="timed out"):
        d.call("container.pause", {"id": cid})
    runc_faults.clear()
    assert state(d, cid) == ("running", None)
    assert d.call("container.stop", {"id": cid, "timeout": 0})["exit_code"] == 137


def test_runtime_timeout_is_checked_and_bounds_the_shim_deadline() -> None:
    from supervisor.config import Config, ConfigError

    for bad in (0.0, -1.0, 3601.0):
        with pytest.raises(ConfigError, match="--runtime-timeout"):
            Config(runtime="/bin/true", runtime_timeout=bad).validated()
    cfg = Config(runtime="/bin/true", runtime_timeout=100.0, shim_timeout=60.0).validated()
    # tugd waits for a shim's birth longer than the shim waits for runc: runc's error comes first.
    assert (cfg.runtime_timeout, cfg.shim_timeout) == (100.0, 110.0)
