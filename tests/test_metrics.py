"""Metrics end to end: a real tugd running real containers, its exposition checked by promtool,
scraped by a real Prometheus, queried over Prometheus's HTTP API; a stuck shim that must not stall
a scrape; a shim's own HTTP listener."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Any

import pytest

from tugwire import errors

from .conftest import TUGD, free_port, http_get, needs_prometheus, needs_root, needs_runc
from .helpers import run, start
from .waiting import wait_output

pytestmark = [pytest.mark.integration, needs_root, needs_runc]

MiB = 1024 * 1024
# Holds 50 MiB of the container's memory: a file on its /dev/shm (a 64 MiB tmpfs) is charged to
# its cgroup and cannot be reclaimed without swap.
HOLD_50M = "dd if=/dev/zero of=/dev/shm/hold bs=1M count=50 2>/dev/null; echo held; exec sleep 1000"


def scrape(d: Any, headers: dict[str, str] | None = None) -> str:
    status, body = http_get(f"http://127.0.0.1:{d.metrics_port}/metrics", headers)
    assert status == 200, body
    return body.decode()


def samples(text: str, name: str) -> dict[str, float]:
    """``{labels: value}`` of the samples of ``name`` in an exposition."""
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            series, _, value = line.rpartition(" ")
            out[series[len(name) :]] = float(value)
    return out


def promtool(text: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["promtool", "check", "metrics"], input=text.encode(), capture_output=True)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool (prometheus)")
def test_exposition_passes_promtool(make_daemon: Any, backend: str) -> None:
    d = make_daemon(backend=backend)
    run(d, ["sh", "-c", "echo out; echo err >&2; exit 3"], name="three")
    a = start(d, ["sh", "-c", "echo up; exec sleep 1000"], name="a", memory=64 * MiB)
    start(d, ["sleep", "1000"], name="b")
    with pytest.raises(errors.NotFound):
        d.call("container.inspect", {"id": "nope"})
    wait_output(d, a, b"up")
    text = scrape(d)
    result = promtool(text)
    assert result.returncode == 0 and result.stdout + result.stderr == b"", (result, text)

    assert samples(text, "tugboat_containers") == {
        '{state="created"}': 0,
        '{state="running"}': 2,
        '{state="paused"}': 0,
        '{state="exited"}': 1,
        '{state="unknown"}': 0,
    }
    assert samples(text, "tugboat_shims_live") == {"": 2}
    assert samples(text, "tugboat_container_exits_total") == {'{code="3"}': 1}
    assert samples(text, "tugboat_container_start_duration_seconds_count") == {"": 3}
    api = samples(text, "tugboat_api_requests_total")
    assert api['{method="container.inspect",outcome="not_found"}'] == 1
    assert api['{method="container.start",outcome="ok"}'] == 3
    assert samples(text, "tugboat_container_oom_kills_total") == {"": 0}
    info = next(iter(samples(text, "tugboat_build_info")))
    assert f'backend="{backend}"' in info and 'runtime="runc"' in info and 'version="' in info
    # Per container, labelled by id, name and image; each family's header once.
    memory = samples(text, "tugboat_container_memory_usage_bytes")
    assert {k.split('name="')[1].split('"')[0] for k in memory} == {"a", "b"}
    assert all(f'id="{a}"' in k for k in memory if 'name="a"' in k)
    assert all('image="busybox:latest"' in k for k in memory)
    assert samples(text, "tugboat_container_memory_limit_bytes") == {
        f'{{id="{a}",name="a",image="busybox:latest"}}': 64 * MiB
    }
    logs = samples(text, "tugboat_container_log_bytes_total")
    assert logs[f'{{id="{a}",name="a",image="busybox:latest",stream="stdout"}}'] == 3  # "up\n"
    assert samples(text, "tugboat_container_pids")[f'{{id="{a}",name="a",image="busybox:latest"}}'] == 1
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            assert text.count(line.rsplit(" ", 1)[0] + " ") == 1, line


def test_stuck_shim_does_not_stall_the_scrape(make_daemon: Any) -> None:
    d = make_daemon()
    good = start(d, ["sleep", "1000"], name="good")
    stuck = start(d, ["sleep", "1000"], name="stuck")
    shim_pid = d.call("container.inspect", {"id": stuck})["shim_pid"]
    os.kill(shim_pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        text = scrape(d)
        took = time.monotonic() - t0
        assert took < 2.0, took  # the shim deadline (1 s), not forever
        cpu = samples(text, "tugboat_container_cpu_seconds_total")
        assert any(good in k for k in cpu) and not any(stuck in k for k in cpu)
        assert samples(text, "tugboat_shim_scrape_errors_total") == {"": 1}
        assert samples(text, "tugboat_shims_live") == {"": 2}  # still alive, only stuck
        # Prometheus says how long it waits; the shims get half of it.
        t0 = time.monotonic()
        text = scrape(d, {"X-Prometheus-Scrape-Timeout-Seconds": "0.4"})
        assert time.monotonic() - t0 < 1.0
        assert samples(text, "tugboat_shim_scrape_errors_total") == {"": 2}
    finally:
        os.kill(shim_pid, signal.SIGCONT)
    text = scrape(d)
    assert any(stuck in k for k in samples(text, "tugboat_container_cpu_seconds_total"))


@pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool (prometheus)")
def test_shim_serves_its_own_metrics_where_asked(make_daemon: Any) -> None:
    d = make_daemon()
    port = free_port()
    cid = start(
        d, ["sh", "-c", "echo hello; exec sleep 1000"], name="own", metrics_address=f"127.0.0.1:{port}"
    )
    wait_output(d, cid, b"hello")
    status, body = http_get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    text = body.decode()
    assert promtool(text).returncode == 0, promtool(text)
    assert samples(text, "tugboat_container_log_bytes_total")[
        f'{{id="{cid}",name="own",image="busybox:latest",stream="stdout"}}'
    ] == len(b"hello\n")
    assert http_get(f"http://127.0.0.1:{port}/")[0] == 404
    # The same port for a second container: its start fails, saying why, and leaves it created.
    other = d.call(
        "container.create", {"image": "busybox", "cmd": ["true"], "metrics_address": f"127.0.0.1:{port}"}
    )
    with pytest.raises(errors.InvalidArgument, match="metrics"):
        d.call("container.start", {"id": other["id"]})
    assert d.call("container.inspect", {"id": other["id"]})["state"] == "created"
    with pytest.raises(errors.InvalidArgument):
        d.call("container.create", {"image": "busybox", "metrics_address": "localhost:1"})
    # Once the container is gone, so is its listener.
    d.call("container.delete", {"id": cid, "force": True})
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass


def test_oom_kill_and_exit_codes_are_counted(make_daemon: Any) -> None:
    d = make_daemon()
    # 60 MiB into /dev/shm under a 16 MiB limit: the kernel's OOM killer ends it.
    _cid, result = run(d, ["dd", "if=/dev/zero", "of=/dev/shm/x", "bs=1M", "count=60"], memory=16 * MiB)
    assert result["oom_killed"] is True, result
    run(d, ["true"])
    text = scrape(d)
    assert samples(text, "tugboat_container_oom_kills_total") == {"": 1}
    assert samples(text, "tugboat_container_exits_total") == {'{code="137"}': 1, '{code="0"}': 1}


def test_metrics_address_in_use_stops_tugd() -> None:
    base = tempfile.mkdtemp(prefix="tb", dir="/tmp")
    try:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            result = subprocess.run(
                [
                    TUGD,
                    "--root",
                    f"{base}/r",
                    "--state",
                    f"{base}/s",
                    "--metrics-address",
                    f"127.0.0.1:{port}",
                ],
                capture_output=True,
                timeout=30,
            )
        assert result.returncode == 2  # every failure to start: exit 2, one line
        assert f"cannot serve metrics on 127.0.0.1:{port}" in result.stderr.decode()
        bad = subprocess.run(
            [TUGD, "--root", f"{base}/r", "--state", f"{base}/s", "--metrics-address", "nowhere"],
            capture_output=True,
            timeout=30,
        )
        assert bad.returncode == 2 and b"--metrics-address" in bad.stderr
    finally:
        shutil.rmtree(base, ignore_errors=True)


@needs_prometheus
def test_prometheus_scrapes_tugd(make_daemon: Any, make_prometheus: Any) -> None:
    d = make_daemon()
    mem = start(d, ["sh", "-c", HOLD_50M], name="mem", memory=256 * MiB)
    start(d, ["sh", "-c", "while true; do echo tick; sleep 0.2; done"], name="talker")
    wait_output(d, mem, b"held")
    prom = make_prometheus([f"127.0.0.1:{d.metrics_port}"])
    assert prom.wait_for('up{job="tugd"}', lambda v: v == 1) == 1

    usage = prom.wait_for('tugboat_container_memory_usage_bytes{name="mem"}', lambda v: v > 0)
    assert 50 * MiB <= usage <= 50 * MiB + 16 * MiB, usage / MiB
    working = prom.value('tugboat_container_memory_working_set_bytes{name="mem"}')
    assert working is not None and 50 * MiB <= working <= usage
    assert prom.value('tugboat_container_memory_limit_bytes{name="mem"}') == 256 * MiB
    assert prom.value('tugboat_container_memory_limit_bytes{name="talker"}') is None  # no limit
    assert prom.value('tugboat_container_pids{name="mem"}') == 1
    assert prom.value('tugboat_containers{state="running"}') == 2
    assert prom.value("tugboat_build_info") == 1

    # Counters that grow: the talker's log bytes, and the API requests we make meanwhile.
    expr = 'tugboat_container_log_bytes_total{name="talker",stream="stdout"}'
    first = prom.wait_for(expr, lambda v: v > 0)
    prom.wait_for(expr, lambda v: v > first)
    api = 'sum(tugboat_api_requests_total{method="container.list"}) or vector(0)'
    before = prom.value(api) or 0
    for _ in range(5):
        d.call("container.list", {"all": True})
    prom.wait_for(api, lambda v: v >= before + 5)
    assert prom.wait_for(f"rate({expr}[5s])", lambda v: v > 0) > 0
    cpu = prom.wait_for('tugboat_container_cpu_seconds_total{name="talker"}', lambda v: v > 0)
    assert cpu > 0
