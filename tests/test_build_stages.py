"""Multi-stage builds with ``tug build`` (and ``docker build`` through tug-docker-api) against a
real tugd: RUN steps in real containers, ``COPY --from`` a stage or an image, ``--target``, ARG
before FROM, VOLUME, ONBUILD, HEALTHCHECK and SHELL as docker records them (issue 15)."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from .conftest import needs_root, needs_runc
from .docker_helpers import DockerApi, make_docker_api
from .test_build import assert_no_build_leftovers, build, context, run

__all__ = ["make_docker_api"]  # the fixture, used by name

pytestmark = [pytest.mark.integration, needs_root, needs_runc]

TWO_STAGES = """\
ARG BASE=busybox
ARG GREETING=built
FROM --platform=$BUILDPLATFORM $BASE AS builder
ARG GREETING
RUN mkdir /out && echo "$GREETING in stage one" > /out/artefact && echo junk > /junk
COPY src.txt /out/src.txt

FROM scratch AS final
COPY --from=builder --chown=1000:1000 /out/artefact /artefact
COPY --from=0 /out/src.txt /src.txt
CMD ["/artefact"]
"""


def _layers(d: Any, ref: str) -> list[str]:
    return list(d.call("image.inspect", {"ref": ref})["layers"])


def _files_of(d: Any, ref: str) -> dict[str, tuple[int, int, bytes]]:
    """The regular files in an image's layers: path -> (uid, gid, bytes), read from the layer
    blobs in tugd's content store (the image may have no shell to list itself)."""
    import tarfile

    files: dict[str, tuple[int, int, bytes]] = {}
    for digest in d.call("image.inspect", {"ref": ref})["layers"]:
        with tarfile.open(os.path.join(d.root, "blobs", "sha256", digest.split(":")[1]), "r:*") as tf:
            for m in tf.getmembers():
                if m.isfile():
                    data = tf.extractfile(m).read()  # type: ignore[union-attr]
                    files[m.name.removeprefix("./")] = (m.uid, m.gid, data)
    return files


def test_two_stages_the_final_image_has_only_the_copied_artefacts(daemon: Any) -> None:
    ctx = context(daemon, {"Dockerfile": TWO_STAGES, "src.txt": "from the context\n"})
    r = build(daemon, ctx, "-t", "two:1", "--build-arg", "GREETING=hello")
    assert r.returncode == 0
    files = _files_of(daemon, "two:1")
    assert files == {
        "artefact": (1000, 1000, b"hello in stage one\n"),
        "src.txt": (0, 0, b"from the context\n"),
    }
    info = daemon.call("image.inspect", {"ref": "two:1"})
    assert len(info["layers"]) == 2  # scratch and two COPY layers: nothing of stage one
    assert info["config"]["Cmd"] == ["/artefact"]

    # Rebuilt with nothing changed: every step of both stages comes from the cache.
    again = build(daemon, ctx, "-t", "two:2", "--build-arg", "GREETING=hello")
    # (RUN and COPY of stage one, the two COPY and CMD of stage two)
    assert (again.stdout + again.stderr).decode().count("Using cache") == 5
    assert daemon.call("image.inspect", {"ref": "two:2"})["id"] == info["id"]
    # A changed build arg changes stage one's RUN, and so the artefact copied from it.
    other = build(daemon, ctx, "-t", "two:3", "--build-arg", "GREETING=bye")
    assert _files_of(daemon, "two:3")["artefact"][2] == b"bye in stage one\n"
    assert_no_build_leftovers(daemon)
    assert other.returncode == 0


def test_target_stops_at_the_named_stage(daemon: Any) -> None:
    ctx = context(daemon, {"Dockerfile": TWO_STAGES, "src.txt": "x\n"})
    build(daemon, ctx, "-t", "stage-one", "--target", "Builder")
    r = run(daemon, "stage-one", "cat", "/out/artefact", "/junk", "/out/src.txt")
    assert r.stdout == b"built in stage one\njunk\nx\n"
    before = daemon.call("image.list")
    r = build(daemon, ctx, "-t", "nothing", "--target", "nosuch", check=False)
    assert r.returncode == 1
    assert "failed to reach build target nosuch in Dockerfile" in r.stderr.decode()
    assert daemon.call("image.list") == before
    assert_no_build_leftovers(daemon)


def test_copy_from_an_image_and_from_a_stage_built_on_a_stage(daemon: Any) -> None:
    dockerfile = """\
FROM busybox AS base
RUN echo base > /base.txt && rm /bin/vi && mkdir -p /opt/real && echo linked > /opt/real/f
RUN ln -s /opt/real /abs
FROM base AS child
RUN echo child > /child.txt
FROM busybox
COPY --from=busybox /bin/busybox /copied/busybox
COPY --from=child /base.txt /child.txt /from-child/
COPY --from=base /abs/f /linked.txt
RUN ls /from-child && test -x /copied/busybox && /copied/busybox echo ok
RUN if [ -e /bin/vi ]; then echo vi here; fi
"""
    ctx = context(daemon, {"Dockerfile": dockerfile})
    r = build(daemon, ctx, "-t", "copied")
    out = r.stdout.decode() + r.stderr.decode()
    assert "base.txt\nchild.txt\n" in out and "ok\n" in out and "vi here\n" in out
    r = run(daemon, "copied", "sh", "-c", "cat /from-child/* /linked.txt; ls /copied")
    # /abs -> /opt/real is followed inside stage one's root, not the host's
    assert r.stdout == b"base\nchild\nlinked\nbusybox\n"
    # A file the earlier stage deleted is not there to copy (the stage's whiteout is seen).
    bad = context(
        daemon,
        {"Dockerfile": "FROM busybox AS a\nRUN rm /bin/vi\nFROM busybox\nCOPY --from=a /bin/vi /\n"},
        "bad",
    )
    before = daemon.call("image.list")
    r = build(daemon, bad, "-t", "bad", check=False)
    assert r.returncode == 1 and "file not found" in r.stderr.decode()
    assert daemon.call("image.list") == before
    assert_no_build_leftovers(daemon)


@pytest.mark.parametrize(
    ("dockerfile", "message"),
    [
        ("FROM busybox\nCOPY --from=Not/A:Ref:x /a /a\n", "COPY --from=Not/A:Ref:x"),
        ("FROM busybox AS a\nCOPY --from=a /bin/sh /x\n", "the stage a is not built before this one"),
        (
            "FROM busybox\nCOPY --from=later /bin/sh /x\nFROM busybox AS later\n",
            "is not built before this one",
        ),
        ("FROM busybox\nCOPY --from=0 /bin/sh /x\n", "COPY --from=0: stage 0 is not built before this one"),
        ("FROM busybox\nCOPY --from=127.0.0.1:1/nothing /a /a\n", "COPY --from=127.0.0.1:1/nothing: image"),
        ("FROM --platform=linux/s390x busybox\n", "FROM --platform=linux/s390x: only the host's platform"),
        ("FROM --platform=a/b/c/d busybox\n", "FROM --platform=a/b/c/d: invalid platform"),
    ],
)
def test_bad_copy_from_is_a_clear_error_and_leaves_nothing(
    daemon: Any, dockerfile: str, message: str
) -> None:
    ctx = context(daemon, {"Dockerfile": dockerfile})
    before = daemon.call("image.list")
    r = build(daemon, ctx, "-t", "bad", check=False)
    assert r.returncode == 1
    assert message in r.stderr.decode(), r.stderr
    assert daemon.call("image.list") == before
    assert_no_build_leftovers(daemon)


def test_arg_before_from_volume_onbuild_healthcheck_and_shell(daemon: Any) -> None:
    parent = """\
ARG TAG=latest
FROM busybox:${TAG}
ARG TAG
ENV SEEN_TAG=$TAG
VOLUME /data /logs
VOLUME ["/cache"]
ONBUILD COPY marker.txt /onbuild/
ONBUILD RUN echo "trigger ran" > /onbuild/ran
HEALTHCHECK --interval=5s --timeout=2s --start-period=1s --retries=4 CMD ["test", "-f", "/x"]
SHELL ["/bin/sh", "-xc"]
RUN echo via-shell
CMD echo shell-form
"""
    ctx = context(daemon, {"Dockerfile": parent}, "parent")
    r = build(daemon, ctx, "-t", "parent")
    assert b"+ echo via-shell\n" in r.stderr
    config = daemon.call("image.inspect", {"ref": "parent"})["config"]
    assert config["Env"][-1] == "SEEN_TAG=latest"
    assert config["Volumes"] == {"/data": {}, "/logs": {}, "/cache": {}}
    assert config["OnBuild"] == ["COPY marker.txt /onbuild/", 'RUN echo "trigger ran" > /onbuild/ran']
    assert config["Healthcheck"] == {
        "Test": ["CMD", "test", "-f", "/x"],
        "Interval": 5 * 10**9,
        "Timeout": 2 * 10**9,
        "StartPeriod": 10**9,
        "Retries": 4,
    }
    assert config["Shell"] == ["/bin/sh", "-xc"]
    assert config["Cmd"] == ["/bin/sh", "-xc", "echo shell-form"]
    # The parent's triggers run when it is used as a base, and are not inherited.
    child = context(daemon, {"Dockerfile": "FROM parent\nHEALTHCHECK NONE\n", "marker.txt": "m\n"}, "child")
    r = build(daemon, child, "-t", "child")
    assert "Executing 2 build triggers" in r.stdout.decode() + r.stderr.decode()
    config = daemon.call("image.inspect", {"ref": "child"})["config"]
    assert not config.get("OnBuild")
    assert config["Healthcheck"] == {"Test": ["NONE"]}
    r = run(daemon, "child", "cat", "/onbuild/marker.txt", "/onbuild/ran")
    assert r.stdout == b"m\ntrigger ran\n"
    assert_no_build_leftovers(daemon)


def test_docker_build_target_through_the_front_door(make_docker_api: Any) -> None:
    api: DockerApi = make_docker_api()
    ctx = context(api.daemon, {"Dockerfile": TWO_STAGES, "src.txt": "ctx\n"})
    out = api.docker("build", "--target", "builder", "-t", "one:1", ctx, timeout=180)
    assert "Successfully tagged one:1" in out.stdout
    assert api.docker("run", "--rm", "one:1", "cat", "/out/artefact").stdout == "built in stage one\n"
    out = api.docker("build", "-q", "-t", "two:1", ctx, timeout=180)
    inspect = json.loads(api.docker("image", "inspect", "two:1").stdout)[0]
    assert inspect["Config"]["Cmd"] == ["/artefact"]
    assert len(inspect["RootFS"]["Layers"]) == 2
    bad = api.docker("build", "--target", "nosuch", ctx, check=False, timeout=180)
    assert bad.returncode != 0 and "failed to reach build target nosuch" in bad.stderr
    # docker image inspect shows what VOLUME, ONBUILD, HEALTHCHECK and SHELL recorded.
    meta = context(
        api.daemon,
        {
            "Dockerfile": 'FROM busybox\nVOLUME /data\nONBUILD RUN true\nSHELL ["/bin/sh", "-ec"]\n'
            "HEALTHCHECK --interval=3s CMD true\n"
        },
        "meta",
    )
    api.docker("build", "-q", "-t", "meta:1", meta, timeout=180)
    config = json.loads(api.docker("image", "inspect", "meta:1").stdout)[0]["Config"]
    assert (config["Volumes"], config["OnBuild"], config["Shell"]) == (
        {"/data": {}},
        ["RUN true"],
        ["/bin/sh", "-ec"],
    )
    assert config["Healthcheck"] == {"Test": ["CMD-SHELL", "true"], "Interval": 3 * 10**9}
