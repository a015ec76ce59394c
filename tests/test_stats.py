"""Metrics, the pure parts: the shim's cgroup readers on fake v1 and v2 trees, its hand-written
text format (checked by promtool where it is installed), tugd's merge of the shims' texts, and the
tiny HTTP server on both anyio backends."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

from shimd import stats
from supervisor.metrics import merge
from tugwire import httpserve

CG = "/tugboat/" + "ab" * 32

needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool (prometheus)")


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def fake_v1(root: Path, *, limit: int = 9223372036854771712) -> None:
    rel = CG.strip("/")
    write(root / "cpuacct" / rel / "cpuacct.usage", "2500000000\n")
    mem = root / "memory" / rel
    write(mem / "memory.usage_in_bytes", "60000000\n")
    write(mem / "memory.limit_in_bytes", f"{limit}\n")
    write(
        mem / "memory.stat",
        "cache 10000000\nrss 50000000\ninactive_file 1\ntotal_inactive_file 8000000\ntotal_rss 50000000\n",
    )
    write(root / "pids" / rel / "pids.current", "3\n")


def fake_v2(root: Path, *, limit: str = "max") -> None:
    d = root / CG.strip("/")
    write(d / "cgroup.controllers", "cpu memory pids\n")
    write(d / "cpu.stat", "usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n")
    write(d / "memory.current", "40000000\n")
    write(d / "memory.max", limit + "\n")
    write(d / "memory.stat", "anon 30000000\nfile 10000000\ninactive_file 6000000\nactive_file 4000000\n")
    write(d / "pids.current", "7\n")


def test_cgroup_v1(tmp_path: Path) -> None:
    fake_v1(tmp_path)
    s = stats.read_cgroup(CG, str(tmp_path))
    assert s.version == 1
    assert s.cpu_seconds == 2.5
    assert s.memory_usage == 60_000_000
    assert s.memory_working_set == 52_000_000  # usage - total_inactive_file
    assert s.memory_limit is None  # PAGE_COUNTER_MAX: no limit
    assert s.pids == 3


def test_cgroup_v1_limit_and_combined_cpu_mount(tmp_path: Path) -> None:
    fake_v1(tmp_path, limit=64 * 1024 * 1024)
    # Hosts that mount cpu and cpuacct together ("cpu,cpuacct") and have no cpuacct link.
    os.rename(tmp_path / "cpuacct", tmp_path / "cpu,cpuacct")
    s = stats.read_cgroup(CG, str(tmp_path))
    assert s.memory_limit == 64 * 1024 * 1024
    assert s.cpu_seconds == 2.5


def test_cgroup_v2(tmp_path: Path) -> None:
    fake_v2(tmp_path)
    s = stats.read_cgroup(CG, str(tmp_path))
    assert s.version == 2
    assert s.cpu_seconds == 1.5
    assert s.memory_usage == 40_000_000
    assert s.memory_working_set == 34_000_000  # usage - inactive_file
    assert s.memory_limit is None  # "max"
    assert s.pids == 7
    fake_v2(tmp_path, limit="104857600")
    assert stats.read_cgroup(CG, str(tmp_path)).memory_limit == 104857600


def test_cgroup_v1_detail(tmp_path: Path) -> None:
    fake_v1(tmp_path, limit=64 * 1024 * 1024)
    rel = CG.strip("/")
    write(tmp_path / "cpuacct" / rel / "cpuacct.stat", f"user {3 * stats.USER_HZ}\nsystem {stats.USER_HZ}\n")
    cpu = tmp_path / "cpu" / rel
    write(cpu / "cpu.cfs_period_us", "100000\n")
    write(cpu / "cpu.cfs_quota_us", "20000\n")
    write(cpu / "cpu.shares", "1024\n")
    write(cpu / "cpu.stat", "nr_periods 10\nnr_throttled 4\nthrottled_time 2500000000\n")
    mem = tmp_path / "memory" / rel
    write(mem / "memory.memsw.usage_in_bytes", "60004096\n")
    write(mem / "memory.memsw.limit_in_bytes", "9223372036854771712\n")
    write(mem / "memory.max_usage_in_bytes", "70000000\n")
    write(mem / "memory.failcnt", "2\n")
    write(mem / "memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n")
    write(tmp_path / "pids" / rel / "pids.max", "max\n")
    write(
        tmp_path / "blkio" / rel / "blkio.throttle.io_service_bytes",
        "7:9 Read 4096\n7:9 Write 8192\nTotal 12288\n",
    )
    write(tmp_path / "blkio" / rel / "blkio.throttle.io_serviced", "7:9 Read 1\n7:9 Write 2\nTotal 3\n")
    d = stats.read_cgroup(CG, str(tmp_path)).detail
    assert (d["cpu_user_seconds"], d["cpu_system_seconds"]) == (3, 1)
    assert (d["cpu_period"], d["cpu_quota"], d["cpu_shares"]) == (100000, 20000, 1024)
    assert (d["cpu_cfs_periods"], d["cpu_cfs_throttled_periods"], d["cpu_cfs_throttled_seconds"]) == (
        10,
        4,
        2.5,
    )
    assert (d["memory_rss"], d["memory_swap"], d["memory_max_usage"]) == (50_000_000, 4096, 70_000_000)
    assert (d["memory_failcnt"], d["oom_events"], d["memory_swap_limit"], d["pids_limit"]) == (2, 1, 0, 0)
    [io] = d["io"]
    assert (io["device"], io["read_bytes"], io["write_bytes"], io["read_ops"], io["write_ops"]) == (
        "7:9",
        4096,
        8192,
        1,
        2,
    )


def test_cgroup_v2_detail(tmp_path: Path) -> None:
    fake_v2(tmp_path)
    d = tmp_path / CG.strip("/")
    write(d / "cpu.max", "20000 100000\n")
    write(d / "cpu.weight", "39\n")  # runc's weight of shares 1024
    write(d / "memory.events", "low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\n")
    write(d / "memory.swap.max", "67108864\n")
    write(d / "pids.max", "100\n")
    write(d / "io.stat", "7:9 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n")
    x = stats.read_cgroup(CG, str(tmp_path)).detail
    assert (x["cpu_user_seconds"], x["cpu_system_seconds"]) == (1, 0.5)
    assert (x["cpu_quota"], x["cpu_period"], x["cpu_shares"]) == (20000, 100000, 998)  # lossy
    assert (x["memory_cache"], x["memory_rss"]) == (10_000_000, 30_000_000)
    assert (x["memory_failcnt"], x["oom_events"], x["memory_swap_limit"], x["pids_limit"]) == (
        5,
        1,
        67108864,
        100,
    )
    assert x["io"][0]["write_ops"] == 2


def test_read_procs() -> None:
    # This process: its stdin/out/err at least, and its threads.
    p = stats.read_procs([os.getpid(), 999999999])
    assert p["file_descriptors"] >= 3 and p["threads"] >= 1 and p["sockets"] >= 0


def test_cgroup_gone_reports_nothing(tmp_path: Path) -> None:
    s = stats.read_cgroup(CG, str(tmp_path))
    assert (s.cpu_seconds, s.memory_usage, s.memory_working_set, s.memory_limit, s.pids) == (None,) * 5
    assert stats.render(stats.labels(id="x", name="n", image="i"), s, {}, None, []) == ""


def test_working_set_never_negative(tmp_path: Path) -> None:
    fake_v2(tmp_path)
    write(tmp_path / CG.strip("/") / "memory.stat", "inactive_file 99999999999\n")
    assert stats.read_cgroup(CG, str(tmp_path)).memory_working_set == 0


def test_net_dev(tmp_path: Path) -> None:
    write(
        tmp_path / "42" / "net" / "dev",
        "Inter-|   Receive                                                |  Transmit\n"
        " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo"
        " colls carrier compressed\n"
        "    lo:     120       2    0    0    0     0          0         0      120       2    0    0    0"
        "     0       0          0\n"
        "  eth0: 5000 10 0 0 0 0 0 0 7000 12 0 0 0 0 0 0\n",
    )
    assert stats.read_net(42, str(tmp_path)) == [("lo", 120, 120), ("eth0", 5000, 7000)]
    assert stats.read_net(43, str(tmp_path)) == []


def sample_text(tmp_path: Path, name: str = "web", cid: str = "ab" * 32) -> str:
    fake_v1(tmp_path, limit=128 << 20)
    return stats.render(
        stats.labels(id=cid, name=name, image="busybox:latest"),
        stats.read_cgroup(CG, str(tmp_path)),
        {"stdout": 10, "stderr": 2},
        0,
        [("lo", 1, 2)],
    )


def test_render_text_format(tmp_path: Path) -> None:
    text = sample_text(tmp_path)
    lines = text.splitlines()
    assert "# TYPE tugboat_container_cpu_seconds_total counter" in lines
    assert "# TYPE tugboat_container_memory_usage_bytes gauge" in lines
    labels = f'id="{"ab" * 32}",name="web",image="busybox:latest"'
    assert f"tugboat_container_cpu_seconds_total{{{labels}}} 2.5" in lines
    assert f"tugboat_container_memory_working_set_bytes{{{labels}}} 52000000" in lines
    assert f"tugboat_container_memory_limit_bytes{{{labels}}} 134217728" in lines
    assert f'tugboat_container_log_bytes_total{{{labels},stream="stdout"}} 10' in lines
    assert f'tugboat_container_network_transmit_bytes_total{{{labels},interface="lo"}} 2' in lines
    # Every family: HELP, then TYPE, then its samples, once.
    helps = [line.split()[2] for line in lines if line.startswith("# HELP")]
    assert len(helps) == len(set(helps)) == len(stats.FAMILIES)
    assert text.endswith("\n")


def test_label_values_are_escaped() -> None:
    assert stats.labels(name='a"b\\c\nd') == 'name="a\\"b\\\\c\\nd"'


def test_merge_one_header_per_family(tmp_path: Path) -> None:
    a = sample_text(tmp_path / "a", name="a", cid="aa" * 32)
    b = sample_text(tmp_path / "b", name="b", cid="bb" * 32)
    merged = merge([a, "", b])
    lines = merged.splitlines()
    for family in (f[0] for f in stats.FAMILIES.values()):
        assert lines.count(f"# HELP {family} " + _help(family)) == 1
        assert sum(1 for line in lines if line.startswith(f"# TYPE {family} ")) == 1
        # The family's samples follow its header, from both shims.
        start = lines.index(next(x for x in lines if x.startswith(f"# TYPE {family} ")))
        names = set()
        for line in lines[start + 1 :]:
            if line.startswith("#"):
                break
            assert line.startswith(family)
            names.add(line.split('name="')[1].split('"')[0])
        assert names == {"a", "b"}
    assert merge([]) == ""


def _help(family: str) -> str:
    return next(h for n, _t, h in stats.FAMILIES.values() if n == family)


@needs_promtool
def test_promtool_accepts_merged_shim_text(tmp_path: Path) -> None:
    merged = merge([sample_text(tmp_path / "a", "a", "aa" * 32), sample_text(tmp_path / "b", "b", "bb" * 32)])
    result = subprocess.run(["promtool", "check", "metrics"], input=merged.encode(), capture_output=True)
    assert result.returncode == 0, result
    assert result.stdout + result.stderr == b""


def test_shim_metrics_modules_import_nothing_new() -> None:
    """Every shim pays for what it imports: shimd.stats and tugwire.httpserve may import nothing
    that the shim did not have already (anyio, dataclasses, logging, socket, ...)."""
    code = (
        "import sys, anyio, anyio.abc, dataclasses, json, logging, socket, ctypes; "
        "import tugwire.jsonrpc, tugwire.errors; before = set(sys.modules); "
        "import shimd.stats, tugwire.httpserve; "
        "print(sorted(set(sys.modules) - before - {'shimd', 'shimd.stats', 'tugwire.httpserve'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=os.path.dirname(os.path.dirname(__file__)),
    ).stdout.strip()
    assert out == "[]", out


def test_parse_address() -> None:
    assert httpserve.parse_address("127.0.0.1:9323") == ("127.0.0.1", 9323)
    assert httpserve.parse_address("[::1]:0") == ("::1", 0)
    for bad in ("9323", "localhost:9323", "127.0.0.1:x", "127.0.0.1:70000", ":9323", "1.2.3:4"):
        with pytest.raises(httpserve.AddressError):
            httpserve.parse_address(bad)


# ------------------------------------------------------------------ the HTTP server, both backends


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def _http(port: int, request: bytes) -> bytes:
    async with await anyio.connect_tcp("127.0.0.1", port) as s:
        await s.send(request)
        data = b""
        try:
            while True:
                data += await s.receive()
        except anyio.EndOfStream:
            return data


@pytest.mark.anyio
async def test_http_server() -> None:
    seen: list[dict[str, str]] = []

    async def render(headers: dict[str, str]) -> bytes:
        seen.append(headers)
        return b"# HELP x y\n# TYPE x gauge\nx 1\n"

    listener = await anyio.abc.SocketListener.from_socket(httpserve.bind_tcp("127.0.0.1", 0))
    port = int(httpserve.bound_address(listener).rsplit(":", 1)[1])
    async with anyio.create_task_group() as tg:
        tg.start_soon(httpserve.serve, listener, render)
        ok = await _http(
            port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Prometheus-Scrape-Timeout-Seconds: 3\r\n\r\n"
        )
        head, _, body = ok.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK")
        assert b"Content-Type: text/plain; version=0.0.4; charset=utf-8" in head
        assert b"Content-Length: %d" % len(body) in head
        assert body == b"# HELP x y\n# TYPE x gauge\nx 1\n"
        assert seen[0]["x-prometheus-scrape-timeout-seconds"] == "3"
        assert (await _http(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(b"HTTP/1.1 404")
        assert (await _http(port, b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(b"HTTP/1.1 405")
        assert (await _http(port, b"nonsense\r\n\r\n")).startswith(b"HTTP/1.1 400")
        # HTTP/1.1 without Host (RFC 9112): h11 refuses it
        assert (await _http(port, b"GET /metrics HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 400")
        head_only = await _http(port, b"HEAD /metrics HTTP/1.0\r\n\r\n")
        assert head_only.startswith(b"HTTP/1.1 200") and head_only.endswith(b"\r\n\r\n")
        # A client that connects and goes away without a word harms nothing.
        async with await anyio.connect_tcp("127.0.0.1", port):
            pass
        assert (await _http(port, b"GET /metrics?x=1 HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(
            b"HTTP/1.1 200"
        )
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_http_render_failure_is_a_500() -> None:
    async def render(headers: dict[str, str]) -> Any:
        raise RuntimeError("boom")

    listener = await anyio.abc.SocketListener.from_socket(httpserve.bind_tcp("127.0.0.1", 0))
    port = int(httpserve.bound_address(listener).rsplit(":", 1)[1])
    async with anyio.create_task_group() as tg:
        tg.start_soon(httpserve.serve, listener, render)
        assert (await _http(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(b"HTTP/1.1 500")
        assert (await _http(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(
            b"HTTP/1.1 500"
        )  # still up
        tg.cancel_scope.cancel()
