"""The tug CLI as a user runs it, against a real tugd."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from typing import Any

import pytest

from .conftest import TUG, needs_root, needs_runc, ps_json

pytestmark = [pytest.mark.integration, needs_root, needs_runc]


def test_run_streams_output_and_exits_with_the_code(daemon: Any) -> None:
    r = daemon.tug("run", "--rm", "busybox", "sh", "-c", "echo out; echo err >&2; exit 5", check=False)
    assert (r.returncode, r.stdout, r.stderr) == (5, b"out\n", b"err\n")
    assert ps_json(daemon) == []  # --rm removed it before tug returned


def test_run_killed_by_a_signal_exits_128_plus_n(daemon: Any) -> None:
    proc = subprocess.Popen(
        [
            TUG,
            "--socket",
            daemon.socket,
            "run",
            "--name",
            "victim",
            "busybox",
            "sh",
            "-c",
            "echo up; sleep 1000",
        ],
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"up\n"
    daemon.tug("kill", "-s", "USR1", "victim")  # sh as PID 1 has no handler: ignored
    daemon.tug("kill", "victim")
    assert proc.wait(timeout=30) == 137
    proc.stdout.close()


def test_run_detached_ps_logs_stop_rm(daemon: Any) -> None:
    cid = (
        daemon.tug(
            "run", "-d", "--name", "web", "busybox", "sh", "-c", "echo ready; while true; do sleep 1; done"
        )
        .stdout.decode()
        .strip()
    )
    assert len(cid) == 64
    [row] = ps_json(daemon)
    assert row["id"] == cid
    assert row["name"] == "web"
    assert row["state"] == "running"
    assert row["exit_code"] is None
    assert row["pid"] > 0
    assert row["image"] == "busybox:latest"
    deadline = time.monotonic() + 10
    while daemon.tug("logs", "web").stdout != b"ready\n":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    stamped = daemon.tug("logs", "--timestamps", "web").stdout.decode()
    assert stamped.endswith("Z ready\n")
    daemon.tug("stop", "-t", "1", "web")
    [row] = ps_json(daemon)
    assert (row["state"], row["exit_code"], row["pid"]) == ("exited", 137, 0)
    assert daemon.tug("wait", "web").stdout == b"137\n"
    info = json.loads(daemon.tug("inspect", "web").stdout)
    for key in (
        "id",
        "name",
        "image",
        "state",
        "exit_code",
        "pid",
        "started_at",
        "finished_at",
        "oom_killed",
    ):
        assert key in info
    daemon.tug("rm", "web")
    assert ps_json(daemon) == []


def test_errors_are_clear_and_change_nothing(daemon: Any) -> None:
    r = daemon.tug("run", "--name", "../x", "busybox", "true", check=False)
    assert r.returncode == 125
    assert b"invalid container name" in r.stderr
    assert b"Traceback" not in r.stderr
    r = daemon.tug("run", "--pull", "never", "nosuchimage", "true", check=False)
    assert r.returncode == 125
    assert b"no such image" in r.stderr
    assert b"Unable to find image" not in r.stderr
    r = daemon.tug("rm", "nosuch", check=False)
    assert r.returncode == 1
    assert b"no such container" in r.stderr
    r = daemon.tug("run", "--rm", "busybox", "/nonexistent", check=False)
    assert r.returncode == 127
    assert ps_json(daemon) == []
    daemon.tug("run", "-d", "--name", "busy", "busybox", "sleep", "1000")
    r = daemon.tug("rm", "busy", check=False)
    assert r.returncode == 1
    assert b"running" in r.stderr
    r = daemon.tug("start", "busy", check=False)
    assert r.returncode == 1
    daemon.tug("rm", "-f", "busy")


def test_sigint_is_forwarded_to_the_container(daemon: Any) -> None:
    proc = subprocess.Popen(
        [
            TUG,
            "--socket",
            daemon.socket,
            "run",
            "--rm",
            "busybox",
            "sh",
            "-c",
            "trap 'echo got-int; exit 42' INT; echo ready; while true; do sleep 0.1; done",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert out == b"got-int\n"
    assert proc.returncode == 42


def test_images_import_and_rmi(daemon: Any, busybox_tar: str) -> None:
    daemon.tug("import", busybox_tar, "other:v1")
    rows = [json.loads(line) for line in daemon.tug("images", "--format", "json").stdout.splitlines()]
    tags = sorted(t for r in rows for t in r["repo_tags"])
    assert tags == ["busybox:latest", "other:v1"]
    r = daemon.tug("import", "/nonexistent.tar", "x", check=False)
    assert r.returncode != 0
    assert b"no such file" in r.stderr.lower()
    daemon.tug("run", "-d", "--name", "user", "other:v1", "sleep", "100")
    assert daemon.tug("rmi", "other:v1", check=False).returncode == 1
    daemon.tug("rm", "-f", "user")
    daemon.tug("rmi", "other:v1")


def test_socket_from_the_environment(daemon: Any) -> None:
    r = subprocess.run(
        [TUG, "info"], capture_output=True, env={**os.environ, "TUGBOAT_SOCKET": daemon.socket}, timeout=30
    )
    assert r.returncode == 0
    assert daemon.state.encode() in r.stdout
