"""Events: kept in the store (``--since`` after a restart), replayed then live without gap or
duplicate, ordered per container, filtered; OOM kills read from the cgroup's own counter."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from typing import Any

import anyio
import pytest

from supervisor import events as ev
from supervisor.store import Store
from tugwire import errors
from tugwire.syncclient import Client, response_result
from tugwire.timefmt import rfc3339

from .conftest import TUG, needs_root, needs_runc
from .helpers import run, start
from .waiting import read_stream

MiB = 1024 * 1024
F = Any


def integration(fn: F) -> F:
    """Real tugd, shims and runc: needs root and runc."""
    return pytest.mark.integration(needs_root(needs_runc(fn)))


def collect(d: Any, params: dict[str, Any]) -> list[dict[str, Any]]:
    """The events of a bounded ``events.subscribe`` (one with ``until``), until its response."""
    out: list[dict[str, Any]] = []
    with Client(d.socket) as c:
        rid = c.send("events.subscribe", params)
        while True:
            msg = c.next_message()
            assert msg is not None
            if msg.get("id") == rid:
                response_result(msg)  # raises the error, if it is one
                return out
            if msg.get("method") == "event" and msg["params"]["request"] == rid:
                out.append(msg["params"])


def history(d: Any, **filters: Any) -> list[dict[str, Any]]:
    """Every stored event up to now that matches ``filters``."""
    return collect(d, {"since": 0, "until": time.time_ns(), "filters": filters})


def of(events: list[dict[str, Any]], cid: str) -> list[str]:
    return [e["action"] for e in events if e["id"] == cid]


# ------------------------------------------------------------------------- store and bus, unit


def test_store_keeps_the_last_day_and_at_least_the_last_10000(tmp_path: Any) -> None:
    store = Store(str(tmp_path / "t.db"))
    now = time.time_ns()
    day = 24 * 3600 * 10**9
    try:
        # 12,000 old events (two days ago) and 50 recent ones.
        with store.transaction():
            for i in range(12_000):
                store.append_event(now - 2 * day + i, "container", "start", f"c{i}", "", "", {})
            for i in range(50):
                store.append_event(now - 1000 + i, "container", "die", f"r{i}", "", "", {"exit_code": i})
        assert store.prune_events(now) == 12_050 - 10_000
        rows = store.events_after(0, limit=20_000)
        assert len(rows) == 10_000
        assert rows[-1].attributes == {"exit_code": 49}
        assert [r.seq for r in rows] == sorted(r.seq for r in rows)
        # Recent events all stay, however many: only the old ones beyond the last 10,000 go.
        with store.transaction():
            for i in range(10_500):
                store.append_event(now + i, "container", "create", f"n{i}", "", "", {})
        store.prune_events(now + 10_500)
        rows = store.events_after(0, limit=30_000)
        assert len(rows) == 10_550  # every event of the last day, none older
        assert all(r.time_ns >= now - day for r in rows)
        # A hard cap bounds a host that churns.
        store.prune_events(now + 10_500, cap=100)
        assert store.count_events() == 100
        # Sequence numbers are never reused, even once everything older went.
        assert store.append_event(now, "image", "import", "x", "", "", {}) > rows[-1].seq
    finally:
        store.close()


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.anyio
async def test_replay_then_live_has_no_gap_and_no_duplicate(tmp_path: Any) -> None:
    """Events published while the replay runs (here: from inside the subscriber's own send, in
    the middle of the second page) come exactly once, in order."""
    store = Store(str(tmp_path / "t.db"))
    bus = ev.EventBus(store)
    try:
        for i in range(1200):
            bus.publish(ev.Event("container", "start", f"old{i}"))
        got: list[str] = []
        done = anyio.Event()
        last = anyio.Event()

        async def send(event: ev.Event) -> None:
            got.append(event.id)
            if event.id == "old700":
                for j in range(20):
                    bus.publish(ev.Event("container", "die", f"new{j}"))
            if event.id == "new19":
                done.set()
            if event.id == "last":
                last.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: bus.stream(lambda e: True, send, since_ns=0))
            await done.wait()
            bus.publish(ev.Event("container", "destroy", "last"))
            with anyio.fail_after(5):
                await last.wait()
            tg.cancel_scope.cancel()
        assert got == [f"old{i}" for i in range(1200)] + [f"new{j}" for j in range(20)] + ["last"]
    finally:
        store.close()


@pytest.mark.anyio
async def test_until_bounds_the_stream(tmp_path: Any) -> None:
    store = Store(str(tmp_path / "t.db"))
    bus = ev.EventBus(store)
    try:
        t0 = time.time_ns()
        for i in range(5):
            bus.publish(ev.Event("container", "start", f"c{i}", time_ns=t0 + i))
        got: list[str] = []

        async def send(event: ev.Event) -> None:
            got.append(event.id)

        # A past ``until``: the replay, then the end at once.
        with anyio.fail_after(5):
            await bus.stream(lambda e: True, send, since_ns=t0 + 1, until_ns=t0 + 3)
        assert got == ["c1", "c2", "c3"]
        # ``until`` alone shows the past up to then, as docker.
        got.clear()
        with anyio.fail_after(5):
            await bus.stream(lambda e: e.id != "c0", send, until_ns=t0 + 2)
        assert got == ["c1", "c2"]
        # A future ``until``: live events until then, then the end.
        got.clear()
        subscribed = anyio.Event()
        async with anyio.create_task_group() as tg:

            async def publish_when_subscribed() -> None:
                await subscribed.wait()
                bus.publish(ev.Event("container", "die", "live"))

            tg.start_soon(publish_when_subscribed)
            with anyio.fail_after(5):
                await bus.stream(
                    lambda e: True,
                    send,
                    until_ns=time.time_ns() + 300_000_000,
                    since_ns=t0 + 10,
                    ready=subscribed.set,
                )
        assert got == ["live"]
    finally:
        store.close()


def test_filters() -> None:
    known = {"web": "a" * 64}
    f = ev.Filters({"container": ["web", "bbbb"], "event": "die"}, known.get)
    assert f(ev.Event("container", "die", "a" * 64, "renamed?"))  # by the id the name has now
    assert f(ev.Event("container", "die", "b" * 64, "gone"))  # by id prefix, a removed container
    assert f(ev.Event("container", "die", "c" * 64, "web"))  # by the name stored in the event
    assert not f(ev.Event("container", "start", "a" * 64, "web"))
    assert not f(ev.Event("image", "die", "a" * 64, "web"))
    img = ev.Filters({"image": "busybox", "type": ["image", "container"]}, known.get)
    assert img(ev.Event("container", "start", "x", "n", "busybox:latest"))
    assert img(ev.Event("image", "untag", "sha256:" + "d" * 64, "busybox:latest", "busybox:latest"))
    assert not img(ev.Event("container", "start", "x", "n", "alpine:latest"))
    bad: Any
    for bad in ({"colour": "red"}, {"type": "volume"}, {"container": ""}, {"container": 3}, []):
        with pytest.raises(errors.InvalidArgument):
            ev.Filters(bad, known.get)


def test_parse_time() -> None:
    assert ev.parse_time(5, "since") == 5
    assert ev.parse_time("1970-01-01T00:00:01.5Z", "since") == 1_500_000_000
    assert ev.parse_time("1970-01-01T01:00:00.000000007+01:00", "since") == 7
    assert ev.parse_time("2026-01-02T03:04:05.123456789Z", "until") == 1767323045123456789
    for bad in ("yesterday", -1, 1.5, True, None):
        with pytest.raises(errors.InvalidArgument):
            ev.parse_time(bad, "since")


def test_cli_time_and_filter_options() -> None:
    from supervisor.cli import main as cli

    now = 1_800_000_000 * 10**9
    assert cli.parse_time_ns("10m", now) == now - 600 * 10**9
    assert cli.parse_time_ns("0s", now) == now
    assert cli.parse_time_ns("1700000000.5", now) == 1_700_000_000_500_000_000
    assert cli.parse_time_ns("2026-01-02T03:04:05.000000001Z", now) == 1767323045000000001
    with pytest.raises(ValueError, match="--until"):
        cli.parse_time_ns("soon", now, option="--until")
    assert cli.parse_since("0s", now) == "2027-01-15T08:00:00.000000000Z"  # logs keep their form
    assert cli.event_filters(["type=container", "container=a", "container=b"]) == {
        "type": ["container"],
        "container": ["a", "b"],
    }
    for bad in ("type", "=x", "type="):
        with pytest.raises(errors.InvalidArgument):
            cli.event_filters([bad])
    args = cli.build_parser(["events"]).parse_args(["events", "--since", "1h", "--until", "0s"])
    assert 0 < args.until - args.since <= 3600 * 10**9 + 10**9


# --------------------------------------------------------------------------- real tugd and runc


@integration
def test_events_are_ordered_per_container_with_exit_codes(make_daemon: Any, backend: str) -> None:
    daemon = make_daemon(backend=backend)
    with Client(daemon.socket) as sub:
        rid = sub.send("events.subscribe", {"filters": {"type": "container"}})
        a, result = run(daemon, ["sh", "-c", "exit 3"], name="three")
        assert result["exit_code"] == 3
        b = start(daemon, ["sleep", "1000"], name="sleeper")
        daemon.call("container.kill", {"id": b})
        daemon.call("container.wait", {"id": b})
        daemon.call("container.delete", {"id": a})
        daemon.call("container.delete", {"id": b})
        live = read_stream(sub, rid, lambda got: sum(e["action"] == "destroy" for e in got) >= 2)
    assert of(live, a) == ["create", "start", "die", "destroy"]
    assert of(live, b) == ["create", "start", "kill", "die", "destroy"]
    die_a = next(e for e in live if e["id"] == a and e["action"] == "die")
    assert die_a["attributes"] == {"exit_code": 3, "signal": None, "oom_killed": False}
    assert die_a["name"] == "three" and die_a["image"] == "busybox:latest"
    die_b = next(e for e in live if e["id"] == b and e["action"] == "die")
    assert die_b["attributes"] == {"exit_code": 137, "signal": "SIGKILL", "oom_killed": False}
    kill_b = next(e for e in live if e["id"] == b and e["action"] == "kill")
    assert kill_b["attributes"] == {"signal": "SIGKILL"}
    # The stored history says the same, in the same order.
    assert history(daemon, type="container") == live


@integration
def test_since_works_after_tugd_restarts(make_daemon: Any, backend: str) -> None:
    daemon = make_daemon(backend=backend)
    cid, _ = run(daemon, ["sh", "-c", "exit 5"], name="before")
    t_restart = time.time_ns()
    daemon.restart()
    after, _ = run(daemon, ["true"], name="after")
    events = history(daemon)
    assert [e["action"] for e in events if e["type"] == "image"] == ["import"]
    assert of(events, cid) == ["create", "start", "die"]
    assert of(events, after) == ["create", "start", "die"]
    assert next(e for e in events if e["id"] == cid and e["action"] == "die")["attributes"]["exit_code"] == 5
    # since/until select by time, in RFC 3339 too.
    later = collect(daemon, {"since": rfc3339(t_restart), "until": rfc3339(time.time_ns())})
    assert {e["id"] for e in later} == {after}
    # The CLI: a bounded stream in JSON lines, exit 0.
    r = daemon.tug(
        "events", "--since", "1h", "--until", "0s", "--format", "json", "--filter", "container=before"
    )
    lines = [json.loads(line) for line in r.stdout.decode().splitlines()]
    assert [e["action"] for e in lines] == ["create", "start", "die"]
    assert lines[2]["attributes"]["exit_code"] == 5
    assert lines[0]["time"].endswith("Z") and isinstance(lines[0]["time_nano"], int)


@integration
def test_until_in_the_future_ends_the_stream_then(daemon: Any) -> None:
    t0 = time.monotonic()
    with Client(daemon.socket) as c:
        rid = c.send(
            "events.subscribe", {"until": time.time_ns() + 1_500_000_000, "filters": {"type": "container"}}
        )
        cid, _ = run(daemon, ["true"])
        got = []
        while True:
            msg = c.next_message()
            assert msg is not None
            if msg.get("id") == rid:
                assert msg["result"] == {}
                break
            got.append(msg["params"]["action"])
    assert 1.0 < time.monotonic() - t0 < 10
    # Events from before the subscription are included (until alone means the past too).
    assert got[-3:] == ["create", "start", "die"]
    # The CLI with a future --until ends by itself, exit 0.
    r = subprocess.run(
        [
            TUG,
            "--socket",
            daemon.socket,
            "events",
            "--until",
            str(time.time() + 1),
            "--filter",
            f"container={cid}",
        ],
        capture_output=True,
        timeout=20,
    )
    assert r.returncode == 0, r.stderr
    assert [line.split()[2] for line in r.stdout.decode().splitlines()] == ["create", "start", "die"]


@integration
def test_filters_against_a_real_daemon(daemon: Any) -> None:
    a, _ = run(daemon, ["true"], name="alpha")
    b, _ = run(daemon, ["sh", "-c", "exit 1"], name="beta")
    daemon.call("container.delete", {"id": a})
    # A removed container's history still matches its name and its id.
    assert of(history(daemon, container="alpha"), a) == ["create", "start", "die", "destroy"]
    assert {e["id"] for e in history(daemon, container=a[:12])} == {a}
    assert [(e["name"], e["action"]) for e in history(daemon, container=["alpha", "beta"], event="die")] == [
        ("alpha", "die"),
        ("beta", "die"),
    ]
    assert [e["action"] for e in history(daemon, type="image")] == ["import"]
    assert {e["type"] for e in history(daemon, image="busybox")} == {"image", "container"}
    with pytest.raises(errors.InvalidArgument):
        collect(daemon, {"filters": {"colour": "blue"}})
    with pytest.raises(errors.InvalidArgument):
        collect(daemon, {"since": "last tuesday"})
    r = daemon.tug("events", "--filter", "nonsense", check=False)
    assert r.returncode == 1 and b"invalid filter" in r.stderr
    r = daemon.tug("events", "--since", "last tuesday", check=False)
    assert r.returncode == 2 and b"--since" in r.stderr
    daemon.call("container.delete", {"id": b})


OOM_COMMANDS = [
    # /dev/shm is a tmpfs in the container: its pages are charged to the container's memory cgroup.
    ["sh", "-c", "dd if=/dev/zero of=/dev/shm/fill bs=1M count=100"],
    # busybox tail holds everything it reads until the end: it never gets there.
    ["tail", "/dev/zero"],
]


@integration
@pytest.mark.parametrize("cmd", OOM_COMMANDS, ids=["shm", "tail"])
def test_a_container_past_its_memory_limit_is_reported_oom_killed(daemon: Any, cmd: list[str]) -> None:
    with Client(daemon.socket) as sub:
        rid = sub.send("events.subscribe", {"filters": {"container": "hog"}})
        cid, result = run(daemon, cmd, name="hog", memory=32 * MiB)
        assert result == {
            "id": cid,
            "state": "exited",
            "exit_code": 137,
            "signal": "SIGKILL",
            "oom_killed": True,
        }
        live = read_stream(sub, rid, lambda got: bool(got) and got[-1]["action"] == "die")
    assert [e["action"] for e in live] == ["create", "start", "oom", "die"]
    assert live[-1]["attributes"] == {"exit_code": 137, "signal": "SIGKILL", "oom_killed": True}
    info = daemon.call("container.inspect", {"id": cid})
    assert (info["state"], info["exit_code"], info["oom_killed"]) == ("exited", 137, True)
    # The CLI says so too.
    assert json.loads(daemon.tug("inspect", "hog").stdout)["oom_killed"] is True
    daemon.call("container.delete", {"id": cid})


@integration
def test_a_sigkill_for_another_reason_is_not_oom(daemon: Any) -> None:
    cid = (
        daemon.tug("run", "-d", "-m", "32m", "--name", "victim", "busybox", "sleep", "1000")
        .stdout.decode()
        .strip()
    )
    daemon.tug("kill", "victim")
    assert daemon.tug("wait", "victim").stdout == b"137\n"
    info = daemon.call("container.inspect", {"id": cid})
    assert (info["exit_code"], info["exit_signal"], info["oom_killed"]) == (137, "SIGKILL", False)
    actions = [e["action"] for e in history(daemon, container=cid)]
    assert actions == ["create", "start", "kill", "die"]
    daemon.tug("rm", "victim")


@integration
def test_cli_events_streams_live_and_exits_0_on_ctrl_c(daemon: Any) -> None:
    since = str(time.time() - 0.001)  # replayed if it comes before the subscription: no race
    proc = subprocess.Popen(
        [
            TUG,
            "--socket",
            daemon.socket,
            "events",
            "--since",
            since,
            "--format",
            "json",
            "--filter",
            "type=container",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        cid, _ = run(daemon, ["true"])
        lines = [json.loads(proc.stdout.readline()) for _ in range(3)]
        assert [(e["id"], e["action"]) for e in lines] == [(cid, "create"), (cid, "start"), (cid, "die")]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
