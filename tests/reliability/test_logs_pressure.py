"""Logs under pressure: rotation while a container writes at full speed and followers follow (no
byte lost or doubled across dozens of rotations), a full disk under the log (a small tmpfs: the
shim counts and reports the dropped bytes, the container never blocks, the file stays whole CRI
records), and a follower that stops reading (the container and the other followers go on)."""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from typing import Any

import pytest

from tugwire import crilog
from tugwire.syncclient import Client

from ..conftest import TUG, Daemon, http_get, needs_root, needs_runc
from .conftest import scaled, settled_leaks, wait_until

pytestmark = [pytest.mark.reliability, needs_root, needs_runc]

PAD = b"x" * 90  # lines of 100 bytes: "%08d " + PAD + "\n"
RECORD = re.compile(rb"\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z (stdout|stderr) [PF] ")


def writer_cmd(lines: int, then: str = "") -> list[str]:
    """A shell command that writes ``lines`` numbered lines of 100 bytes as fast as awk can."""
    awk = f'BEGIN{{p=sprintf("%90s",""); gsub(/ /,"x",p); for(i=1;i<={lines};i++) printf "%08d %s\\n", i, p}}'
    return ["sh", "-c", f"awk '{awk}'{'; ' + then if then else ''}"]


def expected(lines: int) -> bytes:
    return b"".join(b"%08d %s\n" % (i, PAD) for i in range(1, lines + 1))


def rebuild(data: bytes) -> tuple[bytes, bytes]:
    """(stdout, stderr) from CRI records, checking that every line is a whole, valid record."""
    streams: dict[bytes, list[bytes]] = {b"stdout": [], b"stderr": []}
    assert not data or data.endswith(b"\n"), "a torn record"
    for rec in data.split(b"\n")[:-1]:
        assert RECORD.match(rec), f"not a CRI record: {rec[:80]!r}"
        _ts, stream, full, content = crilog.parse_record(rec)
        streams[stream].append(content + b"\n" if full else content)
    return b"".join(streams[b"stdout"]), b"".join(streams[b"stderr"])


def log_files(d: Daemon, cid: str, max_files: int) -> list[str]:
    path = os.path.join(d.root, "containers", cid, "container.log")
    return [p for p in crilog.rotated_paths(path, max_files) if os.path.exists(p)]


class Follower(threading.Thread):
    """``container.logs`` with ``follow`` on a connection of its own, sent before the start, read
    to its end in a thread."""

    def __init__(self, d: Daemon, cid: str) -> None:
        super().__init__(daemon=True)
        self.client = Client(d.socket)
        self.rid = self.client.send("container.logs", {"id": cid, "follow": True})
        self.chunks: list[bytes] = []
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while True:
                msg = self.client.next_message()
                assert msg is not None
                if msg.get("id") == self.rid:
                    self.result = msg.get("result", msg.get("error"))
                    return
                if msg.get("method") == "container.logs.data":
                    self.chunks.append(base64.b64decode(msg["params"]["data"]))
        except BaseException as exc:
            self.error = exc
        finally:
            self.client.close()

    def data(self) -> bytes:
        self.join(timeout=120)
        assert not self.is_alive(), "the follower did not end"
        assert self.error is None, self.error
        return b"".join(self.chunks)


@pytest.mark.integration
def test_rotation_at_full_speed_loses_and_doubles_nothing_for_followers(
    make_daemon: Any, backend: str
) -> None:
    d = make_daemon(backend=backend)
    # 10 MB of output; the log rotates at 64 KiB, i.e. after each chunk the shim reads (at most
    # 1 MiB, so at least 9 rotations; in practice dozens)
    lines = scaled(100_000)
    max_files = 1000  # every rotated file is kept: whatever a follower misses is a bug, not age
    cid = d.call(
        "container.create",
        {"image": "busybox", "cmd": writer_cmd(lines), "log_max_size": 65536, "log_max_files": max_files},
    )["id"]
    api_follower = Follower(d, cid)  # accepted before the start: it sees everything from byte 0
    api_follower.start()
    d.call("container.start", {"id": cid})
    # A second follower through the CLI, started while the container writes.
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        cli = subprocess.Popen([TUG, "--socket", d.socket, "logs", "-f", cid], stdout=out, stderr=err)
        assert d.call("container.wait", {"id": cid})["exit_code"] == 0
        code = cli.wait(timeout=120)
        err.seek(0)
        assert code == 0, err.read()
        out.seek(0)
        cli_out = out.read()
    want = expected(lines)
    files = log_files(d, cid, max_files)
    assert len(files) >= min(9, lines // 10_000), f"only {len(files)} files: too few rotations"
    assert rebuild(api_follower.data()) == (want, b"")
    assert cli_out == want
    # The files themselves: whole records, in order, oldest first, nothing twice.
    on_disk = b"".join(_read(p) for p in files)
    assert rebuild(on_disk) == (want, b"")
    assert d.call("container.inspect", {"id": cid})["log_dropped_bytes"] == 0


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@contextlib.contextmanager
def tmpfs_over(path: str, size: str) -> Any:
    """Mount a tmpfs of ``size`` over the directory ``path``, with its contents copied in; the
    directory is as it was once the tmpfs is unmounted (always, at the end)."""
    saved = tempfile.mkdtemp(prefix="tbsave", dir="/tmp")
    try:
        shutil.copytree(path, saved, symlinks=True, dirs_exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", path], check=True)
        try:
            shutil.copytree(saved, path, symlinks=True, dirs_exist_ok=True)
            yield
        finally:
            subprocess.run(["umount", "-l", path], check=False)
    finally:
        shutil.rmtree(saved, ignore_errors=True)


def dropped_metric(d: Daemon, cid: str) -> float | None:
    status, body = http_get(f"http://127.0.0.1:{d.metrics_port}/metrics")
    assert status == 200
    for line in body.decode().splitlines():
        if line.startswith("tugboat_container_log_dropped_bytes_total{") and cid in line:
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.mark.integration
def test_full_disk_drops_and_counts_never_blocks_never_tears(make_daemon: Any, tmp_path: Any) -> None:
    d = make_daemon()
    gate = tmp_path / "gate"
    gate.mkdir()
    lines = scaled(50_000)  # 5 MB into a 2 MiB file system
    cid = d.call(
        "container.create",
        {
            "image": "busybox",
            "cmd": writer_cmd(lines, "touch /gate/written; while [ ! -e /gate/go ]; do sleep 0.05; done"),
            "volumes": [{"source": str(gate), "destination": "/gate"}],
        },
    )["id"]
    cdir = os.path.join(d.root, "containers", cid)
    with tmpfs_over(cdir, "2m"):
        d.call("container.start", {"id": cid})
        # The container gets through all its output although most of it has nowhere to go.
        wait_until(lambda: (gate / "written").exists(), timeout=60, what="the container to write it all")
        assert d.call("container.inspect", {"id": cid})["state"] == "running"
        live_dropped = dropped_metric(d, cid)
        assert live_dropped is not None and live_dropped > 0
        (gate / "go").write_text("")
        result = d.call("container.wait", {"id": cid})
        assert (result["state"], result["exit_code"]) == ("exited", 0)
        with open(os.path.join(cdir, "container.log"), "rb") as f:
            data = f.read()
        info = d.call("container.inspect", {"id": cid})
        dropped = info["log_dropped_bytes"]
        assert dropped == live_dropped
        # Whole valid records only; every byte the container wrote is either kept or counted.
        out, err = rebuild(data)
        assert err == b""
        assert len(out) + dropped == lines * 100
        assert 0 < len(out) < lines * 100
        # What was kept is the container's lines, in order (a record cut off by a drop is the
        # start of a line whose rest was dropped: only the first and last kept lines can be short).
        kept = [line for line in out.split(b"\n") if len(line) == 99]
        numbers = [int(line[:8]) for line in kept if line[8:] == b" " + PAD]
        assert numbers == sorted(numbers) and len(numbers) == len(set(numbers)) and numbers
        assert die_dropped(d, cid) == [dropped]
        # Reading the log through tugd works as ever.
        assert d.tug("logs", cid).stdout == out
    d.call("container.delete", {"id": cid})
    assert settled_leaks(d) == []


def die_dropped(d: Daemon, cid: str) -> list[int]:
    import json

    out = d.tug("events", "--since", "1", "--until", "0s", "-f", f"container={cid}", "--format", "json")
    return [
        e.get("attributes", {}).get("log_dropped_bytes")
        for e in map(json.loads, out.stdout.decode().splitlines())
        if e.get("action") == "die"
    ]


@pytest.mark.integration
def test_a_follower_that_stops_reading_never_blocks_the_container(make_daemon: Any, backend: str) -> None:
    d = make_daemon(backend=backend)
    lines = scaled(100_000)  # 10 MB: far more than every buffer between the shim and a stuck reader
    cid = d.call("container.create", {"image": "busybox", "cmd": writer_cmd(lines, "exit 3")})["id"]
    stuck_r, stuck_w = os.pipe()  # nobody ever reads stuck_r: the CLI blocks on its first full pipe
    stuck = subprocess.Popen([TUG, "--socket", d.socket, "logs", "-f", cid], stdout=stuck_w, stderr=stuck_w)
    os.close(stuck_w)
    idle = Client(d.socket)  # and a client that asks to follow and never reads a byte
    idle.send("container.logs", {"id": cid, "follow": True})
    reading = Follower(d, cid)
    reading.start()
    try:
        d.call("container.start", {"id": cid})
        os.kill(stuck.pid, signal.SIGSTOP)  # frozen as well: it reads nothing from tugd either
        with tempfile.TemporaryFile() as out:
            reader = subprocess.Popen([TUG, "--socket", d.socket, "logs", "-f", cid], stdout=out)
            result = d.call("container.wait", {"id": cid})
            assert (result["state"], result["exit_code"]) == ("exited", 3)
            assert reader.wait(timeout=120) == 0
            out.seek(0)
            assert out.read() == expected(lines)  # the followers that read get everything
        assert rebuild(reading.data()) == (expected(lines), b"")
    finally:
        os.kill(stuck.pid, signal.SIGKILL)
        stuck.wait()
        os.close(stuck_r)
        idle.close()
    assert settled_leaks(d) == []


def test_log_writer_on_a_full_tmpfs_keeps_whole_records(tmp_path: Any) -> None:
    """Regression: a short write just before ENOSPC left a torn record in the file (the size
    counted the short write, so the truncation kept it). A real 64 KiB tmpfs, no mocks."""
    mnt = str(tmp_path / "small")
    os.mkdir(mnt)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", mnt], check=True)
    try:
        writer = crilog.LogWriter(os.path.join(mnt, "c.log"), max_size=1 << 30, max_files=1)
        written = 0
        for i in range(400):
            chunk = b"".join(b"%08d %s\n" % (i * 10 + j, PAD) for j in range(10))[:-7]  # ends mid-line
            writer.write(b"stdout", chunk)
            written += len(chunk)
        writer.close()
        with open(os.path.join(mnt, "c.log"), "rb") as f:
            data = f.read()
        out, _ = rebuild(data)
        assert writer.dropped_bytes > 0
        assert len(out) + writer.dropped_bytes == written
        assert os.path.getsize(os.path.join(mnt, "c.log")) == len(data)
    finally:
        subprocess.run(["umount", "-l", mnt], check=False)
