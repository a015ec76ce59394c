"""``container.exec`` and ``tug exec``: real tugd, real shims, real ``runc exec``."""

from __future__ import annotations

import base64
import os
import subprocess
import threading
import time
from typing import Any

import pytest

from tugwire import errors
from tugwire.syncclient import Client

from .conftest import TUG, needs_root, needs_runc
from .helpers import output, start
from .test_events import history
from .waiting import wait_until

pytestmark = [pytest.mark.integration, needs_root, needs_runc]


def exec_api(
    d: Any, cid: str, cmd: list[str], stdin: bytes | None = None, method: str = "container.exec", **opts: Any
) -> dict[str, Any]:
    """Run an exec through the API; returns its result with ``stdout`` and ``stderr`` bytes.
    ``method="exec.start"`` with ``exec_id=`` starts a created one (``cid`` and ``cmd`` unused)."""
    out: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
    params = {"id": cid, "cmd": cmd, "stdin": stdin is not None, **opts}
    if method == "exec.start":
        params = {"exec_id": opts["exec_id"]}
    with Client(d.socket) as c:
        rid = c.send(method, params)
        while True:
            msg = c.next_message()
            assert msg is not None
            if msg.get("id") == rid:
                if "error" in msg:
                    from tugwire.syncclient import response_result

                    response_result(msg)
                result: dict[str, Any] = msg["result"]
                break
            params = msg.get("params") or {}
            if msg.get("method") == "container.exec.started" and stdin is not None:
                eid = params["exec_id"]
                for i in range(0, len(stdin), 65536):
                    data = base64.b64encode(stdin[i : i + 65536]).decode()
                    c.notify("container.exec.stdin", {"exec_id": eid, "data": data})
                c.notify("container.exec.close_stdin", {"exec_id": eid})
            elif msg.get("method") == "container.exec.output":
                out[params["stream"]].append(base64.b64decode(params["data"]))
    result["stdout"] = b"".join(out["stdout"])
    result["stderr"] = b"".join(out["stderr"])
    return result


def zombies_of(ppid: int) -> list[int]:
    """Zombie children of ``ppid``, from /proc."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] == "Z" and int(fields[1]) == ppid:
            found.append(int(name))
    return found


def test_exec_output_and_exit_code(daemon: Any) -> None:
    cid = start(daemon, ["sleep", "1000"])
    r = exec_api(daemon, cid, ["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (r["exit_code"], r["stdout"], r["stderr"]) == (3, b"out\n", b"err\n")
    # Exec output is not the container's: docker keeps it out of the log too.
    assert output(daemon, cid) == (b"", b"")
    r = exec_api(daemon, cid, ["sh", "-c", "kill -9 $$"])
    assert (r["exit_code"], r["signal"]) == (137, 9)
    daemon.call("container.delete", {"id": cid, "force": True})


def test_exec_env_workdir_user(daemon: Any) -> None:
    cid = start(daemon, ["sleep", "1000"], env=["A=from-create"])
    r = exec_api(
        daemon, cid, ["sh", "-c", "echo $A $B; pwd; id -u; id -g"], env=["B=b"], workdir="/tmp", user="nobody"
    )
    assert r["exit_code"] == 0
    lines = r["stdout"].decode().split()
    assert lines[:3] == ["from-create", "b", "/tmp"]
    assert lines[3] != "0"
    r = exec_api(daemon, cid, ["id", "-u"], user="1234:5")
    assert r["stdout"] == b"1234\n"
    daemon.call("container.delete", {"id": cid, "force": True})


def test_exec_not_found_and_not_executable(daemon: Any) -> None:
    cid = start(daemon, ["sleep", "1000"])
    r = exec_api(daemon, cid, ["no-such-program"])
    assert r["exit_code"] == 127
    assert "no-such-program" in r["error"]
    r = exec_api(daemon, cid, ["/etc/passwd"])
    assert r["exit_code"] == 126
    daemon.call("container.delete", {"id": cid, "force": True})


def test_exec_refused_unless_running(daemon: Any) -> None:
    cid = daemon.call("container.create", {"image": "busybox", "cmd": ["sleep", "1000"]})["id"]
    with pytest.raises(errors.FailedPrecondition, match="created"):
        daemon.call("container.exec", {"id": cid, "cmd": ["true"]})
    daemon.call("container.start", {"id": cid})
    daemon.call("container.pause", {"id": cid})
    with pytest.raises(errors.FailedPrecondition, match="paused"):
        daemon.call("container.exec", {"id": cid, "cmd": ["true"]})
    assert daemon.call("container.inspect", {"id": cid})["state"] == "paused"
    daemon.call("container.unpause", {"id": cid})
    daemon.call("container.stop", {"id": cid, "timeout": 0})
    with pytest.raises(errors.FailedPrecondition, match="exited"):
        daemon.call("container.exec", {"id": cid, "cmd": ["true"]})
    with pytest.raises(errors.NotFound):
        daemon.call("container.exec", {"id": "nonexistent", "cmd": ["true"]})
    daemon.call("container.delete", {"id": cid})


def test_exec_stdin_round_trips_binary_data(daemon: Any) -> None:
    cid = start(daemon, ["sleep", "1000"])
    data = bytes(range(256)) * 4096 + b"\x00\r\n\x1b[A\x04"  # ~1 MiB, every byte value, no line end
    r = exec_api(daemon, cid, ["cat"], stdin=data)
    assert r["exit_code"] == 0
    assert r["stdout"] == data
    r = exec_api(daemon, cid, ["wc", "-c"], stdin=b"")
    assert r["stdout"].strip() == b"0"
    daemon.call("container.delete", {"id": cid, "force": True})


def test_100_parallel_execs_true_codes_no_zombies(daemon: Any) -> None:
    cid = start(daemon, ["sleep", "1000"])
    shim_pid = daemon.call("container.inspect", {"id": cid})["shim_pid"]
    fds_before = len(os.listdir(f"/proc/{shim_pid}/fd"))
    n = 100
    codes: dict[int, Any] = {}

    def one(i: int) -> None:
        try:
            codes[i] = exec_api(daemon, cid, ["sh", "-c", f"exit {i % 256}"])["exit_code"]
        except BaseException as exc:  # reported below
            codes[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert codes == {i: i % 256 for i in range(n)}
    assert zombies_of(shim_pid) == []
    # No fd leaked per exec (pipes, console sockets): the last connections close in a moment (100
    # leaked would never go); a few may still be closing.
    wait_until(
        lambda: len(os.listdir(f"/proc/{shim_pid}/fd")) <= fds_before + 5,
        20,
        f"the shim's fds to drop back to {fds_before} + 5",
        describe=lambda: os.listdir(f"/proc/{shim_pid}/fd"),
    )
    shim_dir = os.path.join(daemon.state, "shims", cid)
    assert [f for f in os.listdir(shim_dir) if f.startswith(("exec-", "c"))] == []  # specs, consoles
    daemon.call("container.delete", {"id": cid, "force": True})


def test_detached_exec_is_reaped(daemon: Any) -> None:
    cid = start(daemon, ["sleep", "1000"])
    shim_pid = daemon.call("container.inspect", {"id": cid})["shim_pid"]
    r = daemon.call("container.exec", {"id": cid, "cmd": ["sh", "-c", "echo hi > /tmp/x"], "detach": True})
    pid = r["pid"]
    assert pid > 0
    # Nobody waits for a detached exec, but the shim reaps it: its pid leaves /proc (a zombie
    # would stay there for ever). Polled under a deadline: no event to wait on from outside.
    wait_until(lambda: not os.path.exists(f"/proc/{pid}"), 20, f"the detached exec {pid} to be reaped")
    assert exec_api(daemon, cid, ["cat", "/tmp/x"])["stdout"] == b"hi\n"
    assert zombies_of(shim_pid) == []
    daemon.call("container.delete", {"id": cid, "force": True})


def test_exec_records_create_start_inspect_and_events(make_daemon: Any, backend: str) -> None:
    """``exec.create`` records an exec, ``exec.start`` runs it (once), ``exec.inspect`` shows
    its pid and exit code, a detached one's too; docker's exec events, with ``exitCode``."""
    daemon = make_daemon(backend=backend)
    since = time.time_ns()
    cid = start(daemon, ["sleep", "1000"], name="recs")
    created = daemon.call(
        "exec.create", {"id": "recs", "cmd": ["sh", "-c", "echo hi; exit 3"], "env": ["A=1"]}
    )
    eid = created["id"]
    assert len(eid) == 64
    assert {
        k: created[k] for k in ("container_id", "cmd", "env", "started", "running", "pid", "exit_code")
    } == {
        "container_id": cid,
        "cmd": ["sh", "-c", "echo hi; exit 3"],
        "env": ["A=1"],
        "started": False,
        "running": False,
        "pid": 0,
        "exit_code": None,
    }
    r = exec_api(daemon, cid, [], method="exec.start", exec_id=eid)
    assert (r["exec_id"], r["exit_code"], r["stdout"]) == (eid, 3, b"hi\n")
    rec = daemon.call("exec.inspect", {"exec_id": eid})
    assert (rec["started"], rec["running"], rec["exit_code"], rec["signal"]) == (True, False, 3, None)
    assert rec["pid"] > 0
    with pytest.raises(errors.FailedPrecondition, match="already been started"):
        daemon.call("exec.start", {"exec_id": eid})
    with pytest.raises(errors.NotFound, match="no such exec: nope"):
        daemon.call("exec.inspect", {"exec_id": "nope"})
    # a detached exec: tugd runs it to its end, so its exit code is known
    detached = daemon.call("exec.create", {"id": cid, "cmd": ["sh", "-c", "read x < /tmp/go; exit 7"]})
    daemon.call("container.exec", {"id": cid, "cmd": ["mkfifo", "/tmp/go"]})
    res = daemon.call("exec.start", {"exec_id": detached["id"], "detach": True})
    assert res["exec_id"] == detached["id"] and res["pid"] > 0
    rec = daemon.call("exec.inspect", {"exec_id": detached["id"]})
    assert (rec["running"], rec["pid"], rec["exit_code"]) == (True, res["pid"], None)
    daemon.call("container.exec", {"id": cid, "cmd": ["sh", "-c", "echo go > /tmp/go"]})
    wait_until(
        lambda: daemon.call("exec.inspect", {"exec_id": detached["id"]})["exit_code"] == 7,
        20,
        "the detached exec's exit code",
    )
    # container.exec (create and start in one) is recorded too; a stopped container refuses
    # exec.create, and exec.start of an exec created before it stopped
    later = daemon.call("exec.create", {"id": cid, "cmd": ["true"]})
    daemon.call("container.stop", {"id": cid, "timeout": 0})
    with pytest.raises(errors.FailedPrecondition, match="is exited"):
        daemon.call("exec.create", {"id": cid, "cmd": ["true"]})
    with pytest.raises(errors.FailedPrecondition, match="is exited"):
        daemon.call("exec.start", {"exec_id": later["id"]})
    with pytest.raises(errors.InvalidArgument, match="exec needs a command"):
        daemon.call("exec.create", {"id": cid, "cmd": []})
    events = [
        (e["action"], e["attributes"].get("execID"), e["attributes"].get("exit_code"))
        for e in history(daemon, type="container", container=cid)
        if e["action"].startswith("exec_") and e["time_nano"] >= since
    ]
    assert events[:3] == [
        ("exec_create: sh -c echo hi; exit 3", eid, None),
        ("exec_start: sh -c echo hi; exit 3", eid, None),
        ("exec_die", eid, 3),
    ]
    assert ("exec_die", detached["id"], 7) in events
    # docker's rule: event=exec_create matches `exec_create: CMD`
    creates = history(daemon, type="container", event="exec_create", container=cid)
    assert [e["attributes"]["execID"] for e in creates][:1] == [eid]
    assert {e["action"].partition(":")[0] for e in creates} == {"exec_create"}
    daemon.call("container.delete", {"id": cid, "force": True})
    with pytest.raises(errors.NotFound):  # they go with their container, as docker's
        daemon.call("exec.inspect", {"exec_id": eid})


# ------------------------------------------------------------------------------------ the CLI


def test_tug_exec_exits_with_the_code(daemon: Any) -> None:
    start(daemon, ["sleep", "1000"], name="box")
    r = daemon.tug("exec", "box", "sh", "-c", "echo out; echo err >&2; exit 42", check=False)
    assert (r.returncode, r.stdout, r.stderr) == (42, b"out\n", b"err\n")
    r = daemon.tug("exec", "-e", "X=1", "-w", "/etc", "-u", "nobody", "box", "sh", "-c", "echo $X; pwd")
    assert r.stdout == b"1\n/etc\n"
    r = daemon.tug("exec", "box", "no-such-program", check=False)
    assert r.returncode == 127
    assert b"no-such-program" in r.stderr
    r = daemon.tug("exec", "-d", "box", "sleep", "1")
    assert r.stdout == b""
    daemon.tug("pause", "box")
    r = daemon.tug("exec", "box", "true", check=False)
    assert r.returncode == 1
    assert b"paused" in r.stderr
    daemon.tug("unpause", "box")
    daemon.tug("rm", "-f", "box")


def test_tug_exec_i_streams_stdin_and_closes_it(daemon: Any) -> None:
    start(daemon, ["sleep", "1000"], name="box")
    data = os.urandom(300_000) + b"\x10\x11\x03\x04\x00"  # the detach keys, ^C, ^D, NUL: all data
    r = subprocess.run(
        [TUG, "--socket", daemon.socket, "exec", "-i", "box", "cat"],
        input=data,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert (r.returncode, r.stdout == data) == (0, True), r.stderr
    # Without -i the exec's stdin is /dev/null: cat ends at once.
    r = subprocess.run(
        [TUG, "--socket", daemon.socket, "exec", "box", "cat"],
        input=b"ignored",
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert (r.returncode, r.stdout) == (0, b"")
    daemon.tug("rm", "-f", "box")


# ------------------------------------------------------------------------------ terminals


def spawn_tug(d: Any, *args: str, rows: int = 24, cols: int = 80) -> Any:
    """``tug ARGS`` on a real pseudo-terminal of rows x cols (pexpect)."""
    import pexpect

    return pexpect.spawn(TUG, ["--socket", d.socket, *args], dimensions=(rows, cols), timeout=30)


def test_tug_exec_it_gives_a_terminal_with_its_size_and_resizes(daemon: Any) -> None:
    import pexpect

    start(daemon, ["sleep", "1000"], name="box")
    child = spawn_tug(daemon, "exec", "-it", "box", "sh", rows=24, cols=80)
    try:
        child.expect("# ")  # the shell's prompt: it reads the terminal now (before, input is flushed)
        child.sendline('tty; stty size; echo "[$TERM]"')
        child.expect(r"/dev/pts/\d+")
        child.expect("24 80")
        child.expect(r"\[xterm\]")
        child.setwinsize(33, 111)  # the kernel sends tug SIGWINCH
        child.sendline("stty size")
        child.expect("33 111")
        child.sendline("echo ab$((40+2))cd")
        child.expect("ab42cd")  # the echo of the line is "ab$((40+2))cd": only the output matches
        child.sendline("exit 3")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 3
    daemon.tug("rm", "-f", "box")


def test_tug_exec_it_detach_keys_leave_it_running(daemon: Any) -> None:
    import pexpect

    start(daemon, ["sleep", "1000"], name="box")
    child = spawn_tug(daemon, "exec", "-it", "box", "sh")
    try:
        child.expect("# ")  # the shell's prompt: it reads the terminal now (before, input is flushed)
        child.sendline("echo $((6*7))-ready; exec sleep 777")
        child.expect("42-ready")
        child.send("\x10x")  # ctrl-p then not ctrl-q: both go on (x is echoed by the pty)
        child.send("\x10\x11")  # ctrl-p ctrl-q: detach
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    ps = daemon.tug("exec", "box", "ps", "-o", "args").stdout
    assert b"sleep 777" in ps  # the exec runs on
    child = spawn_tug(daemon, "exec", "-it", "--detach-keys", "ctrl-x,a", "box", "sh")
    try:
        child.expect("# ")  # the shell's prompt: it reads the terminal now (before, input is flushed)
        child.sendline("echo $((6*7))-ready")
        child.expect("42-ready")
        child.send("\x18a")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    daemon.tug("rm", "-f", "box")
