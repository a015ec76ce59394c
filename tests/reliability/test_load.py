"""Load with crashes: containers started and stopped in a loop by concurrent clients while tugd is
killed with SIGKILL at random moments and started again. Afterwards every container is accounted
for, in its true state with its true exit code, and nothing leaked (processes, mounts, runc state,
tugd's file descriptors, zombies).

Each container writes its own truth to a file of its own (a volume): ``start`` when it starts, and
the exit code it is about to exit with. So the test knows how every run ended without trusting
tugd: the last line is the code tugd must report, and a last line ``start`` would be a container
that tugd shows as stopped while it never ended.

Sizes: ``TUG_RELIABILITY_SCALE`` (default 1: 16 containers, 4 clients, 20 s, a kill every ~6 s;
10: the issue's figures, 200 containers, 20 clients, 200 s ... see docs/reliability.md).
"""

from __future__ import annotations

import os
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from tugwire.errors import FailedPrecondition, TugError
from tugwire.syncclient import Disconnected

from ..conftest import Daemon, needs_root, needs_runc
from ..waiting import wait_until
from .conftest import container_pids, scale, scaled, settled_leaks

pytestmark = [pytest.mark.reliability, pytest.mark.integration, needs_root, needs_runc]


@dataclass
class Tally:
    starts: int = 0
    stops: int = 0
    retried: int = 0  # calls that met a dead or restarting tugd and were made again
    kills: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, name: str) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + 1)


def command(i: int) -> tuple[list[str], int, int]:
    """The container's command, its exit code when stopped (SIGTERM) and when it ends alone."""
    on_term, on_end = 60 + i % 40, 10 + i % 40
    seconds = 0.2 + (i * 7 % 30) / 10  # 0.2 to 3.1 s
    script = (
        "echo start >> /out/exits; "
        f"trap 'echo {on_term} >> /out/exits; exit {on_term}' TERM; "
        f"sleep {seconds} & wait; echo {on_end} >> /out/exits; exit {on_end}"
    )
    return ["sh", "-c", script], on_term, on_end


def call(d: Daemon, tally: Tally, method: str, params: dict[str, Any], deadline: float) -> Any:
    """A call that waits out tugd's deaths (the killer restarts it) until ``deadline``."""

    def attempt() -> tuple[Any] | None:
        try:
            return (d.call(method, params),)
        except Disconnected:
            tally.add("retried")
            return None

    [result] = wait_until(attempt, deadline - time.monotonic(), f"tugd to answer {method}", interval=0.1)
    return result


def client(d: Daemon, ids: list[str], until: float, tally: Tally, errors: list[str], seed: int) -> None:
    rng = random.Random(seed)
    try:
        while time.monotonic() < until:
            cid = rng.choice(ids)
            state = call(d, tally, "container.inspect", {"id": cid}, until + 120)["state"]
            if state in ("created", "exited"):
                try:
                    call(d, tally, "container.start", {"id": cid}, until + 120)
                    tally.add("starts")
                except FailedPrecondition as exc:
                    if "already running" not in exc.message:  # a start retried across a crash
                        raise
            elif state == "running":
                call(d, tally, "container.stop", {"id": cid, "timeout": 30}, until + 120)
                tally.add("stops")
            else:
                info = d.call("container.inspect", {"id": cid})
                errors.append(f"{cid[:12]} in state {state}: {info.get('reason')}")
                return
        for cid in ids:  # the end: every container stopped by its client
            call(d, tally, "container.stop", {"id": cid, "timeout": 30}, time.monotonic() + 120)
    except (TugError, Disconnected, AssertionError) as exc:
        errors.append(f"client {seed}: {type(exc).__name__}: {exc}")


def killer(d: Daemon, until: float, period: float, tally: Tally, seed: int) -> None:
    rng = random.Random(seed)
    while True:
        time.sleep(rng.uniform(period / 2, period * 1.5))  # the killer's pace: the scenario, not a wait
        if time.monotonic() > until:
            return
        d.kill9()
        tally.add("kills")
        time.sleep(rng.uniform(0, 0.5))  # the scenario: clients meet a dead socket for a while
        d.start(timeout=60)


def tugd_fds(d: Daemon) -> int:
    assert d.proc is not None
    return len(os.listdir(f"/proc/{d.proc.pid}/fd"))


def zombie_children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] == "Z" and int(fields[1]) == pid:
                out.append(int(entry))
    return out


def test_start_stop_load_with_random_kill9_of_tugd(make_daemon: Any, tmp_path: Any) -> None:
    d = make_daemon()
    n = scaled(16, 2)
    clients = min(max(int(4 * scale()), 1), 20)
    duration = 20 * scale()
    period = 6.0
    truth: dict[str, tuple[str, int, int]] = {}
    for i in range(n):
        out = tmp_path / f"c{i}"
        out.mkdir()
        cmd, on_term, on_end = command(i)
        cid = d.call(
            "container.create",
            {
                "image": "busybox",
                "cmd": cmd,
                "name": f"load{i}",
                "volumes": [{"source": str(out), "destination": "/out"}],
            },
        )["id"]
        truth[cid] = (str(out / "exits"), on_term, on_end)
    ids = list(truth)
    tally = Tally()
    errors: list[str] = []
    until = time.monotonic() + duration
    threads = [
        threading.Thread(target=client, args=(d, ids[k::clients], until, tally, errors, k), daemon=True)
        for k in range(clients)
    ]
    kill_thread = threading.Thread(target=killer, args=(d, until, period, tally, 12345), daemon=True)
    for t in [*threads, kill_thread]:
        t.start()
    kill_thread.join(timeout=duration + 120)
    for t in threads:
        t.join(timeout=duration + 300)
    assert not kill_thread.is_alive() and not any(t.is_alive() for t in threads), "the load did not end"
    assert errors == []
    assert tally.kills >= 1 and tally.starts >= n
    print(f"\nload: {n} containers, {clients} clients, {duration:g} s: {tally}")

    # Every container accounted for, in its true state with its true exit code.
    listed = {c["id"]: c for c in d.call("container.list", {"all": True})}
    assert set(listed) == set(ids)
    for cid, (exits, on_term, on_end) in truth.items():
        info = d.call("container.inspect", {"id": cid})
        assert container_pids(cid) == [], f"{info['name']} still has processes"
        try:
            with open(exits) as f:
                lines = f.read().split()
        except FileNotFoundError:
            lines = []
        if not lines:
            assert info["state"] == "created", info
            continue
        assert lines[-1] != "start", f"{info['name']}: a run that never ended, tugd says {info['state']}"
        assert info["state"] == "exited", info
        assert info["exit_code"] == int(lines[-1]), (info["name"], info["exit_code"], lines[-3:])
        assert info["exit_code"] in (on_term, on_end)
        # Every run ended before the next began: "start" is followed by its code (two codes when
        # SIGTERM came between the echo of the normal end and the exit: the trap's code is last).
        runs = " ".join(lines).split("start")[1:]
        assert lines[0] == "start" and all(run.split() for run in runs), lines
        for run in runs:
            codes = [int(c) for c in run.split()]
            assert codes in ([on_end], [on_term], [on_end, on_term]), (info["name"], lines)

    # No leak: the last tugd's fds do not grow with more work, no zombie children, nothing left.
    assert settled_leaks(d) == []
    assert zombie_children(d.proc.pid) == []
    before = tugd_fds(d)
    for cid in ids[: min(n, 10)]:
        d.call("container.start", {"id": cid})
        d.call("container.stop", {"id": cid, "timeout": 30})
    assert settled_leaks(d) == []
    assert tugd_fds(d) <= before + 2, (before, tugd_fds(d))
    assert zombie_children(d.proc.pid) == []
