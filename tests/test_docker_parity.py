"""``tug`` as docker users type it (issue 20): each command through ``tug`` and through the real
docker CLI against ``tug-docker-api``, on the same containers of one real tugd, compared line by
line (formats, filters, labels, inspect templates)."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from .conftest import needs_root, needs_runc
from .docker_helpers import DockerApi, dapi, make_docker_api

pytestmark = [pytest.mark.integration, needs_root, needs_runc]

__all__ = ["dapi", "make_docker_api"]

# What moves between two runs of the same command a moment apart: ``Up 2 seconds``, ``3 seconds ago``.
_AGE = re.compile(r"(Less than a second|About a minute|About an hour|\d+ (second|minute|hour)s?)")


def tug(dapi: DockerApi, *args: str, check: bool = True) -> tuple[int, str, str]:
    out = dapi.daemon.tug(*args, check=check)
    return out.returncode, out.stdout.decode(), out.stderr.decode()


def same(dapi: DockerApi, *args: str, ages: bool = False) -> list[str]:
    """Run ``args`` through both CLIs; their outputs must be equal line by line."""
    got = tug(dapi, *args)[1]
    want = dapi.docker(*args).stdout
    if ages:
        got, want = _AGE.sub("N", got), _AGE.sub("N", want)
    assert got.splitlines() == want.splitlines(), f"{args}:\ntug:\n{got}\ndocker:\n{want}"
    return got.splitlines()


@pytest.fixture
def three(dapi: DockerApi, tmp_path: object) -> DockerApi:
    """web (running, labels), db (created, a label file), done (exited 3)."""
    import os

    label_file = os.path.join(str(tmp_path), "labels")
    with open(label_file, "w") as f:
        f.write("# a comment\ntier=back\nowner=ops\n")
    dapi.daemon.tug(
        "run", "-d", "--name", "web", "--label", "tier=front", "-l", "a=1", "busybox", "sleep", "300"
    )
    dapi.daemon.tug(
        "create", "--name", "db", "--label-file", label_file, "--label", "owner=dev", "busybox", "true"
    )
    assert tug(dapi, "run", "--name", "done", "busybox", "sh", "-c", "exit 3", check=False)[0] == 3
    return dapi


def test_labels_through_both_doors(three: DockerApi, tmp_path: Any) -> None:
    d = three
    # the image's labels, under the user's (as docker merges them)
    (tmp_path / "Dockerfile").write_text("FROM busybox\nLABEL tier=img only=img\n")
    d.daemon.tug("build", "-t", "labelled", str(tmp_path))
    d.daemon.tug("create", "--name", "merged", "--label", "tier=mine", "labelled", "true")
    assert d.inspect("merged")["Config"]["Labels"] == {"only": "img", "tier": "mine"}
    same(d, "ps", "-a", "-f", "label=only=img", "--format", "{{.Names}} {{.Labels}}")
    d.daemon.tug("rm", "merged")
    assert d.inspect("db")["Config"]["Labels"] == {"tier": "back", "owner": "dev"}  # --label wins
    assert d.daemon.call("container.inspect", {"id": "web"})["labels"] == {"tier": "front", "a": "1"}
    # created through the Docker API: kept too, listed by tug
    d.docker("create", "--name", "api", "--label", "from=docker", "busybox", "true")
    assert (
        tug(d, "ps", "-a", "-f", "label=from", "--format", "{{.Names}} {{.Labels}}")[1] == "api from=docker\n"
    )
    d.docker("rm", "api")
    bad = tug(d, "run", "--label", "=x", "busybox", "true", check=False)
    assert bad[0] != 0 and "invalid label" in bad[2]


@pytest.mark.parametrize(
    "fmt",
    [
        "{{.ID}}\\t{{.Names}}",
        "{{.Names}} {{.State}} {{.Labels}}",
        '{{.Names}}: {{.Label "tier"}}',
        "table {{.ID}}\\t{{.Image}}\\t{{.Command}}\\t{{.Names}}",
        "table {{.Names}}\\t{{.Labels}}\\t{{.State}}",
        "{{json .Names}} {{.Names | upper}} {{lower .Image}}",
        "{{.Image}} {{.Networks}} {{.Mounts}} {{.Ports}}",
        "{{.CreatedAt}}",
        "{{.Names}} {{.Status}} {{.RunningFor}}",
        '{{if eq .State "running"}}{{.Names}} up{{else}}{{.Names}} down{{end}}',
        "{{json .}}",
    ],
)
def test_ps_formats(three: DockerApi, fmt: str) -> None:
    same(three, "ps", "-a", "--format", fmt, ages=True)


@pytest.mark.parametrize(
    "args",
    [
        ["-a", "-f", "status=exited"],
        ["-a", "-f", "status=created", "-f", "status=exited"],
        ["-a", "-f", "label=tier"],
        ["-a", "-f", "label=tier=front"],
        ["-a", "-f", "label=tier", "-f", "label=owner"],
        ["-a", "-f", "name=we"],
        ["-a", "-f", "name=^/d"],
        ["-a", "-f", "exited=3"],
        ["-a", "-f", "ancestor=busybox"],
        ["-a", "-f", "id=0"],
        ["-a", "-f", "health=none", "-f", "status=running"],
        ["-a", "-f", "before=done"],
        ["-a", "-f", "since=web"],
        ["-n", "2"],
        ["-l"],
        [],
    ],
)
def test_ps_filters(three: DockerApi, args: list[str]) -> None:
    same(three, "ps", *args, "--format", "{{.Names}}")
    same(three, "ps", "-q", "--no-trunc", *args)


def test_ps_quiet_feeds_rm(three: DockerApi) -> None:
    ids = tug(three, "ps", "-aq", "-f", "status=exited")[1].split()
    assert len(ids) == 1
    # rm of several names reports each failure and goes on, exit 1 at the end
    code, out, err = tug(three, "rm", "nosuch", ids[0], "alsonot", check=False)
    assert code == 1 and out.split() == [ids[0]]
    assert "nosuch" in err and "alsonot" in err
    assert "done" not in tug(three, "ps", "-a", "--format", "{{.Names}}")[1].split()


@pytest.mark.parametrize(
    "fmt",
    [
        "{{.State.ExitCode}}",
        "{{.State.Status}} {{.Name}} {{.State.Running}}",
        "{{json .Config.Labels}}",
        "{{range $k, $v := .Config.Labels}}{{$k}}={{$v}} {{end}}",
        '{{index .Config.Labels "tier"}}',
        '{{.Config.Cmd}} {{join .Args ","}} {{.Path}}',
        "{{.HostConfig.AutoRemove}} {{.HostConfig.RestartPolicy.Name}}",
        "{{.Id}} {{.Image}} {{.Config.Image}}",
        "{{.Config.Labels}}",
        "{{json .State}}",
        "{{json .Mounts}} {{json .HostConfig.RestartPolicy}}",
    ],
)
def test_inspect_templates(three: DockerApi, fmt: str) -> None:
    same(three, "inspect", "-f", fmt, "web", "db", "done")


def test_image_and_inspect_of_images(three: DockerApi) -> None:
    same(three, "inspect", "-f", "{{.Id}} {{.RepoTags}} {{.Os}}", "busybox")
    same(three, "inspect", "--type", "image", "-f", "{{json .RepoTags}}", "busybox")


@pytest.mark.parametrize(
    "args",
    [
        ["--format", "{{.Repository}}:{{.Tag}}"],
        ["--format", "table {{.Repository}}\\t{{.Tag}}\\t{{.ID}}\\t{{.Size}}"],
        ["--format", "{{.ID}} {{.Digest}} {{.CreatedSince}} {{.CreatedAt}}"],
        ["-f", "reference=busy*", "--format", "{{.Repository}}"],
        ["-f", "reference=nothing", "--format", "{{.Repository}}"],
        ["-f", "dangling=false", "--format", "{{.Repository}}"],
        ["-f", "dangling=true", "--format", "{{.Repository}}"],
        ["-f", "label=nope", "--format", "{{.Repository}}"],
        ["-q"],
        ["--format", "{{json .}}"],
    ],
)
def test_images(three: DockerApi, args: list[str]) -> None:
    three.docker("tag", "busybox", "busybox:2")  # one repository: docker's CLI orders its tags
    same(three, "images", *args, ages=True)


def test_filter_errors_are_clear(three: DockerApi) -> None:
    for cmd in (["ps", "-f", "nosuch=1"], ["images", "-f", "nosuch=1"]):
        code, _, err = tug(three, *cmd, check=False)
        assert code != 0 and "invalid filter 'nosuch'" in err
        assert "invalid filter 'nosuch'" in three.docker(*cmd, check=False).stderr
    code, _, err = tug(three, "ps", "-f", "status", check=False)
    assert code != 0 and "name=value" in err
    code, _, err = tug(three, "ps", "--format", "{{.Names", check=False)
    assert code != 0 and "template: unclosed action" in err
    code, _, err = tug(three, "inspect", "-f", "{{nosuch .}}", "web", check=False)
    assert code != 0 and 'function "nosuch" not defined' in err


def test_network_ls(make_docker_api: Any) -> None:
    three: DockerApi = make_docker_api(netns=True)  # bridges only in the test's own namespace
    three.daemon.tug("network", "create", "--label", "team=a", "front")
    for args in (
        ["--format", "{{.Name}} {{.Driver}} {{.Scope}} {{.IPv6}} {{.Internal}} {{.Labels}}"],
        ["--format", "table {{.ID}}\\t{{.Name}}\\t{{.Driver}}"],
        ["-f", "name=fr", "--format", "{{.Name}}"],
        ["-f", "driver=bridge", "--format", "{{.Name}}"],
        ["-f", "label=team=a", "--format", "{{.Name}}"],
        ["-f", "dangling=true", "--format", "{{.Name}}"],
        ["-f", "type=custom", "--format", "{{.Name}}"],
        ["-q", "-f", "name=front"],
    ):
        same(three, "network", "ls", *args)
    three.daemon.tug("run", "-d", "--name", "pub", "-p", "18080:80", "-p", "53/udp", "busybox", "sleep", "60")
    lines = same(three, "ps", "--format", "{{.Names}} {{.Ports}} {{.Networks}}")
    assert re.fullmatch(r"pub 0\.0\.0\.0:\d+->53/udp, 0\.0\.0\.0:18080->80/tcp bridge", lines[0]), lines
    same(three, "ps", "-f", "network=bridge", "--format", "{{.Names}}")
    same(three, "ps", "-f", "network=front", "--format", "{{.Names}}")
    three.daemon.tug("rm", "-f", "pub")
    three.daemon.tug("network", "rm", "front")


def test_events(three: DockerApi) -> None:
    since = f"{time.time() - 60:.0f}"
    until = f"{time.time():.9f}"
    for args in (
        ["--format", "{{.Type}} {{.Action}} {{.Actor.Attributes.name}}"],
        ["-f", "label=tier=front", "--format", "{{.Action}} {{.Actor.Attributes.tier}}"],
        ["-f", "container=done", "-f", "event=die", "--format", "{{json .Actor.Attributes}}"],
        ["-f", "type=container", "-f", "event=create", "--format", "{{.Actor.Attributes.name}}"],
        ["-f", "container=web", "--format", "{{json .}}"],
    ):
        same(three, "events", "--since", since, "--until", until, *args)


def test_ps_size(three: DockerApi) -> None:
    three.daemon.tug("exec", "web", "sh", "-c", "head -c 5000 /dev/zero > /five-k")
    lines = same(three, "ps", "-a", "-s", "--format", "{{.Names}} {{.Size}}")
    assert "web 5kB" in lines  # the writable layer: the file written (and nothing else)
    header, *rows = tug(three, "ps", "-s")[1].splitlines()
    assert header.split()[-1] == "SIZE" and rows[0].split()[-1] == "5kB"
