"""``tug system info|df|prune`` and their API methods, against a real tugd."""

from __future__ import annotations

import json
import os
import pty
from typing import Any

import pytest

from supervisor import system

from .conftest import TUG, needs_root, needs_runc, ps_json
from .helpers import run, start

pytestmark = [pytest.mark.integration, needs_root, needs_runc]


def test_du_counts_hard_links_once_and_skips_symlinks(tmp_path: Any) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a").write_bytes(b"x" * 1000)
    os.link(tmp_path / "d" / "a", tmp_path / "d" / "b")
    (tmp_path / "d" / "c").write_bytes(b"y" * 24)
    os.symlink("/usr/bin", tmp_path / "d" / "l")
    assert system.du(str(tmp_path / "d")) == 1024 + len("/usr/bin")
    assert system.du(str(tmp_path / "missing")) == 0
    assert system.du(str(tmp_path / "d" / "c")) == 24


def test_system_info(daemon: Any) -> None:
    start(daemon, ["sleep", "1000"])
    info = json.loads(daemon.tug("system", "info", "--format", "json").stdout)
    assert info["root"] == daemon.root and info["state"] == daemon.state
    assert info["socket"] == daemon.socket
    assert info["runtime"].endswith("runc") and info["runtime_version"].startswith("runc version")
    assert info["cgroup_version"] in ("1", "1 (hybrid)", "2")
    assert info["containers"]["running"] == 1 and info["images"] == 1
    # Counted by state in SQLite (not by decoding every record): each state, and the total.
    daemon.tug("create", "busybox", "true")
    run(daemon, ["true"])
    counts = json.loads(daemon.tug("system", "info", "--format", "json").stdout)["containers"]
    assert counts == {
        "created": 1,
        "running": 1,
        "paused": 0,
        "exited": 1,
        "unknown": 0,
        "total": 3,
        "removing": 0,
    }
    text = daemon.tug("info").stdout.decode()
    assert "running: 1" in text and "version:" in text


def test_df_counts_images_containers_and_logs(daemon: Any) -> None:
    empty = daemon.call("system.df")
    image_size = empty["images"]["size"]
    assert image_size > 500_000  # busybox: its layer blob and its unpacked snapshot
    assert empty["images"] | {"items": []} == {
        "count": 1,
        "active": 0,
        "size": image_size,
        "reclaimable": image_size,
        "items": [],
    }
    [item] = empty["images"]["items"]
    assert (item["repo_tags"], item["size"], item["shared_size"], item["containers"]) == (
        ["busybox:latest"],
        image_size,
        0,
        0,
    )
    # 300 kB in the writable layer and 100,000 bytes of output (plus the log's framing).
    done, _ = run(
        daemon, ["sh", "-c", "head -c 300000 /dev/zero > /big; head -c 100000 /dev/zero | tr '\\0' x"]
    )
    running = start(daemon, ["sleep", "1000"], name="runner")
    df = daemon.call("system.df")
    assert (df["images"]["count"], df["images"]["active"], df["images"]["reclaimable"]) == (1, 1, 0)
    c = df["containers"]
    assert (c["count"], c["active"]) == (2, 1)
    sizes = {i["id"]: i for i in c["items"]}
    assert 300_000 <= sizes[done]["size"] < 320_000
    assert sizes[running]["size"] < 20_000
    assert c["reclaimable"] == sizes[done]["size"]
    logs = df["logs"]
    assert 100_000 < sizes[done]["log_size"] == logs["size"] == logs["reclaimable"] < 110_000
    assert df["store"]["events"] >= 5 and df["store"]["size"] > 0
    # The CLI: docker's table, and JSON.
    table = daemon.tug("system", "df").stdout.decode().splitlines()
    assert table[0].split() == ["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"]
    assert table[1].split()[:3] == ["Images", "1", "1"]
    assert table[2].split()[:3] == ["Containers", "2", "1"]
    assert table[3].split()[0] == "Logs"
    verbose = daemon.tug("system", "df", "-v").stdout.decode()
    assert "busybox:latest" in verbose and "runner" in verbose
    assert json.loads(daemon.tug("system", "df", "--format", "json").stdout)["containers"]["count"] == 2


def test_prune_removes_stopped_containers_and_unused_images(daemon: Any, busybox_tar: str) -> None:
    exited, _ = run(daemon, ["sh", "-c", "head -c 200000 /dev/zero > /f"], name="exited")
    created = daemon.call("container.create", {"image": "busybox", "cmd": ["true"], "name": "created"})["id"]
    running = start(daemon, ["sleep", "1000"], name="running")
    # The same tarball again: another image (its config has its own time) sharing the layer.
    daemon.call("image.import", {"path": busybox_tar, "ref": "spare:1"})
    items = daemon.call("system.df")["images"]["items"]
    assert len(items) == 2 and all(0 < i["shared_size"] < i["size"] for i in items)
    # Without -a only images without a name go: there are none, so images stay.
    result = daemon.call("system.prune")
    assert sorted(result["containers_deleted"]) == sorted([exited, created])
    assert result["images_deleted"] == [] and result["images_untagged"] == []
    assert result["space_reclaimed"] >= 200_000
    assert [c["id"] for c in ps_json(daemon)] == [running]
    # Nothing to confirm with: the CLI refuses, and changes nothing.
    r = daemon.tug("system", "prune", check=False)
    assert r.returncode == 1 and b"-f" in r.stderr
    # On a terminal it asks; "n" changes nothing.
    out = _on_a_tty([TUG, "--socket", daemon.socket, "system", "prune", "-a"], b"n\n")
    assert b"Are you sure you want to continue? [y/N]" in out
    assert len(daemon.call("image.list")) == 2
    # With -a, every image no container uses goes: spare:1, not busybox (the running one's).
    result = daemon.call("system.prune", {"all": True})
    assert (result["containers_deleted"], result["images_untagged"]) == ([], ["spare:1"])
    assert len(result["images_deleted"]) == 1
    assert 0 < result["space_reclaimed"] < items[0]["size"] - items[0]["shared_size"] + 10_000
    assert [i["repo_tags"] for i in daemon.call("image.list")] == [["busybox:latest"]]
    daemon.call("container.stop", {"id": running, "timeout": 0})
    out = daemon.tug("system", "prune", "-a", "-f").stdout.decode()
    assert out.startswith(
        "Deleted Containers:\n" + running + "\n\nDeleted Images:\nuntagged: busybox:latest\n"
    )
    assert "deleted: sha256:" in out and "Total reclaimed space: " in out
    assert daemon.call("image.list") == [] and ps_json(daemon) == []
    assert os.listdir(os.path.join(daemon.root, "blobs", "sha256")) == []
    assert [e for e in os.listdir(os.path.join(daemon.root, "snapshots")) if not e.startswith(".")] == []
    df = daemon.call("system.df")
    assert (df["images"]["size"], df["containers"]["count"], df["logs"]["size"]) == (0, 0, 0)
    # The events of all that.
    actions = [
        (e["type"], e["action"]) for e in _history(daemon) if e["action"] in ("destroy", "untag", "delete")
    ]
    assert actions.count(("container", "destroy")) == 3
    assert ("image", "untag") in actions and actions[-1] == ("image", "delete")
    r = daemon.tug("system", "prune", "-f", "--format", "json")
    assert json.loads(r.stdout)["space_reclaimed"] == 0


def _history(d: Any) -> list[dict[str, Any]]:
    r = d.tug("events", "--since", "1h", "--until", "0s", "--format", "json")
    return [json.loads(line) for line in r.stdout.decode().splitlines()]


def _on_a_tty(argv: list[str], answer: bytes) -> bytes:
    """Run ``argv`` with its stdin, stdout and stderr on a pseudo-terminal; type ``answer``."""
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        os.execv(argv[0], argv)
    out = b""
    try:
        os.write(fd, answer)
        while True:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(fd)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, out
    return out
