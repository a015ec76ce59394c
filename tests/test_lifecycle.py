"""The core runtime end to end: real tugd, real shims, real runc, busybox containers."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from tugwire import errors
from tugwire.syncclient import Client

from .conftest import needs_root, needs_runc
from .helpers import output, records, run, start
from .waiting import read_stream

pytestmark = [pytest.mark.integration, needs_root, needs_runc]


def test_output_and_exit_code(make_daemon: Any, backend: str) -> None:
    d = make_daemon(backend=backend)
    cid, result = run(d, ["sh", "-c", "echo hello; echo oops >&2; printf 'no newline'; exit 7"])
    assert result["exit_code"] == 7
    assert result["signal"] is None
    out, err = output(d, cid)
    assert out == b"hello\nno newline"
    assert err == b"oops\n"
    info = d.call("container.inspect", {"id": cid})
    assert info["state"] == "exited"
    assert info["exit_code"] == 7
    assert info["oom_killed"] is False
    assert info["started_at"] and info["finished_at"]


def test_every_line_of_a_fast_exit_is_kept(daemon: Any) -> None:
    """200,000 lines printed as fast as possible, then exit at once: all of them, in order."""
    n = 200_000
    cid, result = run(daemon, ["seq", "1", str(n)])
    assert result["exit_code"] == 0
    out, _ = output(daemon, cid)
    lines = out.split(b"\n")
    assert lines[-1] == b""
    assert lines[:-1] == [str(i).encode() for i in range(1, n + 1)]


def test_long_lines_split_into_partial_records(daemon: Any) -> None:
    cid, result = run(daemon, ["sh", "-c", "head -c 40000 /dev/zero | tr '\\0' a; echo; echo end"])
    assert result["exit_code"] == 0
    recs = records(daemon, cid)
    assert all(len(r) < 16 * 1024 + 64 for r in recs)
    assert any(b" P " in r[:40] for r in recs)
    out, _ = output(daemon, cid)
    assert out == b"a" * 40000 + b"\nend\n"


def test_killed_by_signal_reports_128_plus_n(daemon: Any) -> None:
    cid = start(daemon, ["sleep", "1000"])
    daemon.call("container.kill", {"id": cid})
    result = daemon.call("container.wait", {"id": cid})
    assert result["exit_code"] == 137
    assert result["signal"] == "SIGKILL"


def test_stop_escalates_to_sigkill_after_the_timeout(daemon: Any) -> None:
    # PID 1 without a handler ignores SIGTERM: stop must escalate.
    cid = start(daemon, ["sleep", "1000"])
    t0 = time.monotonic()
    result = daemon.call("container.stop", {"id": cid, "timeout": 1})
    assert time.monotonic() - t0 >= 1
    assert result["exit_code"] == 137


def test_stop_with_a_handler_exits_cleanly(daemon: Any) -> None:
    cid = start(daemon, ["sh", "-c", "trap 'echo bye; exit 0' TERM; echo up; while true; do sleep 0.1; done"])
    with Client(daemon.socket) as c:  # wait until the trap is set: its first output
        rid = c.send("container.logs", {"id": cid, "follow": True})
        msg = c.next_message()
        assert msg is not None and msg.get("method") == "container.logs.data"
        result = daemon.call("container.stop", {"id": cid, "timeout": 30})
        assert result["exit_code"] == 0
        c.wait_for(rid)
    out, _ = output(daemon, cid)
    assert out == b"up\nbye\n"


def test_options_reach_the_container(daemon: Any, tmp_path: Any) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    vol.chmod(0o777)
    (vol / "in.txt").write_text("from host\n")
    script = (
        "id -u; id -g; pwd; hostname; echo $FOO; cat /data/in.txt; echo x > /data/out.txt; "
        "cat /ro/in.txt; echo y > /ro/new 2>/dev/null || echo ro-refused; "
        "touch /rootfile 2>/dev/null || echo rootfs-ro"
    )
    cid, result = run(
        daemon,
        ["sh", "-c", script],
        env=["FOO=bar"],
        workdir="/tmp",
        user="tug",
        hostname="boat",
        read_only=True,
        volumes=[
            {"source": str(vol), "destination": "/data"},
            {"source": str(vol), "destination": "/ro", "readonly": True},
        ],
    )
    out, err = output(daemon, cid)
    assert result["exit_code"] == 0, err
    assert out.decode().split("\n") == [
        "1000",
        "1000",
        "/tmp",
        "boat",
        "bar",
        "from host",
        "from host",
        "ro-refused",
        "rootfs-ro",
        "",
    ]
    assert (vol / "out.txt").read_text() == "x\n"


def test_entrypoint_and_limits(daemon: Any) -> None:
    cid, result = run(
        daemon, ["hello"], entrypoint=["echo", "say"], memory=64 * 1024 * 1024, cpus=0.5, pids_limit=50
    )
    assert result["exit_code"] == 0
    assert output(daemon, cid)[0] == b"say hello\n"
    cid = start(daemon, ["sleep", "100"], memory=64 * 1024 * 1024, pids_limit=50)
    mem = f"/sys/fs/cgroup/memory/tugboat/{cid}/memory.limit_in_bytes"
    pids = f"/sys/fs/cgroup/pids/tugboat/{cid}/pids.max"
    if os.path.exists(mem):
        assert _read(mem) == str(64 * 1024 * 1024)
    if os.path.exists(pids):
        assert _read(pids) == "50"


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def test_bad_input_is_refused_and_changes_nothing(daemon: Any) -> None:
    before = daemon.call("container.list", {"all": True})
    cases = [
        ({"image": "busybox", "name": "../x", "cmd": ["true"]}, errors.InvalidArgument),
        ({"image": "nosuchimage", "cmd": ["true"]}, errors.NotFound),
        ({"image": "busybox", "cmd": ["true"], "env": ["NOEQUALS"]}, errors.InvalidArgument),
        ({"image": "busybox", "cmd": ["true"], "workdir": "relative"}, errors.InvalidArgument),
        ({"image": "busybox", "cmd": ["true"], "memory": "lots"}, errors.InvalidParams),
        (
            {
                "image": "busybox",
                "cmd": ["true"],
                "volumes": [{"source": "/nonexistent/x", "destination": "/x"}],
            },
            errors.InvalidArgument,
        ),
        ({"cmd": ["true"]}, errors.InvalidParams),
    ]
    for params, exc in cases:
        with pytest.raises(exc):
            daemon.call("container.create", params)
    assert daemon.call("container.list", {"all": True}) == before
    assert os.listdir(os.path.join(daemon.root, "containers")) == []

    cid = start(daemon, ["sleep", "1000"], name="dup")
    with pytest.raises(errors.AlreadyExists):
        daemon.call("container.create", {"image": "busybox", "name": "dup", "cmd": ["true"]})
    with pytest.raises(errors.FailedPrecondition):
        daemon.call("container.start", {"id": "dup"})
    with pytest.raises(errors.FailedPrecondition):
        daemon.call("container.delete", {"id": "dup"})
    with pytest.raises(errors.NotFound):
        daemon.call("container.kill", {"id": "nosuch"})
    with pytest.raises(errors.InvalidArgument):
        daemon.call("container.kill", {"id": "dup", "signal": "SIGNOPE"})
    assert daemon.call("container.inspect", {"id": cid})["state"] == "running"
    daemon.call("container.delete", {"id": cid, "force": True})
    with pytest.raises(errors.NotFound):
        daemon.call("container.inspect", {"id": cid})


def test_runtime_error_reaches_the_user(daemon: Any) -> None:
    cid = daemon.call("container.create", {"image": "busybox", "cmd": ["/no/such/binary"]})["id"]
    with pytest.raises(errors.RuntimeFailed) as info:
        daemon.call("container.start", {"id": cid})
    assert "no such file or directory" in str(info.value).lower()
    assert daemon.call("container.inspect", {"id": cid})["state"] == "created"


def test_restart_of_an_exited_container_appends_logs(daemon: Any) -> None:
    cid, _ = run(daemon, ["echo", "again"])
    with Client(daemon.socket) as c:
        wid = c.send("container.wait", {"id": cid, "condition": "next-exit"})
        c.call("container.start", {"id": cid})
        assert c.wait_for(wid)["exit_code"] == 0
    assert output(daemon, cid)[0] == b"again\nagain\n"


def test_logs_tail_and_since(daemon: Any) -> None:
    cid, _ = run(daemon, ["seq", "1", "100"])
    out, _ = output(daemon, cid, tail=3)
    assert out == b"98\n99\n100\n"
    assert output(daemon, cid, tail=0)[0] == b""
    first = records(daemon, cid)[0].split(b" ")[0].decode()
    assert output(daemon, cid, since=first)[0].startswith(b"1\n")
    assert output(daemon, cid, since="2999-01-01T00:00:00Z")[0] == b""


def test_follow_sees_output_until_exit(daemon: Any) -> None:
    cid = daemon.call(
        "container.create",
        {"image": "busybox", "cmd": ["sh", "-c", "for i in 1 2 3; do echo $i; sleep 0.2; done"]},
    )["id"]
    with Client(daemon.socket) as c:
        rid = c.send("container.logs", {"id": cid, "follow": True})  # before start: waits for it
        c.call("container.start", {"id": cid})
        data = b""
        import base64

        while True:
            msg = c.next_message()
            assert msg is not None
            if msg.get("id") == rid:
                break
            data += base64.b64decode(msg["params"]["data"])
    assert [r.split(b" ", 3)[3] for r in data.split(b"\n")[:-1]] == [b"1", b"2", b"3"]


def test_rotation_keeps_whole_records_and_followers_lose_nothing(daemon: Any) -> None:
    n = 3000
    cid = daemon.call(
        "container.create",
        {
            "image": "busybox",
            "log_max_size": 16384,
            "log_max_files": 3,
            "cmd": [
                "sh",
                "-c",
                f"i=0; while [ $i -lt {n} ]; do i=$((i+1)); echo line-$i; "
                "[ $((i % 200)) -eq 0 ] && sleep 0.05; done; true",
            ],
        },
    )["id"]
    with Client(daemon.socket) as c:
        import base64

        rid = c.send("container.logs", {"id": cid, "follow": True})
        c.call("container.start", {"id": cid})
        data = b""
        while True:
            msg = c.next_message()
            assert msg is not None
            if msg.get("id") == rid:
                break
            data += base64.b64decode(msg["params"]["data"])
    got = [r.split(b" ", 3)[3] for r in data.split(b"\n")[:-1]]
    assert got == [f"line-{i}".encode() for i in range(1, n + 1)]
    log = daemon.call("container.inspect", {"id": cid})["log_path"]
    assert os.path.exists(log + ".1")
    assert not os.path.exists(log + ".3")
    kept = [r.split(b" ", 3)[3] for r in records(daemon, cid)]
    assert kept == got[-len(kept) :]  # what is kept is the newest part, whole records only


def test_two_daemons_side_by_side(make_daemon: Any) -> None:
    a = make_daemon()
    b = make_daemon()
    ca = start(a, ["sleep", "1000"], name="same")
    cb = start(b, ["sleep", "1000"], name="same")
    assert [c["id"] for c in a.call("container.list")] == [ca]
    assert [c["id"] for c in b.call("container.list")] == [cb]
    assert os.listdir(os.path.join(a.state, "runc")) == [ca]
    assert os.listdir(os.path.join(b.state, "runc")) == [cb]


def test_image_in_use_cannot_be_removed(daemon: Any) -> None:
    cid = daemon.call("container.create", {"image": "busybox", "cmd": ["true"]})["id"]
    with pytest.raises(errors.FailedPrecondition):
        daemon.call("image.remove", {"ref": "busybox"})
    daemon.call("container.delete", {"id": cid})
    daemon.call("image.remove", {"ref": "busybox"})
    assert daemon.call("image.list") == []
    assert os.listdir(os.path.join(daemon.root, "blobs", "sha256")) == []
    with pytest.raises(errors.NotFound):
        daemon.call("container.create", {"image": "busybox", "cmd": ["true"]})


def test_events_in_order(daemon: Any) -> None:
    with Client(daemon.socket) as sub:
        rid = sub.send("events.subscribe", {"filters": {"type": "container"}})
        cid, _ = run(daemon, ["true"])
        daemon.call("container.delete", {"id": cid})
        events = read_stream(sub, rid, lambda got: sum(e["id"] == cid for e in got) >= 4, what="4 events")
        actions = [e["action"] for e in events if e["id"] == cid]
    assert actions == ["create", "start", "die", "destroy"]


def test_a_stuck_follower_never_blocks_the_container(daemon: Any) -> None:
    """A client that asks to follow and then never reads: the container still writes 30 MB and
    exits, and the log has every byte."""
    cid = daemon.call(
        "container.create",
        {
            "image": "busybox",
            "log_max_size": 64 << 20,
            "cmd": ["sh", "-c", "yes 0123456789012345678901234567890123456789 | head -n 767000; echo done"],
        },
    )["id"]
    stuck = Client(daemon.socket)
    try:
        stuck.send("container.logs", {"id": cid, "follow": True})
        with Client(daemon.socket) as c:
            wid = c.send("container.wait", {"id": cid, "condition": "next-exit"})
            c.call("container.start", {"id": cid})
            assert c.wait_for(wid)["exit_code"] == 0
    finally:
        stuck.close()
    out, _ = output(daemon, cid)
    assert out == b"0123456789012345678901234567890123456789\n" * 767000 + b"done\n"


def test_a_follower_that_goes_away_ends_quietly(daemon: Any) -> None:
    cid = start(daemon, ["sh", "-c", "while true; do echo tick; sleep 0.01; done"])
    c = Client(daemon.socket)
    c.send("container.logs", {"id": cid, "follow": True})
    assert c.next_message() is not None
    c.close()
    daemon.call("container.stop", {"id": cid, "timeout": 0})
    assert "Traceback" not in daemon.read_log()


def test_shims_born_cold_work_too(make_daemon: Any) -> None:
    d = make_daemon(extra=["--shim-birth", "exec"])
    cid, result = run(d, ["sh", "-c", "echo cold; exit 4"])
    assert result["exit_code"] == 4
    assert output(d, cid)[0] == b"cold\n"


@pytest.mark.parametrize("birth", ["template", "exec"])
def test_a_shim_names_its_container(make_daemon: Any, birth: str) -> None:
    """``ps`` shows ``tug-shim <container id>`` for each shim, however it was born (a forked
    shim would otherwise show its template's command line)."""
    d = make_daemon(extra=["--shim-birth", birth])
    cids = [start(d, ["sleep", "60"]) for _ in range(2)]
    try:
        for cid in cids:
            pid = d.call("container.inspect", {"id": cid})["shim_pid"]
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = [a for a in f.read().split(b"\0") if a]
            assert args == [b"tug-shim", cid.encode()]
    finally:
        for cid in cids:
            d.call("container.delete", {"id": cid, "force": True})


def test_crun_as_the_runtime(make_daemon: Any) -> None:
    import shutil

    if shutil.which("crun") is None:
        pytest.skip("crun is not installed")
    d = make_daemon(runtime="crun")
    cid = d.call("container.create", {"image": "busybox", "cmd": ["echo", "crun"]})["id"]
    try:
        d.call("container.start", {"id": cid})
    except errors.RuntimeFailed as exc:
        if "hybrid" in str(exc):
            pytest.skip(f"crun cannot run on this host's cgroup layout: {exc}")
        raise
    assert d.call("container.wait", {"id": cid})["exit_code"] == 0
    assert output(d, cid)[0] == b"crun\n"


def _mergeable_mappings(pid: int) -> list[str]:
    """The mappings of ``pid`` marked for the kernel's same-page merging (``mg`` in VmFlags)."""
    marked, name = [], ""
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            if line.startswith("VmFlags:"):
                if "mg" in line.split()[1:]:
                    marked.append(name)
            elif not line[0].isupper():
                parts = line.split(None, 5)
                name = parts[5].strip() if len(parts) > 5 else "[anon]"
    return marked


def test_only_the_shims_memory_is_offered_for_merging(make_daemon: Any, backend: str) -> None:
    """The template marks its pages MADV_MERGEABLE before it forks (issue 14): the shim inherits
    the mark, the container (a new program, exec'd) never has it. The shim still logs its start."""
    d = make_daemon(backend=backend, extra=["--shim-birth", "template"])
    cid = start(d, ["sleep", "60"])
    try:
        info = d.call("container.inspect", {"id": cid})
        assert "[heap]" in _mergeable_mappings(info["shim_pid"])
        assert _mergeable_mappings(info["pid"]) == []
        with open(os.path.join(d.state, "shims", cid, "shim.log")) as f:
            log = f.read()
        assert f"container {cid[:12]} running as pid {info['pid']}" in log
    finally:
        d.call("container.delete", {"id": cid, "force": True})
