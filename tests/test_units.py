"""The pure parts, property-tested: CRI formatting, line framing, names, tar sanitising; and the
JSON-RPC server and client in-process on both anyio backends."""

from __future__ import annotations

import io
import os
import tarfile
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.images import UnsafeLayer, unpack_tar
from tugwire import crilog, errors, jsonrpc, names


def rebuild(data: bytes) -> dict[bytes, bytes]:
    out = {b"stdout": b"", b"stderr": b""}
    for rec in data.split(b"\n")[:-1]:
        _ts, stream, full, content = crilog.parse_record(rec)
        out[stream] += content + (b"\n" if full else b"")
    return out


@given(
    st.lists(
        st.binary(max_size=3000).map(lambda b: b.replace(b"\n", b"") + b"\n" if b and b[0] % 2 else b),
        max_size=20,
    )
)
@settings(max_examples=200, deadline=None)
def test_cri_chunks_rebuild_exactly(chunks: list[bytes]) -> None:
    ts = crilog.timestamp()
    formatted = b"".join(crilog.format_chunk(b"stdout", c, ts) for c in chunks)
    assert rebuild(formatted)[b"stdout"] == b"".join(chunks)
    for rec in formatted.split(b"\n")[:-1]:
        assert len(rec.split(b" ", 3)[3]) <= crilog.MAX_LINE


def test_cri_long_line_becomes_partials() -> None:
    ts = crilog.timestamp()
    out = crilog.format_chunk(b"stderr", b"x" * 40000 + b"\nshort\n", ts)
    recs = out.split(b"\n")[:-1]
    assert [r.split(b" ")[2] for r in recs] == [b"P", b"P", b"F", b"F"]
    assert rebuild(out)[b"stderr"] == b"x" * 40000 + b"\nshort\n"


def test_timestamps_are_fixed_width_and_sortable() -> None:
    a = crilog.timestamp(1_000_000_000 * 10**9)
    b = crilog.timestamp(1_000_000_000 * 10**9 + 1)
    assert len(a) == len(b) == 30 and a < b
    assert a == b"2001-09-09T01:46:40.000000000Z"


def test_log_writer_rotates_whole_records(tmp_path: Any) -> None:
    path = str(tmp_path / "c.log")
    w = crilog.LogWriter(path, max_size=4096, max_files=3)
    for i in range(1000):
        w.write(b"stdout", b"line %d\n" % i)
    w.close()
    assert os.path.exists(path + ".2") and not os.path.exists(path + ".3")
    kept = list(crilog.iter_records(crilog.rotated_paths(path, 3)))
    numbers = [int(r.split(b" ")[4]) for r in kept]
    assert numbers == list(range(numbers[0], 1000))
    assert w.generation > 2 and w.path_of(w.generation - 1) == path + ".1"


@given(
    st.lists(st.binary(max_size=50).map(lambda b: b.replace(b"\n", b"")), max_size=30),
    st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=10),
)
@settings(max_examples=100, deadline=None)
def test_line_reader_under_arbitrary_splits(lines: list[bytes], cuts: list[int]) -> None:
    data = b"".join(line + b"\n" for line in lines)
    pieces, i, k = [], 0, 0
    while i < len(data):
        n = cuts[k % len(cuts)]
        pieces.append(data[i : i + n])
        i += n
        k += 1

    async def main() -> list[bytes]:
        send, receive = anyio.create_memory_object_stream[bytes](len(pieces) + 1)
        for p in pieces:
            send.send_nowait(p)
        send.close()

        class Stream:
            async def receive(self, max_bytes: int = 65536) -> bytes:
                return await receive.receive()

        reader = jsonrpc.LineReader(Stream(), 100)  # type: ignore[arg-type]
        got = []
        with receive:
            while True:
                try:
                    got.append(await reader.receive_line())
                except anyio.EndOfStream:
                    return got

    assert anyio.run(main) == lines


def test_names() -> None:
    assert names.check_name("web-1.a_b") == "web-1.a_b"
    for bad in ["../x", "", "-x", "a/b", "x" * 129, "a b", ".hidden"]:
        with pytest.raises(errors.InvalidArgument):
            names.check_name(bad)
    assert names.parse_ref("busybox") == ("busybox", "latest")
    assert names.parse_ref("localhost:5000/a/b:v1") == ("localhost:5000/a/b", "v1")
    for bad in ["UPPER", "../x", "a:b:c", ""]:
        with pytest.raises(errors.InvalidArgument):
            names.parse_ref(bad)


def _tar(entries: list[tarfile.TarInfo], data: dict[str, bytes] | None = None) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for info in entries:
            payload = (data or {}).get(info.name)
            if payload is not None:
                info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload) if payload is not None else None)
    buf.seek(0)
    return buf


def _entry(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    return info


@pytest.mark.parametrize(
    "entries",
    [
        [_entry("../evil")],
        [_entry("/etc/evil")],
        [_entry("a/../../evil")],
        [_entry("link", tarfile.SYMTYPE, "/"), _entry("link/etc/evil")],
        [_entry("hl", tarfile.LNKTYPE, "../../etc/passwd")],
    ],
)
def test_escaping_layers_are_refused(tmp_path: Any, entries: list[tarfile.TarInfo]) -> None:
    root = tmp_path / "root"
    root.mkdir()
    outside = set(os.listdir(tmp_path))
    with pytest.raises(UnsafeLayer):
        unpack_tar(_tar(entries, {e.name: b"x" for e in entries if e.isreg()}), str(root))
    assert set(os.listdir(tmp_path)) == outside


def test_unpack_keeps_links_and_modes(tmp_path: Any) -> None:
    entries = [
        _entry("bin", tarfile.DIRTYPE),
        _entry("bin/tool"),
        _entry("bin/alias", tarfile.SYMTYPE, "tool"),
        _entry("bin/hard", tarfile.LNKTYPE, "bin/tool"),
        _entry("dev/null", tarfile.CHRTYPE),
    ]
    entries[1].mode = 0o4755
    unpack_tar(_tar(entries, {"bin/tool": b"#!/bin/sh\n"}), str(tmp_path))
    assert os.readlink(tmp_path / "bin/alias") == "tool"
    assert os.stat(tmp_path / "bin/hard").st_ino == os.stat(tmp_path / "bin/tool").st_ino
    assert os.stat(tmp_path / "bin/tool").st_mode & 0o7777 == 0o4755
    assert not os.path.exists(tmp_path / "dev/null")  # device nodes are not created from images


# --------------------------------------------------------------- JSON-RPC in-process, both backends


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.anyio
async def test_rpc_server_and_client(tmp_path: Any) -> None:
    d = jsonrpc.Dispatcher()
    gate = anyio.Event()

    async def echo(call: jsonrpc.Call) -> Any:
        return call.params.raw

    async def slow(call: jsonrpc.Call) -> Any:
        await gate.wait()
        return "slow"

    async def fail(call: jsonrpc.Call) -> Any:
        raise errors.NotFound("nothing here", field="x")

    async def stream(call: jsonrpc.Call) -> Any:
        for i in range(call.params.integer("n", 3)):
            await call.notify("tick", {"i": i})
        return "done"

    d.add("echo", echo)
    d.add("slow", slow)
    d.add("fail", fail)
    d.add("stream", stream, accept_late=True)
    path = str(tmp_path / "s.sock")
    listener = await anyio.create_unix_listener(path)
    async with anyio.create_task_group() as tg:
        tg.start_soon(jsonrpc.serve_listener, listener, d)
        async with jsonrpc.connect(path) as client:
            results: dict[str, Any] = {}

            async def do_slow() -> None:
                results["slow"] = await client.call("slow")

            tg.start_soon(do_slow)
            assert await client.call("echo", {"a": [1, "b"]}) == {"a": [1, "b"]}  # not blocked by slow
            gate.set()
            with pytest.raises(errors.NotFound) as info:
                await client.call("fail")
            assert info.value.details == {"x": None} or info.value.details == {"field": "x"}
            with pytest.raises(errors.MethodNotFound):
                await client.call("nope")
            async with client.stream("stream", {"n": 5}) as s:
                ticks = [n["i"] async for n in s]
                assert await s.result() == "done"
            assert ticks == [0, 1, 2, 3, 4]
        tg.cancel_scope.cancel()
    assert results == {"slow": "slow"}


@pytest.mark.anyio
async def test_notify_data_lines_are_the_json_notify_would_send(tmp_path: Any) -> None:
    """``Call.notify_data`` builds its line around the data: through a real server and client,
    every kind of payload arrives as ``notify`` would have sent it. Base64 goes the fast way; a
    string with anything JSON escapes (quote, backslash, control characters, non-ASCII) goes
    through ``json.dumps``."""
    import base64

    payloads: list[bytes | str] = [
        base64.b64encode(bytes(range(256)) * 1000),
        base64.b64encode(b"").decode(),
        "QUJD",
        'a"b',
        "back\\slash",
        "ctl\x01\x1f",
        "tab\tnewline\n",
        "caf\u00e9 \u2603",
        "del\x7f",
    ]
    d = jsonrpc.Dispatcher()

    async def stream(call: jsonrpc.Call) -> Any:
        call.accept()
        for data in payloads:
            await call.notify_data("chunk", data)
        return "done"

    d.add("stream", stream, accept_late=True)
    path = str(tmp_path / "s.sock")
    listener = await anyio.create_unix_listener(path)
    async with anyio.create_task_group() as tg:
        tg.start_soon(jsonrpc.serve_listener, listener, d)
        async with jsonrpc.connect(path) as client, client.stream("stream") as notes:
            got = [note async for note in notes]
            assert await notes.result() == "done"
        tg.cancel_scope.cancel()
    assert len(got) == len(payloads)
    request = got[0]["request"]
    assert isinstance(request, int)
    for note, data in zip(got, payloads, strict=True):
        assert note == {"data": data.decode() if isinstance(data, bytes) else data, "request": request}


def test_iter_chunks_yields_whole_records_and_skips_a_torn_tail(tmp_path: Any) -> None:
    a, b = tmp_path / "c.log.1", tmp_path / "c.log"
    records = [b"2026-01-01T00:00:00.000000000Z stdout F line %d" % i for i in range(5000)]
    a.write_bytes(b"\n".join(records[:2500]) + b"\n")
    b.write_bytes(b"\n".join(records[2500:]) + b"\n" + b"2026-01-01T00:00:00.0000")  # torn
    chunks = list(crilog.iter_chunks([str(a), str(b), str(tmp_path / "missing")], size=1000))
    assert all(c.endswith(b"\n") for c in chunks)
    assert b"".join(chunks) == b"".join(r + b"\n" for r in records)


def test_container_transitions_follow_the_one_table() -> None:
    """Each move goes where the table says, and a move the table forbids changes nothing."""
    from supervisor.containers.state import TRANSITIONS, Move, State, allowed, transition
    from supervisor.records import ContainerSettings, RunState
    from supervisor.store import ContainerRecord

    for move, (sources, target) in TRANSITIONS.items():
        for state in State:
            rec = ContainerRecord(
                "a" * 64, "n", "busybox", "sha256:x", "t", ContainerSettings(), RunState(state)
            )
            assert allowed(state, move) == (state in sources)
            if state in sources:
                transition(rec, move)
                assert rec.run.state == target
            else:
                with pytest.raises(errors.FailedPrecondition) as exc:
                    transition(rec, move)
                assert rec.run.state == state
                assert exc.value.to_json()["data"]["state"] == state
    assert not allowed(State.EXITED, Move.PAUSE)
    assert not allowed(State.RUNNING, Move.START)


@given(
    st.integers(-(2**31), 2**31),
    st.one_of(st.none(), st.text(max_size=20)),
    st.booleans(),
    st.integers(0, 2**40),
)
def test_exit_record_round_trips_and_is_never_guessed(
    code: int, sig: str | None, oom: bool, dropped: int
) -> None:
    from tugwire.shimapi import ExitRecord

    rec = ExitRecord(7, code, sig, "2026-01-02T03:04:05.000000000Z", oom, dropped)
    assert ExitRecord.decode(rec.encode()) == rec
    assert ExitRecord.optional({"exit_code": "1"}) is None  # an exit code is never guessed
    assert ExitRecord.optional(None) is None


def test_shim_config_round_trips_and_refuses_relative_paths() -> None:
    from tugwire.shimapi import ShimConfig

    cfg = ShimConfig("a" * 64, "/b", "/d", "runc", "/r", "/l", tty=True, backend="trio")
    assert ShimConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(errors.InvalidArgument):
        ShimConfig.from_json({**cfg.to_json(), "bundle": "relative"})
    with pytest.raises(errors.InvalidArgument):
        ShimConfig.from_json({"id": "x"})


def test_a_container_records_runtime_state_apart_from_its_settings(tmp_path: Any) -> None:
    """The settings are a typed, frozen record; restart_count, stopped_by_user and
    log_dropped_bytes are fields of the record apart from them, yet stored inside the config JSON
    as before (the on-disk records and ``--rebuild-store`` read the same format). A row written by
    an earlier tugd reads back, and is written back with the same keys."""
    import dataclasses
    import json
    import sqlite3

    from supervisor.records import ContainerSettings, State
    from supervisor.store import Store

    # A row as tugd wrote it before the settings were typed (every key create sets, an entrypoint
    # left out, the runtime keys inside), and a sparse one of an older tugd with a key unknown here.
    current = {
        "image": "busybox", "name": "web", "cmd": ["sleep", "1"], "env": ["A=1"], "workdir": None,
        "user": None, "hostname": None, "volumes": [{"source": "/s", "destination": "/d", "readonly": True}],
        "read_only": False, "tty": True, "stdin": False, "memory": 8388608, "cpus": None, "pids_limit": None,
        "auto_remove": False, "stop_signal": "SIGTERM", "restart": "on-failure:3", "init": False,
        "security": {"privileged": False, "caps": ["CAP_CHOWN"], "no_new_privileges": False,
                     "seccomp": "default"},
        "stop_timeout": 10, "log_max_size": 10485760, "log_max_files": 5, "metrics_address": None,
        "labels": {"a": "b"}, "health": None, "network": "bridge", "ip": None, "ip6": None,
        "network_aliases": [], "dns": [], "add_hosts": [["h", "10.0.0.1"]],
        "ports": [{"host_ip": "", "host_port": 8080, "container_port": 80, "proto": "tcp"}],
        "args": ["sleep", "1"], "restart_count": 3, "stopped_by_user": True,
    }  # fmt: skip
    older = {"image": "busybox", "restart": "always", "future_key": {"x": 1}}
    store = Store(str(tmp_path / "db"))
    try:
        for cid, config in (("b" * 64, current), ("c" * 64, older)):
            store.db.execute(
                "INSERT INTO containers (id, name, image, image_id, created_at, config, state) "
                "VALUES (?, ?, 'busybox', 'sha256:x', 't', ?, 'exited')",
                (cid, cid[:4], json.dumps(config)),
            )
        rec = store.get_container("b" * 64)
        assert rec is not None and rec.run.state is State.EXITED
        settings = rec.settings
        assert (settings.name, settings.cmd, settings.entrypoint, settings.tty) == (
            "web",
            ["sleep", "1"],
            None,
            True,
        )
        assert (settings.memory, settings.restart, settings.labels) == (8388608, "on-failure:3", {"a": "b"})
        assert settings.ports[0]["host_port"] == 8080 and settings.add_hosts == [["h", "10.0.0.1"]]
        assert (rec.run.restart_count, rec.run.stopped_by_user, rec.run.log_dropped_bytes) == (3, True, 0)
        with pytest.raises(dataclasses.FrozenInstanceError):
            settings.memory = 1  # type: ignore[misc]
        assert rec.stored_config() == current  # what container.inspect shows as its config
        old = store.get_container("c" * 64)
        assert old is not None and old.settings.restart == "always" and old.settings.stop_timeout == 10
        assert old.settings.cmd == [] and old.settings.extra == {"future_key": {"x": 1}}
        assert old.stored_config() == older  # what inspect showed of it before
        changed = dataclasses.replace(old.settings, memory=8388608)
        assert changed.to_json() == {**older, "memory": 8388608}  # a key it had not, once set

        rec.run.restart_count, rec.run.stopped_by_user, rec.run.log_dropped_bytes = 4, False, 10
        rec.settings = dataclasses.replace(rec.settings, memory=16777216)
        store.update_container(rec)
        store.update_container(old)
        db = sqlite3.connect(str(tmp_path / "db"))
        raw = dict(db.execute("SELECT id, config FROM containers").fetchall())
        db.close()
        want = {**current, "memory": 16777216, "restart_count": 4, "log_dropped_bytes": 10}
        del want["stopped_by_user"]
        assert json.loads(raw["b" * 64]) == want
        assert json.loads(raw["c" * 64]) == older  # written back as it was (an unknown key too)
        back = store.get_container(rec.id)
        assert back is not None and back.settings == rec.settings
        assert (back.run.restart_count, back.run.stopped_by_user, back.run.log_dropped_bytes) == (
            4,
            False,
            10,
        )
        assert ContainerSettings.from_json(rec.settings.to_json()) == rec.settings
    finally:
        store.close()
