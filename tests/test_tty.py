"""``tug run -it``, ``tug attach`` and ``tug run -i``, driven through a real pseudo-terminal
(pexpect) against a real tugd, shims and runc."""

from __future__ import annotations

import os
import subprocess
from typing import Any

import pytest

from .conftest import TUG, needs_root, needs_runc
from .helpers import output

pytestmark = [pytest.mark.integration, needs_root, needs_runc]


def spawn_tug(d: Any, *args: str, rows: int = 24, cols: int = 80) -> Any:
    """``tug ARGS`` on a real pseudo-terminal of rows x cols."""
    import pexpect

    return pexpect.spawn(TUG, ["--socket", d.socket, *args], dimensions=(rows, cols), timeout=30)


def test_run_it_terminal_resize_detach_attach_exit_code(daemon: Any) -> None:
    import pexpect

    child = spawn_tug(daemon, "run", "-it", "--name", "term", "busybox", "sh", rows=24, cols=80)
    try:
        child.expect("# ")  # the shell's prompt: it reads the terminal now (before, input is flushed)
        child.sendline('tty; stty size; echo "[$TERM]"')
        child.expect(r"/dev/pts/\d+")
        child.expect("24 80")
        child.expect(r"\[xterm\]")
        child.setwinsize(40, 120)  # SIGWINCH to tug, which resizes the container's terminal
        child.sendline("stty size")
        child.expect("40 120")
        child.sendline("echo ab$((40+2))cd")
        child.expect("ab42cd")
        child.send("\x10\x11")  # ctrl-p ctrl-q
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    assert daemon.call("container.inspect", {"id": "term"})["state"] == "running"

    child = spawn_tug(daemon, "attach", "term", rows=30, cols=90)
    try:
        child.sendline("stty size")
        child.expect("30 90")  # the attaching terminal's size
        child.sendline("exit 3")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 3
    assert daemon.call("container.inspect", {"id": "term"})["exit_code"] == 3
    out, _ = output(daemon, "term")  # the terminal's output is in the log too
    assert b"ab42cd" in out
    daemon.tug("rm", "term")


def test_run_it_custom_detach_keys_and_rm(daemon: Any) -> None:
    import pexpect

    keys = ("--detach-keys", "ctrl-a,x")
    child = spawn_tug(daemon, "run", "-it", "--rm", *keys, "--name", "t2", "busybox", "sh")
    try:
        child.expect("# ")  # the shell's prompt: it reads the terminal now (before, input is flushed)
        child.sendline("echo $((6*7))-ready")
        child.expect("42-ready")
        child.send("\x01x")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    child = spawn_tug(daemon, "attach", "t2")
    try:
        child.sendline("exit 5")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 5


def test_run_i_streams_binary_stdin_and_closes_it(daemon: Any) -> None:
    data = os.urandom(200_000) + b"\x10\x11\x03\x04\x00"  # the detach keys, ^C, ^D, NUL: all data
    r = subprocess.run(
        [TUG, "--socket", daemon.socket, "run", "-i", "--rm", "busybox", "sh", "-c", "cat; echo done >&2"],
        input=data,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == data
    assert r.stderr == b"done\n"


def test_attach_refused_unless_running_and_stdin_refused_without_it(daemon: Any) -> None:
    cid = daemon.call("container.create", {"image": "busybox", "cmd": ["sleep", "1000"]})["id"]
    r = daemon.tug("attach", cid, check=False)
    assert r.returncode == 1
    assert b"created" in r.stderr
    daemon.call("container.start", {"id": cid})
    from tugwire import errors

    with pytest.raises(errors.FailedPrecondition, match="stdin"):
        daemon.call("container.stdin", {"id": cid, "data": "eA=="})
    with pytest.raises(errors.FailedPrecondition, match="terminal"):
        daemon.call("container.resize", {"id": cid, "rows": 10, "cols": 10})
    daemon.call("container.delete", {"id": cid, "force": True})


def test_run_it_command_not_found_exits_127(daemon: Any) -> None:
    import pexpect

    child = spawn_tug(daemon, "run", "-it", "--rm", "busybox", "no-such-program")
    try:
        child.expect("no-such-program")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 127
    assert daemon.call("container.list", {"all": True}) == []
