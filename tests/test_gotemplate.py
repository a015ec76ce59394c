"""Unit tests of the ``--format`` Go-template evaluator (supervisor/cli/gotemplate.py) and of
docker's list filters (tugwire/dockerfilters.py). The expected outputs are Go's (text/template
and docker's formatter), as docker's docs show them."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor.cli.gotemplate import Template, TemplateError, go_json, go_str, render_all, tabwrite
from tugwire import dockerfilters
from tugwire.errors import InvalidArgument

INSPECT: dict[str, Any] = {
    "Id": "abc",
    "Name": "/web",
    "Args": ["-c", "sleep 1"],
    "State": {"Status": "exited", "ExitCode": 3, "Running": False, "Health": None},
    "Config": {"Labels": {"b": "2", "a": "1"}, "Env": ["A=1", "B=2"], "Cmd": None},
    "NetworkSettings": {
        "Networks": {"bridge": {"IPAddress": "10.0.0.2"}},
        "Ports": {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}]},
    },
    "HTML": "<a&b>",
}


def render(src: str, dot: Any = None) -> str:
    return Template(src).render(INSPECT if dot is None else dot)


@pytest.mark.parametrize(
    ("src", "want"),
    [
        ("{{.State.Status}}", "exited"),
        ("{{.State.ExitCode}}", "3"),
        ("{{.State.Running}}", "false"),
        ("{{.State.Health}}", "<nil>"),
        ("{{.Config.Cmd}}", "<nil>"),
        ("{{.Nope}}", "<no value>"),
        ("{{.Config.Labels}}", "map[a:1 b:2]"),
        ("{{.Args}}", "[-c sleep 1]"),
        ("{{json .State}}", '{"Status":"exited","ExitCode":3,"Running":false,"Health":null}'),
        ("{{json .HTML}}", '"\\u003ca\\u0026b\\u003e"'),
        ("{{.Name | json}}", '"/web"'),
        ('{{join .Args ", "}}', "-c, sleep 1"),
        ("{{lower .State.Status | upper}}", "EXITED"),
        ('{{title "hello docker world"}}', "Hello Docker World"),
        ('{{split "a:b:c" ":"}}', "[a b c]"),
        ("{{truncate .Name 2}}", "/w"),
        ("{{pad .Name 1 2}}|", " /web  |"),
        ("{{println .Name}}", "/web\n"),
        ('{{index .Config.Labels "a"}}', "1"),
        ('{{index .Config.Labels "zz"}}', ""),  # a map of strings: Go's zero value
        ("{{.Config.Labels.zz}}", ""),
        ('{{index .State "Nope"}}', "<no value>"),
        ("{{json .Config.Labels}}", '{"a":"1","b":"2"}'),  # a map's keys sorted, as Go's
        ("{{len .Config.Env}}", "2"),
        ('{{if eq .State.Status "exited"}}gone{{else}}up{{end}}', "gone"),
        ("{{if ne .State.ExitCode 0}}bad{{end}}", "bad"),
        ("{{if .State.Running}}r{{else if eq .State.ExitCode 3}}three{{else}}x{{end}}", "three"),
        ("{{if not .State.Running}}down{{end}}", "down"),
        ("{{if and .Name .State.Running}}y{{else}}n{{end}}", "n"),
        ("{{range .Config.Env}}[{{.}}]{{end}}", "[A=1][B=2]"),
        ("{{range $k, $v := .Config.Labels}}{{$k}}={{$v}} {{end}}", "a=1 b=2 "),
        ("{{range $i, $e := .Args}}{{$i}}:{{$e}};{{end}}", "0:-c;1:sleep 1;"),
        ("{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", "10.0.0.2"),
        (
            "{{range $p, $conf := .NetworkSettings.Ports}}{{$p}} -> {{(index $conf 0).HostPort}}{{end}}",
            "80/tcp -> 8080",
        ),
        ("{{range .Config.Cmd}}x{{else}}none{{end}}", "none"),
        ("{{with .State}}{{.Status}}{{end}}", "exited"),
        ("{{$.Name}}", "/web"),
        ("{{$n := .Name}}{{$n}}", "/web"),
        ('{{printf "%s:%d" .Name .State.ExitCode}}', "/web:3"),
        ("a {{- .Name -}} b", "a/webb"),
        ("{{/* a comment */}}x", "x"),
        ('{{"quoted\\tstring"}}', "quoted\tstring"),
        ("{{`raw`}}", "raw"),
    ],
)
def test_render(src: str, want: str) -> None:
    assert render(src) == want


@pytest.mark.parametrize(
    ("src", "message"),
    [
        ("{{.Name", "unclosed action"),
        ("{{nosuch .Name}}", 'function "nosuch" not defined'),
        ("{{if .Name}}x", "unexpected EOF"),
        ("{{end}}", "unexpected {{end}}"),
        ("{{else}}", "unexpected {{else}}"),
        ('{{template "x"}}', "not supported"),
        ('{{define "x"}}{{end}}', "not supported"),
        ("{{.Name | }}", "missing command after |"),
        ("{{(index .Args 0}}", "unclosed left paren"),
        ("{{$nope}}", "undefined variable"),
        ('{{"s" 1}}', "can't give argument to non-function"),
        ("{{.State.Health.Status}}", "nil pointer evaluating .State.Health.Status"),
        ("{{index .Args 5}}", "index out of range"),
        ("{{range .Name}}{{end}}", "range can't iterate over /web"),
    ],
)
def test_errors_are_clear(src: str, message: str) -> None:
    with pytest.raises(TemplateError) as info:
        Template(src).render(INSPECT)
    assert message in str(info.value)


def test_method_fields_take_arguments() -> None:
    row = {"Names": "web", "Label": lambda key: {"tier": "front"}.get(key, "")}
    assert render('{{.Label "tier"}}/{{.Label "nope"}}', row) == "front/"
    assert render("{{json .}}", row) == '{"Names":"web"}'  # methods are not data


def test_table_header_and_alignment() -> None:
    rows = [{"ID": "abc", "Names": "web"}, {"ID": "abcdefabcdef0", "Names": "db"}]
    out = render_all("table {{.ID}}\\t{{.Names}}", rows, {"ID": "CONTAINER ID", "Names": "NAMES"})
    assert out.splitlines() == ["CONTAINER ID    NAMES", "abc             web", "abcdefabcdef0   db"]
    # without the table prefix: rows only, ``\t`` a real tab
    assert render_all("{{.ID}}\\t{{.Names}}", rows) == "abc\tweb\nabcdefabcdef0\tdb\n"
    # a field the header does not know prints empty; functions apply to header names
    assert render_all("table {{.Names | lower}}\\t{{.Nope}}", rows[:1], {"Names": "NAMES"}) == (
        "names     \nweb       <no value>\n"
    )


def test_tabwriter_is_gos() -> None:
    # minwidth 10, padding 3; the last cell of a line is not padded; columns are per block
    assert tabwrite("a\tb\tc\n") == "a         b         c\n"
    assert tabwrite("aaaaaaaaaaaa\tb\nc\td\n") == "aaaaaaaaaaaa   b\nc              d\n"
    assert tabwrite("x\ty\nno tabs\nx\ty\n") == "x         y\nno tabs\nx         y\n"


@given(st.text(alphabet=st.characters(exclude_characters="{}", exclude_categories=["Cs"])))
def test_plain_text_is_itself(text: str) -> None:
    assert Template(text).render({}) == text


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
        max_leaves=10,
    )
)
def test_json_round_trips(value: Any) -> None:
    import json

    assert json.loads(Template("{{json .}}").render(value)) == value
    assert isinstance(go_str(value), str)
    assert "<" not in go_json(value) and ">" not in go_json(value)


# ------------------------------------------------------------------------------- filters


def _c(name: str, **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "f" * 64 if name == "web" else "a" * 64,
        "name": name,
        "image": "busybox:latest",
        "image_id": "sha256:" + "b" * 64,
        "state": "running",
        "exit_code": None,
        "created_at": "2026-01-01T00:00:00.000000000Z",
        "labels": {},
        "health": None,
        "restarting": False,
        "network_names": ["bridge"],
        "network_ids": ["c" * 64],
    }
    base.update(kw)
    return base


def _match(c: dict[str, Any], **filters: list[str]) -> bool:
    checked = dockerfilters.check(filters, dockerfilters.CONTAINER_KEYS)
    times = {"old": "2025-01-01T00:00:00.000000000Z", "new": "2027-01-01T00:00:00.000000000Z"}
    return dockerfilters.match_container(c, checked, times.get)


def test_container_filters_follow_dockers_rules() -> None:
    web = _c("web", labels={"tier": "front", "x": ""})
    assert _match(web, name=["we"]) and _match(web, name=["^/web$"]) and not _match(web, name=["^db"])
    assert _match(web, name=["db", "web"])  # one key's values: OR
    assert not _match(web, name=["web"], status=["exited"])  # different keys: AND
    assert _match(web, label=["tier"]) and _match(web, label=["tier=front", "x"])
    assert not _match(web, label=["tier=front", "nope"])  # labels: all must match, as docker's
    assert _match(web, id=["fff"]) and not _match(web, id=["aaa"])
    assert _match(web, ancestor=["busybox"]) and _match(web, ancestor=["busybox:latest"])
    assert _match(web, ancestor=["bbbb"]) and not _match(web, ancestor=["alpine"])
    assert _match(web, network=["bridge"]) and _match(web, network=["ccc"]) and not _match(web, network=["n"])
    assert _match(web, health=["none"]) and _match(_c("h", health="healthy"), health=["healthy"])
    assert _match(web, since=["old"]) and _match(web, before=["new"]) and not _match(web, before=["old"])
    gone = _c("gone", state="exited", exit_code=3)
    assert _match(gone, exited=["3"]) and not _match(gone, exited=["0"]) and not _match(web, exited=["0"])
    assert _match(gone, status=["exited"]) and _match(_c("u", state="unknown"), status=["dead"])
    assert _match(_c("r", state="exited", restarting=True), status=["restarting"])


@pytest.mark.parametrize(
    "filters",
    [{"nosuch": ["1"]}, {"status": ["sleeping"]}, {"name": ["("]}, {"exited": ["x"]}, {"health": ["ok"]}],
)
def test_bad_filters_are_clear_errors(filters: dict[str, list[str]]) -> None:
    with pytest.raises(InvalidArgument):
        dockerfilters.check(filters, dockerfilters.CONTAINER_KEYS)


def test_before_an_unknown_container_is_an_error() -> None:
    with pytest.raises(InvalidArgument, match="no such container"):
        _match(_c("web"), before=["ghost"])


def test_cli_filter_options() -> None:
    assert dockerfilters.parse_cli(["status=exited", "label=a=b", "status=created"]) == {
        "status": ["exited", "created"],
        "label": ["a=b"],
    }
    with pytest.raises(InvalidArgument, match="expected name=value"):
        dockerfilters.parse_cli(["status"])


def test_image_filters() -> None:
    img = {
        "id": "sha256:" + "e" * 64,
        "repo_tags": ["busybox:latest", "me/box:1"],
        "created": "2026-01-01T00:00:00Z",
        "config": {"Labels": {"v": "1"}},
    }
    times = {"old": "2025-01-01T00:00:00Z", "new": "2027-01-01T00:00:00Z"}.get

    def keep(**filters: list[str]) -> Any:
        return dockerfilters.filter_image(img, dockerfilters.check_images(filters), times)

    assert keep(reference=["busy*"])["repo_tags"] == ["busybox:latest"]  # only the names that match
    assert keep(reference=["me/box"])["repo_tags"] == ["me/box:1"]
    assert keep(reference=["alpine"]) is None
    assert keep(dangling=["false"]) is img and keep(dangling=["true"]) is None
    assert keep(label=["v=1"]) is img and keep(label=["v=2"]) is None
    assert keep(since=["old"]) is img and keep(before=["old"]) is None
    with pytest.raises(InvalidArgument, match="invalid filter 'nosuch'"):
        keep(nosuch=["1"])
    with pytest.raises(InvalidArgument, match="dangling"):
        keep(dangling=["maybe"])
    with pytest.raises(InvalidArgument, match="no such image"):
        keep(before=["ghost"])


def test_network_filters() -> None:
    net = {"Name": "front", "Id": "abc123", "Driver": "bridge", "Labels": {"team": "a"}, "Containers": {}}

    def ok(**filters: list[str]) -> bool:
        return dockerfilters.match_network(net, dockerfilters.check(filters, dockerfilters.NETWORK_KEYS))

    assert ok(name=["ron"]) and ok(id=["abc"]) and ok(driver=["bridge"]) and ok(label=["team=a"])
    assert ok(dangling=["true"]) and ok(type=["custom"]) and ok(name=["x", "fr"])
    assert not ok(name=["back"]) and not ok(driver=["host"]) and not ok(type=["builtin"])
    assert not ok(name=["front"], driver=["host"])
    with pytest.raises(InvalidArgument):
        ok(nosuch=["1"])
