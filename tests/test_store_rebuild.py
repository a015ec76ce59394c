"""A damaged store never costs the host its containers (issue 19).

Real tugd, real shims, real runc: a running container on a fixed address of a user network, an
exited one with exit code 3 after two restarts, a tagged image; then ``tugboat.db`` damaged the
ways disks and people damage it (pages overwritten, the file cut short, deleted, its WAL lost).
tugd must refuse to start with one clear line (exit 2, no traceback) that offers
``--rebuild-store``; started with it, every one of them is back, the running container still
supervised (its exit, later, reported with its code). tugd runs in a network namespace the test
made (``make_daemon(netns=True)``), as every network test does.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Any

import pytest

from .conftest import TUGD, Daemon, needs_root, needs_runc
from .helpers import output, start

pytestmark = [pytest.mark.integration, needs_root, needs_runc]

REBUILD = "--rebuild-store"


def argv(d: Daemon, *extra: str) -> list[str]:
    """The command line ``d.start()`` runs, with ``extra`` options."""
    ns = ["nsenter", f"--net=/run/netns/{d.netns}"] if d.netns else []
    return [*ns, TUGD, "--root", d.root, "--state", d.state, "--runtime", d.runtime, *d.extra, *extra]


def start_fails(d: Daemon, *extra: str) -> str:
    """Start tugd, which must end at once with exit status 2 and one line (no traceback);
    returns the line."""
    res = subprocess.run(
        argv(d, *extra), capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert "Traceback" not in res.stderr, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.startswith("tugd: ")]
    assert len(lines) == 1, res.stderr
    return lines[0]


def wait_for(check: Any, what: str, timeout: float = 30.0) -> Any:
    """Poll ``check()`` (an API call) until it returns something true, under a deadline."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"no {what} in {timeout:g}s"
        time.sleep(0.05)


def make_world(d: Daemon, gate: str) -> dict[str, Any]:
    """A tagged image, a user network, a running container on a fixed address of it, and one
    that exited with code 3 after its two restarts. Returns what must come back."""
    d.call("image.tag", {"source": "busybox", "target": "mine/tool:v1"})
    d.call("network.create", {"name": "keep", "subnet": "10.93.0.0/24"})
    runner = start(
        d,
        ["sh", "-c", "echo up; while [ ! -e /gate/go ]; do sleep 0.05; done; echo bye; exit 5"],
        name="runner",
        network="keep",
        ip="10.93.0.50",
        volumes=[{"source": gate, "destination": "/gate"}],
    )
    quitter = start(d, ["sh", "-c", "echo try; exit 3"], name="quitter", restart="on-failure:2")

    def quitter_done() -> bool:
        if output(d, quitter)[0] != b"try\n" * 3:  # its third run (the second restart) began
            return False
        info = d.call("container.inspect", {"id": quitter})
        return bool(info["state"] == "exited" and info["restart_count"] == 2 and not info["restarting"])

    wait_for(quitter_done, "third exit of quitter")
    wait_for(lambda: output(d, runner)[0] == b"up\n", "output of runner")
    info = d.call("container.inspect", {"id": runner})
    image = d.call("image.inspect", {"ref": "mine/tool:v1"})
    return {
        "runner": runner,
        "quitter": quitter,
        "shim_pid": info["shim_pid"],
        "image_id": image["id"],
        "image_names": sorted(image["repo_tags"]),
        "network": d.call("network.inspect", {"id": "keep"}),
    }


def check_world(d: Daemon, world: dict[str, Any]) -> None:
    runner = d.call("container.inspect", {"id": "runner"})
    assert runner["id"] == world["runner"]
    assert (runner["state"], runner["shim_pid"]) == ("running", world["shim_pid"])
    assert runner["networks"]["keep"]["ip"] == "10.93.0.50"
    quitter = d.call("container.inspect", {"id": "quitter"})
    assert (quitter["state"], quitter["exit_code"], quitter["restart_count"]) == ("exited", 3, 2)
    assert output(d, world["quitter"]) == (b"try\n" * 3, b"")
    assert quitter["restart_policy"] == "on-failure:2"
    image = d.call("image.inspect", {"ref": "mine/tool:v1"})
    assert image["id"] == world["image_id"]
    assert sorted(image["repo_tags"]) == world["image_names"]
    assert d.call("image.inspect", {"ref": "busybox"})["id"] == world["image_id"]
    net = d.call("network.inspect", {"id": "keep"})
    for key in ("id", "subnet", "gateway", "driver"):
        assert net[key] == world["network"][key], key


def corrupt(d: Daemon, how: str, rng: random.Random) -> None:
    db = os.path.join(d.root, "tugboat.db")
    if how == "wal":
        d.kill9()  # its last writes are in the WAL, not yet in the file
        assert os.path.getsize(db + "-wal") > 0
        os.unlink(db + "-wal")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(db + "-shm")
        return
    d.stop()  # containers keep running; the WAL is checkpointed into the file
    if how == "delete":
        os.unlink(db)
    elif how == "truncate":
        with open(db, "r+b") as f:
            f.truncate(os.path.getsize(db) // 3)
    elif how == "pages":
        page = 4096
        pages = os.path.getsize(db) // page
        with open(db, "r+b") as f:
            for n in rng.sample(range(1, pages), max(1, (pages - 1) // 2)):
                f.seek(n * page)
                f.write(rng.randbytes(page))


@pytest.mark.network
@pytest.mark.parametrize(
    ("how", "backend"), [("pages", "asyncio"), ("truncate", "trio"), ("delete", "trio"), ("wal", "asyncio")]
)
def test_a_damaged_store_is_refused_clearly_then_rebuilt_from_disk(
    make_daemon: Any, how: str, backend: str
) -> None:
    d: Daemon = make_daemon(netns=True, backend=backend)
    gate = tempfile.mkdtemp(prefix="gate", dir=d.base)
    world = make_world(d, gate)
    corrupt(d, how, random.Random(how))
    try:
        _refused_then_rebuilt(d, how, world, gate)
    finally:
        if d.proc is None:  # failed half-way: a tugd that can clean up after the test
            with contextlib.suppress(Exception):
                d.extra = [*d.extra, REBUILD]
                d.start()


def _refused_then_rebuilt(d: Daemon, how: str, world: dict[str, Any], gate: str) -> None:
    line = start_fails(d)
    assert os.path.join(d.root, "tugboat.db") in line and REBUILD in line, line
    expected = {
        "pages": "is damaged",
        "truncate": "is damaged",
        "delete": "is missing",
        "wal": "is older than what is on disk",
    }[how]
    assert expected in line, line
    d.extra = [*d.extra, REBUILD]
    d.start()
    d.extra = d.extra[:-1]
    check_world(d, world)
    info = d.call("system.info")["store"]
    assert (info["status"], info["records_behind"], info["rebuilt"]) == ("ok", 0, True)
    if how != "delete":
        assert ".damaged-" in info["rebuilt_from"] and os.path.exists(info["rebuilt_from"])
    # A second start without the flag keeps everything (the records on disk agree with it).
    d.restart()
    check_world(d, world)
    assert d.call("system.info")["store"]["rebuilt"] is False
    # The running container is still supervised: its exit is reported with its code.
    with open(os.path.join(gate, "go"), "w"):
        pass
    result = d.call("container.wait", {"id": "runner"})
    assert result["exit_code"] == 5
    assert output(d, world["runner"])[0] == b"up\nbye\n"
    # The network still hands out addresses, never the one the runner had while it exists.
    other = d.call("container.create", {"image": "busybox", "cmd": ["true"], "network": "keep"})["id"]
    assert d.call("container.inspect", {"id": other})["networks"]["keep"]["ip"] != "10.93.0.50"


def test_the_store_is_healthy_in_system_info_and_records_follow_it(make_daemon: Any) -> None:
    d: Daemon = make_daemon()
    info = d.call("system.info")["store"]
    assert (info["status"], info["check"], info["records_behind"]) == ("ok", "ok", 0)
    assert info["path"] == os.path.join(d.root, "tugboat.db") and info["size_bytes"] > 0
    text = d.tug("system", "info").stdout.decode()
    assert "\nstore:\n  path: " in text and "\n  status: ok\n" in text, text
    cid = d.call("container.create", {"image": "busybox", "cmd": ["true"], "name": "one"})["id"]
    record = os.path.join(d.root, "containers", cid, "record.json")
    assert os.path.exists(record)
    d.call("container.rename", {"id": cid, "name": "two"})
    with open(record) as f:
        assert '"name":"two"' in f.read()
    d.call("image.tag", {"source": "busybox", "target": "other:v2"})
    image_id = d.call("image.inspect", {"ref": "busybox"})["id"]
    meta = os.path.join(d.root, "meta", "images", image_id.partition(":")[2] + ".json")
    with open(meta) as f:
        assert "other:v2" in f.read()
    # A name taken is the store's AlreadyExists (no matching of SQLite's words), and changes nothing.
    from tugwire import errors

    with pytest.raises(errors.AlreadyExists):
        d.call("container.create", {"image": "busybox", "cmd": ["true"], "name": "two"})
    d.call("container.delete", {"id": cid})
    assert not os.path.exists(os.path.join(d.root, "containers", cid))
    d.call("image.remove", {"ref": "other:v2"})
    with open(meta) as f:
        assert "other:v2" not in f.read()


@pytest.mark.parametrize("how", ["garbage", "directory", "empty"])
def test_a_store_that_is_not_one_is_refused_clearly(make_daemon: Any, how: str) -> None:
    """Not a database, not a file, or emptied (a zero-length file is a valid empty SQLite
    database: the records on disk show it lost everything)."""
    d: Daemon = make_daemon()
    d.call("container.create", {"image": "busybox", "cmd": ["true"], "name": "kept"})
    d.stop()
    db = os.path.join(d.root, "tugboat.db")
    os.unlink(db)
    if how == "garbage":
        with open(db, "wb") as f:
            f.write(b"this is not a database\n" * 300)
    elif how == "directory":
        os.mkdir(db)
    else:
        open(db, "wb").close()
    line = start_fails(d)
    expected = {
        "garbage": "is damaged (file is not a database)",
        "directory": "cannot be opened (unable to open database file)",
        "empty": "is older than what is on disk (1 container, 1 image, 3 networks changed",
    }[how]
    assert line.startswith(f"tugd: {db} ") and expected in line, line
    if how == "directory":
        os.rmdir(db)
    d.extra = [*d.extra, REBUILD]
    d.start()
    assert [c["name"] for c in d.call("container.list", {"all": True})] == ["kept"]


def test_a_bundle_without_a_record_is_kept_aside_by_a_rebuild(make_daemon: Any) -> None:
    """A container made by a tugd older than the records, whose store is then lost: nothing
    says what it was, so the rebuild keeps its directory (logs, writable layer) as
    ``containers/lost-<id>`` instead of letting the start clean it up as a leftover."""
    d: Daemon = make_daemon()
    old = d.call("container.create", {"image": "busybox", "cmd": ["echo", "old"], "name": "old"})["id"]
    d.call("container.start", {"id": old})
    assert d.call("container.wait", {"id": old})["exit_code"] == 0
    new = d.call("container.create", {"image": "busybox", "cmd": ["true"], "name": "new"})["id"]
    d.stop()
    os.unlink(os.path.join(d.root, "containers", old, "record.json"))
    os.unlink(os.path.join(d.root, "tugboat.db"))
    assert "is missing but" in start_fails(d)
    d.extra = [*d.extra, REBUILD]
    d.start()
    assert [c["id"] for c in d.call("container.list", {"all": True})] == [new]
    kept = os.path.join(d.root, "containers", "lost-" + old)
    with open(os.path.join(kept, "container.log"), "rb") as f:
        assert f.read().endswith(b" stdout F old\n")
    assert f"container {old[:12]}: no usable record (kept as lost-{old})" in d.read_log()


def test_a_second_tugd_on_the_same_state_dir_is_refused(make_daemon: Any) -> None:
    d: Daemon = make_daemon(image=False)
    other = Daemon(tempfile.mkdtemp(prefix="tb", dir="/tmp"))
    try:
        other.state, other.socket = d.state, d.socket
        line = start_fails(other)
        assert line == (
            f"tugd: another tugd is already using the state directory {d.state}; "
            "stop it first (or give this one another --state)"
        )
        line = start_fails(d)
        assert "already using the data root" in line
        assert d.proc is not None and d.call("system.info")["pid"] == d.proc.pid
    finally:
        shutil.rmtree(other.base, ignore_errors=True)


@contextlib.contextmanager
def small_fs(size: str) -> Any:
    """A tmpfs of ``size`` mounted for the test, unmounted after."""
    where = tempfile.mkdtemp(prefix="tbfs", dir="/tmp")
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", where], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", where], check=False)
        os.rmdir(where)


def test_a_read_only_root_is_refused_clearly(busybox_tar: str) -> None:
    with small_fs("16m") as fs:
        d = Daemon(fs)
        try:
            d.start()
            d.stop()
            subprocess.run(["mount", "-o", "remount,ro", fs], check=True)
            line = start_fails(d)
            assert "read-only file system" in line and d.root in line, line
        finally:
            d.stop()
            subprocess.run(["mount", "-o", "remount,rw", fs], check=False)


def _read(path: str) -> str:
    with open(path, errors="replace") as f:
        return f.read()


def _run_until_ready_or_exit(cmd: list[str], base: str, timeout: float = 30.0) -> tuple[int | None, str]:
    """Start tugd; (None, log) once it is ready (then stopped), or (status, stderr) if it ended."""
    notify_path = os.path.join(base, "notify.sock")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(notify_path)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(0.05)
    err_path = os.path.join(base, "stderr")
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.DEVNULL,
            stderr=err,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "NOTIFY_SOCKET": notify_path},
        )
    deadline = time.monotonic() + timeout
    try:
        while True:
            with contextlib.suppress(TimeoutError):
                if b"READY=1" in notify.recv(4096):
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(timeout=20)
                    return None, _read(err_path)
            if proc.poll() is not None:
                return proc.returncode, _read(err_path)
            assert time.monotonic() < deadline, "tugd neither got ready nor ended"
    finally:
        notify.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_random_damage_either_starts_or_fails_in_one_clear_line(make_daemon: Any) -> None:
    """Property: whatever bytes of a real store are overwritten, tugd either starts or ends with
    exit status 2 and one line naming the store and the way out; never a traceback."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    d: Daemon = make_daemon()
    cid = d.call("container.create", {"image": "busybox", "cmd": ["sh", "-c", "exit 3"], "name": "q"})["id"]
    d.call("container.start", {"id": cid})
    assert d.call("container.wait", {"id": cid})["exit_code"] == 3
    d.call("image.tag", {"source": "busybox", "target": "mine/tool:v1"})
    d.stop()
    pristine = os.path.join(d.base, "pristine.db")
    shutil.copyfile(os.path.join(d.root, "tugboat.db"), pristine)
    size = os.path.getsize(pristine)
    runs: list[str] = []

    @settings(
        max_examples=8,
        deadline=60_000,
        derandomize=True,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        st.lists(
            st.tuples(st.integers(0, size - 1), st.binary(min_size=1, max_size=512)), min_size=1, max_size=6
        )
    )
    def damaged(writes: list[tuple[int, bytes]]) -> None:
        base = tempfile.mkdtemp(prefix="tbh", dir="/tmp")
        try:
            root = os.path.join(base, "r")
            shutil.copytree(d.root, root, symlinks=True, ignore=shutil.ignore_patterns("tugd.lock"))
            db = os.path.join(root, "tugboat.db")
            shutil.copyfile(pristine, db)
            with open(db, "r+b") as f:
                for offset, data in writes:
                    f.seek(offset)
                    f.write(data)
            cmd = [TUGD, "--root", root, "--state", os.path.join(base, "s"), *d.extra]
            status, err = _run_until_ready_or_exit(cmd, base)
            assert "Traceback" not in err, err
            if status is None:
                runs.append("started")
                return
            runs.append("refused")
            lines = [line for line in err.splitlines() if line.startswith("tugd: ")]
            assert status == 2 and len(lines) == 1, (status, err)
            assert root in lines[0] and REBUILD in lines[0], lines[0]
        finally:
            shutil.rmtree(base, ignore_errors=True)

    damaged()
    assert runs, runs
    d.start()


def _write_until_error(f: Any, chunk: bytes) -> int | None:
    try:
        while True:
            f.write(chunk)
    except OSError as exc:
        return exc.errno


def _fill(path: str) -> None:
    """Write ``path`` until the file system is full (big writes, then small ones)."""
    with open(path, "wb", buffering=0) as f:
        for size in (1 << 20, 1 << 12, 1 << 9):
            assert _write_until_error(f, b"\0" * size) == errno.ENOSPC


def _temp_files(root: str) -> list[str]:
    out = []
    for sub in ("blobs/sha256", "snapshots", "containers", "meta/images", "meta/networks"):
        d = os.path.join(root, sub)
        entries = os.listdir(d) if os.path.isdir(d) else []
        out += [os.path.join(sub, e) for e in entries if e.startswith(".")]
    return out


@pytest.mark.registry
@pytest.mark.skipif(shutil.which("docker-registry") is None, reason="needs docker-registry")
def test_a_full_disk_fails_create_import_load_build_pull_clearly_and_keeps_the_store_whole(
    busybox_tar: str, tmp_path: Any
) -> None:
    from .test_registry import running_registry

    with running_registry() as registry:
        _full_disk(busybox_tar, tmp_path, registry.host)


def _full_disk(busybox_tar: str, tmp_path: Any, registry: str) -> None:
    from tugwire import errors

    base = tempfile.mkdtemp(prefix="tbf", dir="/tmp")
    root = os.path.join(base, "root")
    os.mkdir(root)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m,mode=0700", "tmpfs", root], check=True)
    d = Daemon(base)
    try:
        d.start()
        d.call("image.import", {"path": busybox_tar, "ref": "busybox"})
        big = tmp_path / "big.tar"
        payload = tmp_path / "payload"
        payload.write_bytes(os.urandom(4 << 20))
        subprocess.run(["tar", "-C", str(tmp_path), "-cf", str(big), "payload"], check=True)
        # An archive to load later: an image saved, then removed (its blobs freed).
        d.call("image.import", {"path": str(big), "ref": "saved:v1"})
        archive = str(tmp_path / "saved.tar")
        d.call("image.save", {"path": archive, "refs": ["saved:v1"]})
        remote = f"{registry}/full/saved:v1"
        d.call("image.push", {"ref": "saved:v1", "dest": remote})
        d.call("image.remove", {"ref": "saved:v1"})
        ctx = tmp_path / "ctx"
        ctx.mkdir()
        (ctx / "Dockerfile").write_text("FROM busybox\nCOPY payload /payload\n")
        shutil.copyfile(payload, ctx / "payload")
        images_before = d.call("image.list")
        filler = os.path.join(root, "filler")
        gate = tempfile.mkdtemp(prefix="gate", dir=base)
        waiter, later = (
            start(
                d,
                ["sh", "-c", f"while [ ! -e /gate/{name} ]; do sleep 0.05; done; exit {code}"],
                name=name,
                volumes=[{"source": gate, "destination": "/gate"}],
            )
            for name, code in (("waiter", 6), ("later", 7))
        )
        _fill(filler)
        # A container that exits while the disk is full: tugd serves on (it used to die of the
        # store's "database or disk is full"), and the exit is recorded once there is room.
        with open(os.path.join(gate, "waiter"), "w"):
            pass
        exit_file = os.path.join(d.state, "shims", waiter, "exit.json")
        wait_for(lambda: os.path.exists(exit_file), "exit record of the shim")
        assert d.call("container.inspect", {"id": waiter})["state"] in ("running", "exited")
        with pytest.raises(errors.ResourceExhausted, match="no space left on the device"):
            d.call("container.create", {"image": "busybox", "cmd": ["true"], "name": "late"})
        with pytest.raises(errors.ResourceExhausted, match="no space left"):
            d.call("image.import", {"path": str(big), "ref": "big:v1"})
        with pytest.raises(errors.ResourceExhausted, match="no space left"):
            d.call("image.load", {"path": archive})
        with pytest.raises(errors.ResourceExhausted, match="no space left"):
            d.call("image.build", {"context": str(ctx), "tag": "built:v1"})
        with pytest.raises(errors.ResourceExhausted, match="no space left"):
            d.call("image.pull", {"ref": remote})
        # A change of the store itself: refused whole, or made whole (SQLite may find room).
        try:
            d.call("image.tag", {"source": "busybox", "target": "named:v1"})
            tagged = True
        except errors.ResourceExhausted:
            tagged = False
        # Nothing half-made was kept, and tugd serves on.
        assert sorted(c["name"] for c in d.call("container.list", {"all": True})) == ["later", "waiter"]
        assert sorted(os.listdir(os.path.join(root, "containers"))) == sorted([waiter, later])
        assert _temp_files(root) == []
        assert os.listdir(os.path.join(root, "builds")) == []
        names = sorted(n for i in d.call("image.list") for n in i["repo_tags"])
        assert names == sorted(["busybox:latest", *(["named:v1"] if tagged else [])])
        assert d.call("system.info")["store"]["check"] == "ok"
        # Room for a moment: the pending exit is recorded by the running tugd.
        os.unlink(filler)
        assert d.call("container.wait", {"id": waiter})["exit_code"] == 6
        _fill(filler)
        # A start on the full disk, after an exit while tugd was down: it serves (the exit is
        # recorded once there is room; it used to end tugd).
        d.stop()
        with open(os.path.join(gate, "later"), "w"):
            pass
        exit_file = os.path.join(d.state, "shims", later, "exit.json")
        wait_for(lambda: os.path.exists(exit_file), "exit record of the shim")
        status, err = _run_until_ready_or_exit(argv(d), base)
        assert status is None and "Traceback" not in err, err
        # Room again: everything works, and the records on disk catch up.
        os.unlink(filler)
        d.start()
        for cid, code in ((waiter, 6), (later, 7)):
            assert d.call("container.wait", {"id": cid})["exit_code"] == code
            assert d.call("container.inspect", {"id": cid})["exit_code"] == code
            d.call("container.delete", {"id": cid})
        opts = {"image": "busybox", "cmd": ["sh", "-c", "exit 4"], "name": "late"}
        cid = d.call("container.create", opts)["id"]
        d.call("container.start", {"id": cid})
        assert d.call("container.wait", {"id": cid})["exit_code"] == 4
        d.call("image.import", {"path": str(big), "ref": "big:v1"})
        d.call("image.load", {"path": archive})
        d.call("image.build", {"context": str(ctx), "tag": "built:v1"})
        d.call("image.pull", {"ref": remote})
        assert len(d.call("image.list")) == len(images_before) + 3  # load and pull: one image
        info = d.call("system.info")["store"]
        assert (info["status"], info["records_behind"]) == ("ok", 0), info
        d.call("container.delete", {"id": cid})
    finally:
        problems = [p for p in d.cleanup() if p != f"mount left: {root}"]  # the test's own tmpfs
        subprocess.run(["umount", "-l", root], check=False)
        shutil.rmtree(base, ignore_errors=True)
    assert not problems, problems


def test_records_of_rows_removed_while_tugd_was_killed_are_leftovers_not_a_lost_store(
    make_daemon: Any,
) -> None:
    """tugd killed between a removal's commit and the removal of its record on disk: the next
    start takes the record for what it is (its generation is one the store has passed) and
    removes it, instead of refusing to start on a store 'older than the disk'."""
    d: Daemon = make_daemon(netns=True)  # network.create makes a bridge: not on the host
    cid = d.call("container.create", {"image": "busybox", "cmd": ["true"], "name": "gone"})["id"]
    record = os.path.join(d.root, "containers", cid, "record.json")
    with open(record, "rb") as f:
        saved = f.read()
    d.call("image.tag", {"source": "busybox", "target": "gone:v1"})
    d.call("network.create", {"name": "gone"})
    net_id = d.call("network.inspect", {"id": "gone"})["id"]
    net_record = os.path.join(d.root, "meta", "networks", net_id + ".json")
    with open(net_record, "rb") as f:
        saved_net = f.read()
    d.call("container.delete", {"id": cid})
    d.call("network.delete", {"id": "gone"})
    d.kill9()
    # As if tugd had died right after each commit: the records are still there.
    os.makedirs(os.path.dirname(record))
    with open(record, "wb") as f:
        f.write(saved)
    with open(net_record, "wb") as f:
        f.write(saved_net)
    d.start()
    assert not os.path.exists(os.path.dirname(record)) and not os.path.exists(net_record)
    assert [c["name"] for c in d.call("container.list", {"all": True})] == []
    # A record newer than the store is another matter: the store lost writes.
    d.kill9()
    with open(net_record, "wb") as f:
        f.write(saved_net.replace(b'"gen":', b'"gen":1000000,"x":'))
    line = start_fails(d)
    assert "is older than what is on disk (1 network changed after its last write" in line, line
    os.unlink(net_record)
    d.start()


# ----------------------------------------------------------------------- units: no tugd needed


def _unit_store(root: str) -> Any:
    from supervisor import ondisk
    from supervisor.network.ipam import NetStore
    from supervisor.store import Store

    os.makedirs(os.path.join(root, "containers"), exist_ok=True)
    store = Store(os.path.join(root, "tugboat.db"), ondisk.Mirror(ondisk.Layout(root)))
    NetStore(store.db)
    assert store.mirror is not None
    store.mirror.attach(store.db)
    return store


def _record(cid: str, name: str) -> Any:
    from supervisor.records import ContainerSettings, RunState, State
    from supervisor.store import ContainerRecord

    return ContainerRecord(
        id=cid,
        name=name,
        image="busybox",
        image_id="sha256:" + "0" * 64,
        created_at="t",
        settings=ContainerSettings(),
        run=RunState(State.CREATED),
    )


def _image(image_id: str) -> Any:
    from supervisor.store import ImageRecord

    return ImageRecord(id=image_id, digest="sha256:" + "f" * 64, manifest={}, config={}, size=1, created="t")


def _abandoned_rename(store: Any, cid: str) -> None:
    with store.transaction():
        store.update_container(_record(cid, "two"))
        raise RuntimeError("abandoned")


def test_records_follow_commits_and_rollbacks(tmp_path: Any) -> None:
    import json

    from supervisor import ondisk

    root = str(tmp_path)
    store = _unit_store(root)
    layout = ondisk.Layout(root)
    cid = "a" * 64
    os.mkdir(os.path.join(root, "containers", cid))
    store.insert_container(_record(cid, "one"))

    def on_disk(path: str) -> Any:
        with open(path) as f:
            return json.load(f)

    assert on_disk(layout.container(cid))["container"]["name"] == "one"
    gen = on_disk(layout.container(cid))["gen"]
    assert gen == store.generation() and gen > 0
    # A change rolled back leaves the committed row on disk.
    with pytest.raises(RuntimeError, match="abandoned"):
        _abandoned_rename(store, cid)
    assert on_disk(layout.container(cid))["container"]["name"] == "one"
    # A name that moves from one image to another is on disk with the second only.
    a, b = "sha256:" + "1" * 64, "sha256:" + "2" * 64
    with store.transaction():
        store.put_image(_image(a))
        store.put_image(_image(b))
        store.set_name("x:1", a)
    assert on_disk(layout.image(a))["image"]["names"] == ["x:1"]
    store.set_name("x:1", b)
    assert on_disk(layout.image(a))["image"]["names"] == []
    assert on_disk(layout.image(b))["image"]["names"] == ["x:1"]
    store.delete_image(a)
    assert not os.path.exists(layout.image(a))
    store.delete_container(cid)
    assert not os.path.exists(layout.container(cid))
    store.close()


def test_a_record_that_cannot_be_written_is_counted_and_written_later(tmp_path: Any) -> None:
    from supervisor import ondisk

    root = str(tmp_path)
    store = _unit_store(root)
    layout = ondisk.Layout(root)
    a = "sha256:" + "3" * 64
    os.makedirs(layout.images_dir, exist_ok=True)
    os.chmod(layout.images_dir, 0o500)
    blocked = os.geteuid() != 0  # root writes through the mode: block with a file instead
    if not blocked:
        os.chmod(layout.images_dir, 0o700)
        os.rmdir(layout.images_dir)
        with open(layout.images_dir, "w"):
            pass
    store.put_image(_image(a))  # committed: the database is the truth
    assert store.get_image(a) is not None
    assert store.mirror is not None and store.mirror.behind() == 1 and store.mirror.last_error
    if blocked:
        os.chmod(layout.images_dir, 0o700)
    else:
        os.unlink(layout.images_dir)
    store.set_name("y:1", a)  # the next flush writes what was behind
    assert store.mirror.behind() == 0 and os.path.exists(layout.image(a))
    store.close()


def test_set_aside_never_overwrites_an_earlier_damaged_file(tmp_path: Any) -> None:
    from supervisor.rebuild import set_aside

    db = str(tmp_path / "tugboat.db")
    moved = []
    for i in range(3):
        with open(db, "w") as f:
            f.write(str(i))
        with open(db + "-wal", "w") as f:
            f.write("w")
        moved += set_aside(db)
    assert len(set(moved)) == 6 and not os.path.exists(db)
    contents = []
    for path in moved[::2]:
        with open(path) as f:
            contents.append(f.read())
    assert contents == ["0", "1", "2"]
