"""Unit tests of the ``tug`` CLI that need no daemon: argument parsing, sizes, times, log decoding,
and the blocking client against a scripted socket peer."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor.cli import containers, create, events, images, inspect, options
from supervisor.cli import format as fmt
from supervisor.cli import main as cli
from tugwire import crilog, errors, timefmt
from tugwire.syncclient import Client, Disconnected


def parse_run(*argv: str) -> dict[str, Any]:
    return create.create_params(cli.build_parser().parse_args(["run", *argv]))


# ------------------------------------------------------------------------------ run arguments


def test_run_command_keeps_its_own_options() -> None:
    args = cli.build_parser().parse_args(["run", "--rm", "busybox", "sh", "-c", "echo hi"])
    assert args.rm
    assert args.image == "busybox"
    assert args.command == ["sh", "-c", "echo hi"]


@pytest.mark.parametrize(
    ("argv", "cmd"),
    [
        (["busybox", "ls", "-l"], ["ls", "-l"]),
        (["busybox", "echo", "-e", "x", "--name", "y"], ["echo", "-e", "x", "--name", "y"]),
        (["busybox", "--rm"], ["--rm"]),
        (["-e", "A=1", "busybox", "env", "-d"], ["env", "-d"]),
        (["busybox", "echo", "--", "x"], ["echo", "--", "x"]),
    ],
)
def test_run_options_after_image_belong_to_the_command(argv: list[str], cmd: list[str]) -> None:
    params = parse_run(*argv)
    assert params["image"] == "busybox"
    assert params["cmd"] == cmd
    assert "name" not in params


def test_run_without_command_sends_no_cmd() -> None:
    assert parse_run("busybox") == {"image": "busybox"}


def test_run_every_option(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FROM_HERE", "yes")
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    params = parse_run(
        "-d", "--rm", "--name", "web", "-e", "A=1", "-e", "FROM_HERE", "-e", "NOT_SET_ANYWHERE",
        "-w", "/srv", "-u", "1000:1000", "-v", "data:/data:ro", "-v", "/etc:/host-etc",
        "-h", "box", "--read-only", "-m", "64m", "--cpus", "0.5", "--pids-limit", "20",
        "--stop-signal", "SIGQUIT", "--stop-timeout", "3", "--log-max-size", "10m",
        "--log-max-files", "2", "busybox:latest", "sleep", "1",
    )  # fmt: skip
    assert params == {
        "image": "busybox:latest",
        "name": "web",
        "cmd": ["sleep", "1"],
        "env": ["A=1", "FROM_HERE=yes"],
        "workdir": "/srv",
        "user": "1000:1000",
        "hostname": "box",
        "volumes": [
            {"source": str(tmp_path / "data"), "destination": "/data", "readonly": True},
            {"source": "/etc", "destination": "/host-etc", "readonly": False},
        ],
        "read_only": True,
        "memory": 64 << 20,
        "cpus": 0.5,
        "pids_limit": 20,
        "stop_signal": "SIGQUIT",
        "stop_timeout": 3,
        "auto_remove": True,
        "log_max_size": 10 << 20,
        "log_max_files": 2,
    }


def test_entrypoint_empty_clears_and_value_is_one_word() -> None:
    assert parse_run("--entrypoint", "", "busybox")["entrypoint"] == []
    assert parse_run("--entrypoint", "/bin/sh -x", "busybox")["entrypoint"] == ["/bin/sh -x"]
    assert "entrypoint" not in parse_run("busybox")


def test_log_opt_aliases() -> None:
    params = parse_run("--log-opt", "max-size=1k", "--log-opt", "max-file=3", "busybox")
    assert params["log_max_size"] == 1024
    assert params["log_max_files"] == 3
    with pytest.raises(errors.InvalidArgument, match="log-opt"):
        parse_run("--log-opt", "mode=non-blocking", "busybox")


def test_env_file(tmp_path: Any) -> None:
    f = tmp_path / "env"
    f.write_text("# comment\n\nA=1\nB=two words\n")
    assert parse_run("--env-file", str(f), "-e", "C=3", "busybox")["env"] == [
        "A=1",
        "B=two words",
        "C=3",
    ]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("/data", "anonymous"),
        ("/a:/b:rx", "unknown mode 'rx'"),
        ("/a:b", "must be absolute"),
        (":/b", "HOST:CONTAINER"),
        ("/a:/b:ro:x", "HOST:CONTAINER"),
    ],
)
def test_bad_volumes_are_clear_errors(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        create.parse_volume(spec)


def test_usage_errors_of_run_exit_125(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", "-v", "/a:/b:rx", "busybox"]) == 125
    assert "unknown mode" in capsys.readouterr().err
    assert cli.main(["run", "--memory", "lots", "busybox"]) == 125
    assert cli.main(["run"]) == 125
    assert cli.main(["ps", "--bogus"]) == 2


def test_command_modules_table_matches_the_modules() -> None:
    """main's COMMAND_MODULES (which lets `tug X` import only X's module) names exactly the
    commands each module defines, and each of them parses."""
    import importlib

    for name, commands in cli.COMMAND_MODULES.items():
        module = importlib.import_module(f"supervisor.cli.{name}")
        assert tuple(module.COMMANDS) == commands, name
        for command in commands:
            parser = cli.build_parser([command])
            assert command in parser._subparsers._group_actions[0].choices  # type: ignore[union-attr,operator]


def test_a_command_imports_only_its_own_module() -> None:
    """`tug ps` builds without importing the modules of pull, build, network, ... (measured: they
    cost every command several ms); `tug pull` imports the pull module."""
    import ast
    import subprocess
    import sys

    code = (
        "import sys; from supervisor.cli import main as m; m.build_parser({argv!r}); "
        "print(sorted(k for k in sys.modules if k.startswith('supervisor.cli.')))"
    )
    # main, and the shared pieces every command uses: the parser class and the error printer.
    shared = ["supervisor.cli.format", "supervisor.cli.main", "supervisor.cli.options"]
    cases = (
        (["ps"], ["supervisor.cli.containers"]),
        (["run", "busybox"], ["supervisor.cli.create", "supervisor.cli.logs", "supervisor.cli.run"]),
        (["info"], ["supervisor.cli.system"]),
        (["pull", "x"], ["supervisor.cli.pull"]),
        (["logs", "x"], ["supervisor.cli.logs"]),
    )
    for argv, expected in cases:
        out = subprocess.run(
            [sys.executable, "-c", code.format(argv=argv)], capture_output=True, text=True, check=True
        ).stdout
        loaded = ast.literal_eval(out)
        assert loaded == sorted(shared + expected), (argv, loaded)


def test_the_common_commands_import_no_heavy_stdlib_modules() -> None:
    """typing (~2 ms), socket with selectors (~2 ms, the client uses the C socket type) and shutil
    with bz2/lzma (~3 ms, argparse's formatter asks it the terminal's width) stay out of the
    commands people run most: measured, they were 7 of the 29 ms of `tug info`."""
    import ast
    import subprocess
    import sys

    heavy = ["typing", "socket", "selectors", "shutil", "bz2", "lzma"]
    code = (
        "import sys; from supervisor.cli import main as m; m.build_parser({argv!r}).parse_args({argv!r}); "
        f"print(sorted(k for k in {heavy!r} if k in sys.modules))"
    )
    commands = (["info"], ["ps", "-a"], ["run", "--rm", "-e", "A=1", "busybox", "true"], ["logs", "-f", "x"])
    for argv in commands:
        out = subprocess.run(
            [sys.executable, "-c", code.format(argv=argv)], capture_output=True, text=True, check=True
        ).stdout
        assert ast.literal_eval(out) == [], (argv, out)


def test_entry_flushes_its_output_before_os_exit(tmp_path: Any) -> None:
    """The console script ends with ``os._exit`` (no interpreter teardown): everything printed
    must still arrive, through a pipe and into a file, and the exit status must be main()'s."""
    import subprocess
    import sys

    code = "import sys; sys.argv[0] = 'tug'; from supervisor.cli.main import entry; entry()"
    full = subprocess.run([sys.executable, "-c", code, "run", "--help"], capture_output=True, text=True)
    assert full.returncode == 0
    assert full.stdout.startswith("usage: tug run") and full.stdout.endswith("\n")
    assert "--network" in full.stdout  # from the end of the help, well past any buffer boundary
    with open(tmp_path / "out", "w") as out:
        subprocess.run([sys.executable, "-c", code, "run", "--help"], stdout=out, check=True)
    assert (tmp_path / "out").read_text() == full.stdout
    missing = str(tmp_path / "no.sock")
    failed = subprocess.run(
        [sys.executable, "-c", code, "--socket", missing, "info"], capture_output=True, text=True
    )
    assert failed.returncode == 1
    assert "cannot connect to tugd" in failed.stderr and failed.stdout == ""


def test_help_returns_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", "--help"]) == 0
    assert "--memory" in capsys.readouterr().out
    assert cli.main([]) == 0


def test_socket_path(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = cli.build_parser()
    monkeypatch.delenv(cli.SOCKET_ENV, raising=False)
    assert cli.socket_path(parser.parse_args(["ps"])) == "/run/tugboat/tugd.sock"
    monkeypatch.setenv(cli.SOCKET_ENV, "/tmp/env.sock")
    assert cli.socket_path(parser.parse_args(["ps"])) == "/tmp/env.sock"
    assert cli.socket_path(parser.parse_args(["--socket", "/x.sock", "ps"])) == "/x.sock"


def test_connection_refused_is_a_clear_error(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "none.sock")
    assert cli.main(["--socket", path, "ps"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"tug: Error: cannot connect to tugd at {path}: ")
    assert "(is tugd running?)" in err
    assert cli.main(["--socket", path, "run", "busybox"]) == 125


# ------------------------------------------------------------------------------------- sizes


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("4096", 4096),
        ("100b", 100),
        ("512k", 512 << 10),
        ("64m", 64 << 20),
        ("64M", 64 << 20),
        ("64mb", 64 << 20),
        ("64MiB", 64 << 20),
        ("1g", 1 << 30),
        ("1.5g", 3 << 29),
        ("2t", 2 << 40),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert options.parse_size(text) == size


@pytest.mark.parametrize("text", ["", "m", "-1m", "64x", "1.2.3m", "64 mm"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid size"):
        options.parse_size(text)


def test_human_size_and_duration() -> None:
    assert fmt.human_size(4_261_000) == "4.26MB"
    assert fmt.human_size(1_000_000) == "1MB"
    assert fmt.human_size(512) == "512B"
    assert fmt.human_duration(0.3) == "Less than a second"
    assert fmt.human_duration(1) == "1 second"
    assert fmt.human_duration(5) == "5 seconds"
    assert fmt.human_duration(70) == "About a minute"
    assert fmt.human_duration(600) == "10 minutes"
    assert fmt.human_duration(3600) == "About an hour"
    assert fmt.human_duration(5 * 3600) == "5 hours"
    assert fmt.human_duration(3 * 86400) == "3 days"


# ------------------------------------------------------------------------------------- times

NOW = 1_767_323_045 * timefmt.NS  # 2026-01-02T03:04:05Z


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-02T03:04:05Z", "2026-01-02T03:04:05.000000000Z"),
        ("2026-01-02T03:04:05.5Z", "2026-01-02T03:04:05.500000000Z"),
        ("2026-01-02T03:04:05.123456789Z", "2026-01-02T03:04:05.123456789Z"),
        ("2026-01-02T03:04:05.1234567891Z", "2026-01-02T03:04:05.123456789Z"),
        ("2026-01-02T05:04:05+02:00", "2026-01-02T03:04:05.000000000Z"),
        ("2026-01-01T23:34:05.25-03:30", "2026-01-02T03:04:05.250000000Z"),
        ("2024-02-29T00:00:00Z", "2024-02-29T00:00:00.000000000Z"),
        ("1970-01-01T00:00:00Z", "1970-01-01T00:00:00.000000000Z"),
        ("10s", "2026-01-02T03:03:55.000000000Z"),
        ("5m", "2026-01-02T02:59:05.000000000Z"),
        ("2h", "2026-01-02T01:04:05.000000000Z"),
        ("1h30m", "2026-01-02T01:34:05.000000000Z"),
        ("1.5s", "2026-01-02T03:04:03.500000000Z"),
        ("250ms", "2026-01-02T03:04:04.750000000Z"),
        ("0", "2026-01-02T03:04:05.000000000Z"),
        ("1767323045", "2026-01-02T03:04:05.000000000Z"),
        ("1767323045.000000001", "2026-01-02T03:04:05.000000001Z"),
        ("1767323045.5", "2026-01-02T03:04:05.500000000Z"),
    ],
)
def test_parse_since(text: str, expected: str) -> None:
    assert options.parse_since(text, now_ns=NOW) == expected


def test_parse_since_without_zone_is_local_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC-02")  # POSIX: two hours east of UTC
    time.tzset()
    try:
        assert options.parse_since("2026-01-02T05:04:05") == "2026-01-02T03:04:05.000000000Z"
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


@pytest.mark.parametrize(
    "text", ["yesterday", "2026-13-01T00:00:00Z", "2026-02-30T00:00:00Z", "2025-02-29", "10x"]
)
def test_parse_since_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid --since"):
        options.parse_since(text, now_ns=NOW)


def test_logs_since_is_converted_at_parse_time() -> None:
    args = cli.build_parser().parse_args(["logs", "--since", "2026-01-02T03:04:05Z", "c1"])
    assert args.since == "2026-01-02T03:04:05.000000000Z"
    args = cli.build_parser().parse_args(["logs", "-n", "all", "c1"])
    assert args.tail is None
    assert cli.build_parser().parse_args(["logs", "--tail", "5", "c1"]).tail == 5


def test_container_status() -> None:
    def at(sec: int) -> str:
        return crilog.timestamp(NOW - sec * timefmt.NS).decode()

    assert containers.container_status({"state": "running", "started_at": at(3)}, NOW) == "Up 3 seconds"
    assert (
        containers.container_status({"state": "exited", "exit_code": 3, "finished_at": at(2)}, NOW)
        == "Exited (3) 2 seconds ago"
    )
    assert containers.container_status({"state": "created"}, NOW) == "Created"
    assert containers.container_status({"state": "unknown"}, NOW) == "Unknown"
    assert fmt.time_ns_of("0001-01-01T00:00:00Z") is None


# ------------------------------------------------------------------------------ log records


def records(*items: tuple[bytes, bytes, bytes]) -> bytes:
    ts = b"2026-01-02T03:04:05.000000001Z"
    return b"".join(b"%s %s %s %s\n" % (ts, stream, tag, content) for stream, tag, content in items)


def test_decode_full_lines_of_one_stream_fast_path() -> None:
    data = records((b"stdout", b"F", b"hello"), (b"stdout", b"F", b""), (b"stdout", b"F", b"x y"))
    assert crilog.LogDecoder().feed(data) == [(1, b"hello\n\nx y\n")]


def test_decode_partial_records_are_joined_without_newline() -> None:
    data = records((b"stderr", b"P", b"abc"), (b"stderr", b"P", b"def"), (b"stderr", b"F", b"g"))
    assert crilog.LogDecoder().feed(data) == [(2, b"abcdefg\n")]
    # A last line without a newline stays partial.
    assert crilog.LogDecoder().feed(records((b"stdout", b"P", b"no newline"))) == [(1, b"no newline")]


def test_decode_mixed_streams_in_order() -> None:
    data = records(
        (b"stdout", b"F", b"out1"),
        (b"stdout", b"F", b"out2"),
        (b"stderr", b"P", b"err"),
        (b"stdout", b"F", b"out3"),
        (b"stderr", b"F", b"!"),
    )
    assert crilog.LogDecoder().feed(data) == [
        (1, b"out1\nout2\n"),
        (2, b"err"),
        (1, b"out3\n"),
        (2, b"!\n"),
    ]


def test_decode_binary_content() -> None:
    blob = bytes(b for b in range(256) if b != 0x0A)  # a record's content is anything but \n
    data = records((b"stdout", b"F", blob), (b"stdout", b"P", b"\r\x00\xff stderr F x"))
    assert crilog.LogDecoder().feed(data) == [(1, blob + b"\n\r\x00\xff stderr F x")]


def test_decode_records_written_by_crilog_round_trip() -> None:
    written = b"line one\n" + b"x" * (crilog.MAX_LINE * 2 + 5) + b"\nlast \x00 piece"
    data = crilog.format_chunk(b"stdout", written, crilog.timestamp())
    assert b" P " in data
    decoder = crilog.LogDecoder()
    out = b"".join(chunk for _, chunk in decoder.feed(data[:1000]) + decoder.feed(data[1000:]))
    assert out == written


def test_decode_runs_with_partial_records_match_the_record_by_record_reading() -> None:
    """A chunk of one stream with P records where a pipe read ended mid-line (what the shim
    writes for a fast writer) is decoded a run at a time, and gives the same bytes as the
    record-by-record reading; with stderr in it too, each stream's bytes in order."""
    items = [(b"stdout", b"P" if i % 17 == 5 else b"F", b"line %d" % i) for i in range(200)]
    items.append((b"stdout", b"P", b"tail without newline"))
    data = records(*items)
    expected = b"".join(c + (b"\n" if tag == b"F" else b"") for _, tag, c in items)
    decoder = crilog.LogDecoder()
    assert crilog.LogDecoder()._slow(data) == [(1, expected)]
    assert decoder.feed(data) == [(1, expected)]
    mixed = data + records((b"stderr", b"F", b"e")) + data
    assert crilog.LogDecoder().feed(mixed) == crilog.LogDecoder()._slow(mixed)


def _merged(chunks: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    for fd, data in chunks:
        if not data:
            continue
        if out and out[-1][0] == fd:
            out[-1] = (fd, out[-1][1] + data)
        else:
            out.append((fd, data))
    return out


@given(
    st.lists(
        st.tuples(
            st.sampled_from([b"stdout", b"stderr"]),
            st.sampled_from([b"F", b"P"]),
            st.binary(max_size=30).map(lambda b: b.replace(b"\n", b".")),
        ),
        max_size=40,
    ),
    st.lists(st.integers(min_value=0, max_value=1 << 20), max_size=4),
    st.booleans(),
)
def test_decode_gives_what_was_written_however_the_data_is_cut(
    items: list[tuple[bytes, bytes, bytes]], cuts: list[int], one_stream: bool
) -> None:
    if one_stream:
        items = [(b"stdout", tag, content) for _, tag, content in items]
    data = records(*items)
    expected = [(1 if s == b"stdout" else 2, c + (b"\n" if tag == b"F" else b"")) for s, tag, c in items]
    decoder = crilog.LogDecoder()
    got: list[tuple[int, bytes]] = []
    pos = 0
    for cut in sorted(c % (len(data) + 1) for c in cuts):
        got += decoder.feed(data[pos:cut])
        pos = max(pos, cut)
    got += decoder.feed(data[pos:])
    assert _merged(got) == _merged(expected)


def test_decode_torn_record_waits_for_its_rest() -> None:
    data = records((b"stdout", b"F", b"hello"), (b"stderr", b"F", b"world"))
    decoder = crilog.LogDecoder()
    cut = len(data) - 4
    assert decoder.feed(data[:cut]) == [(1, b"hello\n")]
    assert decoder.feed(data[cut:]) == [(2, b"world\n")]


def test_decode_with_timestamps_prefixes_each_line_once() -> None:
    ts = b"2026-01-02T03:04:05.000000001Z"
    data = records(
        (b"stdout", b"P", b"ab"),
        (b"stderr", b"F", b"err"),
        (b"stdout", b"F", b"cd"),
        (b"stdout", b"F", b"ef"),
    )
    assert crilog.LogDecoder(timestamps=True).feed(data) == [
        (1, ts + b" ab"),
        (2, ts + b" err\n"),
        (1, b"cd\n" + ts + b" ef\n"),
    ]


# --------------------------------------------------------------------------- other helpers


def test_format_event() -> None:
    event = {
        "type": "container",
        "action": "die",
        "id": "abc",
        "name": "web",
        "image": "busybox",
        "time": "2026-01-02T03:04:05.000000000Z",
        "attributes": {"exit_code": 3, "signal": None, "oom_killed": False},
    }
    assert events.format_event(event) == (
        "2026-01-02T03:04:05.000000000Z container die abc "
        "(exit_code=3, image=busybox, name=web, oom_killed=false)"
    )


def test_render_template() -> None:
    obj = {
        "id": "c" * 64,
        "name": "web",
        "state": "exited",
        "exit_code": 3,
        "config": {"cmd": ["true"], "labels": {"a": "b"}},
        "labels": {"a": "b"},
        "reason": None,
    }
    render = inspect.render_template
    assert render("{{.State.Status}} {{.State.ExitCode}} {{.Name}}", "container", obj) == "exited 3 /web"
    assert render("{{json .Config.Cmd}} {{.Config.Labels}}", "container", obj) == '["true"] map[a:b]'
    assert render("{{.state}}", "container", obj) == "<no value>"  # docker's names, not tugd's
    image = {"id": "sha256:" + "d" * 64, "repo_tags": ["app:1"], "config": {"Env": ["A=1"]}}
    assert render("{{index .RepoTags 0}} {{.Config.Env}}", "image", image) == "app:1 [A=1]"


def test_parse_change() -> None:
    config: dict[str, Any] = {}
    for change in ['CMD ["sh", "-c", "x"]', "ENTRYPOINT run me", "ENV A=1 B='two words'",
                   "ENV C 3 4", "WORKDIR /w", "USER nobody"]:  # fmt: skip
        images.parse_change(change, config)
    assert config == {
        "Cmd": ["sh", "-c", "x"],
        "Entrypoint": ["/bin/sh", "-c", "run me"],
        "Env": ["A=1", "B=two words", "C=3 4"],
        "WorkingDir": "/w",
        "User": "nobody",
    }
    with pytest.raises(errors.InvalidArgument, match="supported"):
        images.parse_change("EXPOSE 80", config)


def test_table_layout() -> None:
    assert fmt.table(["A", "LONGER HEADER", "LAST"], [["x", "y", "z"]]).splitlines() == [
        "A         LONGER HEADER   LAST",
        "x         y               z",
    ]


# ---------------------------------------------------------------- the client, on a fake peer


@pytest.fixture
def peer(tmp_path: Any) -> Iterator[tuple[str, list[Any]]]:
    """A one-connection server answering with a script: each request gets the replies that
    ``script[method]`` returns, as raw lines."""
    path = str(tmp_path / "t.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    seen: list[Any] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with conn, conn.makefile("rb") as reader:
            for line in reader:
                req = json.loads(line)
                seen.append(req)
                rid = req["id"]
                if req["method"] == "slow":
                    continue  # answered after the next request
                if req["method"] == "stream":
                    conn.sendall(
                        b'{"jsonrpc":"2.0","method":"container.logs.data","params":'
                        b'{"request":%d,"data":"aGk="}}\n' % rid
                    )
                    conn.sendall(b'{"jsonrpc":"2.0","id":%d,"result":{"dropped_bytes":0}}\n' % rid)
                elif req["method"] == "fail":
                    err = errors.NotFound("no such container: x").to_json()
                    conn.sendall(json.dumps({"jsonrpc": "2.0", "id": rid, "error": err}).encode())
                    conn.sendall(b"\n")
                elif req["method"] == "echo":
                    # Answer the pending slow request first, out of order, split in two writes.
                    slow = [r["id"] for r in seen if r["method"] == "slow"]
                    for sid in slow:
                        conn.sendall(b'{"jsonrpc":"2.0","id":%d,' % sid)
                        conn.sendall(b'"result":"slow"}\n')
                    msg = {"jsonrpc": "2.0", "id": rid, "result": req.get("params")}
                    conn.sendall(json.dumps(msg).encode() + b"\n")
                elif req["method"] == "close":
                    return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield path, seen
    thread.join(timeout=5)
    listener.close()


def test_client_calls_out_of_order_and_streams(peer: tuple[str, list[Any]]) -> None:
    path, seen = peer
    with Client(path) as client:
        slow_id = client.send("slow", {})
        assert client.call("echo", {"a": 1}) == {"a": 1}
        assert client.wait_for(slow_id) == "slow"
        with pytest.raises(errors.NotFound, match="no such container"):
            client.call("fail", {"id": "x"})
        stream_id = client.send("stream", {"id": "c"})
        note = client.next_message()
        assert note is not None
        assert note["params"] == {"request": stream_id, "data": "aGk="}
        resp = client.next_message()
        assert resp == {"jsonrpc": "2.0", "id": stream_id, "result": {"dropped_bytes": 0}}
        client.send("close")
        with pytest.raises(Disconnected, match="closed"):
            client.next_message()
    assert [r["method"] for r in seen] == ["slow", "echo", "fail", "stream", "close"]
    assert all(r["jsonrpc"] == "2.0" for r in seen)


def test_client_wakeup_fd(peer: tuple[str, list[Any]]) -> None:
    path, _ = peer
    r, w = os.pipe()
    try:
        with Client(path) as client:
            os.write(w, b"\x02")
            assert client.next_message(r) is None
            client.send("close")
    finally:
        os.close(r)
        os.close(w)


def test_client_cannot_connect(tmp_path: Any) -> None:
    with pytest.raises(errors.Unavailable, match=r"cannot connect to tugd at .*is tugd running"):
        Client(str(tmp_path / "nothing.sock"))


def test_cli_modules_have_no_import_circles_and_use_no_private_names_issue13() -> None:
    """The CLI's modules import one another by public names only (none reaches into main), and
    their imports, at any depth in a module, form no circle (attach <-> main did, issue 13)."""
    import ast
    import pathlib

    import supervisor.cli

    package = pathlib.Path(supervisor.cli.__file__).parent
    edges: dict[str, set[str]] = {}
    for path in sorted(package.glob("*.py")):
        edges[path.stem] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.ImportFrom) or node.level != 1:
                continue
            targets = [node.module] if node.module else [a.name for a in node.names]
            for target in targets:
                edges[path.stem].add(target)
            private = [a.name for a in node.names if a.name.startswith("_")]
            assert not private, (path.name, node.module, private)
            assert node.module != "main", path.name
    assert len(edges) > 10

    def visit(module: str, trail: tuple[str, ...]) -> None:
        assert module not in trail, " -> ".join((*trail, module))
        for target in edges.get(module, ()):
            visit(target, (*trail, module))

    for module in edges:
        visit(module, ())


def test_moved_public_names_still_resolve_through_main() -> None:
    """Callers of ``cli.main.X`` for the public helpers that moved to the command modules still
    find them (looked up on use), and nothing else is invented."""
    for name, module in cli._MOVED.items():
        assert getattr(cli, name) is getattr(__import__(f"supervisor.cli.{module}", fromlist=["_"]), name)
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        _ = cli.nonexistent


def test_decode_runs_agree_with_the_record_by_record_reading_on_random_logs() -> None:
    """Random logs (two streams, F and P, timestamps shared by runs, lines split at any byte)
    decode the same a run at a time as record by record, whatever the pieces they come in."""
    import random

    rng = random.Random(14)
    for _ in range(200):
        lines = []
        for i in range(rng.randint(1, 60)):
            ts = b"2026-01-02T03:04:05.%09dZ" % (i // rng.randint(1, 5))
            stream = rng.choice((b"stdout", b"stderr"))
            tag = rng.choice((b"F", b"F", b"P"))
            content = bytes(rng.choice(b"ab \t\r\x00") for _ in range(rng.randint(0, 9)))
            lines.append(b"%s %s %s %s\n" % (ts, stream, tag, content))
        data = b"".join(lines)
        expected = _merged(crilog.LogDecoder()._slow(data))
        decoder = crilog.LogDecoder()
        cut = rng.randint(0, len(data))
        got = decoder.feed(data[:cut]) + decoder.feed(data[cut:])
        assert _merged(got) == expected
