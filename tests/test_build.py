"""``tug build`` against a real tugd: RUN steps in real containers (shim, runc, overlay), COPY
and ADD from a context, the cache, and nothing left behind by a build that fails."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tarfile
from typing import Any

import pytest

from .conftest import TUG, Daemon, needs_root, needs_runc, ps_json
from .test_registry import Registry, needs_registry, open_registry
from .waiting import wait_events, wait_until

__all__ = ["open_registry"]  # the fixture, used by name

pytestmark = [pytest.mark.integration, needs_root, needs_runc]


def write(directory: str, files: dict[str, str]) -> str:
    for rel, text in files.items():
        path = os.path.join(directory, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    return directory


def context(d: Any, files: dict[str, str], name: str = "ctx") -> str:
    path = os.path.join(d.base, name)
    os.makedirs(path, exist_ok=True)
    return write(path, files)


def build(d: Daemon, ctx: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    return d.tug("build", *args, ctx, check=check, timeout=120)


def image_id(d: Any, ref: str) -> str:
    return str(d.call("image.inspect", {"ref": ref})["id"])


def run(d: Daemon, *args: str) -> subprocess.CompletedProcess[bytes]:
    return d.tug("run", "--rm", *args, check=False)


def assert_no_build_leftovers(d: Any) -> None:
    """No build container (store, bundle, shim dir, runc state), no build work dir. A `run --rm`
    of the test's answers once the row is gone; its bundle and mount go in the removal's second
    half, which `system.info` counts as `removing`: waited for first."""
    assert ps_json(d) == []

    def settled() -> bool:
        info = json.loads(d.tug("system", "info", "--format", "json").stdout)
        return bool(info["containers"].get("removing", 0) == 0)

    wait_until(settled, what="the removals' second halves to finish")
    for sub in ("containers", "builds"):
        path = os.path.join(d.root, sub)
        assert not os.path.isdir(path) or os.listdir(path) == [], (sub, os.listdir(path))
    for sub in ("shims", "runc"):
        path = os.path.join(d.state, sub)
        assert not os.path.isdir(path) or os.listdir(path) == [], (sub, os.listdir(path))
    with open("/proc/self/mountinfo") as f:
        assert [line for line in f if d.base in line] == []


MULTI_STEP = """\
# A multi-step build
FROM busybox
ARG GREETING=hello
ENV APP_HOME=/srv/app \\
    MODE="two words"
LABEL org.example.kind=test
RUN echo "$GREETING from RUN" > /greeting && rm /bin/ls && mkdir -p /var/empty
COPY *.txt conf/ $APP_HOME/
WORKDIR $APP_HOME
USER tug
EXPOSE 8080 53/udp
STOPSIGNAL SIGQUIT
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["cat /greeting; pwd; id -u; echo $MODE; ls -a"]
"""


def test_multi_step_build_runs_as_its_config_says(make_daemon: Any, backend: str) -> None:
    d = make_daemon(backend)
    ctx = context(
        d,
        {
            "Dockerfile": MULTI_STEP,
            "a.txt": "A\n",
            "b.txt": "B\n",
            "secret.txt": "never copied\n",
            "conf/app.conf": "conf\n",
            "conf/debug.log": "excluded\n",
            ".dockerignore": "secret.txt\n**/*.log\n",
        },
    )
    r = build(d, ctx, "-t", "demo:1")
    out = r.stdout.decode()
    assert "Step 1/12 : FROM busybox" in out
    assert "Step 5/12 : RUN" in out
    assert "Successfully tagged demo:1" in out
    assert "Using cache" not in out
    assert_no_build_leftovers(d)

    r = run(d, "demo:1")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().splitlines()
    # CMD through the ENTRYPOINT; RUN's file; WORKDIR; USER (tug is 1000); ENV; COPY's glob
    # with .dockerignore applied and a directory's contents copied.
    assert lines == [
        "hello from RUN",
        "/srv/app",
        "1000",
        "two words",
        ".",
        "..",
        "a.txt",
        "app.conf",
        "b.txt",
    ]
    # rm of a base file in RUN: a whiteout, so the file is absent in a container of the image.
    r = run(d, "--entrypoint", "", "demo:1", "sh", "-c", "test -e /bin/ls || echo gone; test -d /var/empty")
    assert (r.returncode, r.stdout) == (0, b"gone\n")

    info = d.call("image.inspect", {"ref": "demo:1"})
    config = info["config"]
    assert config["Entrypoint"] == ["/bin/sh", "-c"]
    assert config["WorkingDir"] == "/srv/app"
    assert config["User"] == "tug"
    assert "APP_HOME=/srv/app" in config["Env"]
    assert "GREETING=hello" not in config["Env"]  # an ARG is not kept in the image
    assert config["ExposedPorts"] == {"8080/tcp": {}, "53/udp": {}}
    assert config["StopSignal"] == "SIGQUIT"
    assert config["Labels"] == {"org.example.kind": "test"}
    base_layers = len(d.call("image.inspect", {"ref": "busybox"})["layers"])
    assert len(info["layers"]) == base_layers + 2  # RUN and COPY; the rest are config only
    # History as docker records it: one entry per step after FROM (ARG has none), empty_layer
    # for the steps that changed only the config.
    history = info["history"][len(d.call("image.inspect", {"ref": "busybox"})["history"]) :]
    assert [(h["created_by"].split()[0], h.get("empty_layer", False)) for h in history] == [
        ("ENV", True),
        ("LABEL", True),
        ("RUN", False),
        ("COPY", False),
        ("WORKDIR", True),
        ("USER", True),
        ("EXPOSE", True),
        ("STOPSIGNAL", True),
        ("ENTRYPOINT", True),
        ("CMD", True),
    ]


def test_cached_rebuild_runs_nothing_again(daemon: Any) -> None:
    ctx = context(
        daemon,
        {
            # The RUN steps print their marker in upper case: the step lines show the commands.
            "Dockerfile": "FROM busybox\n"
            "RUN echo first-run | tr a-z A-Z; cat /proc/sys/kernel/random/uuid > /stamp\n"
            "COPY f.txt /f.txt\nRUN echo second-run | tr a-z A-Z; cat /f.txt > /copy\n",
            "f.txt": "one\n",
        },
    )
    first = build(daemon, ctx, "-t", "cached").stdout.decode()
    assert "FIRST-RUN" in first
    assert "SECOND-RUN" in first
    stamp = run(daemon, "cached", "cat", "/stamp").stdout
    built = image_id(daemon, "cached")

    again = build(daemon, ctx, "-t", "cached").stdout.decode()
    # Nothing ran: no RUN output, every step from the cache, and the layers are the same ones.
    assert "FIRST-RUN" not in again
    assert "SECOND-RUN" not in again
    assert again.count("Using cache") == 3
    assert run(daemon, "cached", "cat", "/stamp").stdout == stamp
    assert image_id(daemon, "cached") == built  # the very same image, as docker gives

    # A copied file changes: COPY and everything after it run again, the first RUN does not.
    write(ctx, {"f.txt": "two\n"})
    changed = build(daemon, ctx, "-t", "cached").stdout.decode()
    assert "FIRST-RUN" not in changed
    assert "SECOND-RUN" in changed
    assert changed.count("Using cache") == 1
    assert run(daemon, "cached", "cat", "/stamp", "/copy").stdout == stamp + b"two\n"

    # --no-cache: every RUN again.
    fresh = build(daemon, ctx, "--no-cache", "-t", "cached").stdout.decode()
    assert "Using cache" not in fresh
    assert "FIRST-RUN" in fresh
    assert run(daemon, "cached", "cat", "/stamp").stdout != stamp
    assert_no_build_leftovers(daemon)


def test_build_args(daemon: Any) -> None:
    ctx = context(
        daemon,
        {
            "Dockerfile": "ARG BASE=busybox\nFROM $BASE\nARG WHO=nobody\nARG EMPTY\n"
            'RUN echo "hi ${WHO} [${EMPTY:-unset}]" > /who\nCMD ["cat", "/who"]\n',
        },
    )
    r = build(daemon, ctx, "-t", "args:default")
    assert "hi nobody [unset]" not in r.stdout.decode()  # the RUN wrote it to a file, said nothing
    assert run(daemon, "args:default").stdout == b"hi nobody [unset]\n"
    r = build(daemon, ctx, "-t", "args:set", "--build-arg", "WHO=world", "--build-arg", "EXTRA=1")
    assert "[Warning] One or more build-args ['EXTRA'] were not consumed" in r.stdout.decode()
    assert run(daemon, "args:set").stdout == b"hi world [unset]\n"
    # A different value of a build arg is a different RUN: not taken from the cache.
    assert "Using cache" not in r.stdout.decode().split("RUN")[1]
    info = daemon.call("image.inspect", {"ref": "args:set"})
    assert not any(e.startswith("WHO=") for e in info["config"]["Env"])


def test_failing_run_reports_the_step_and_leaves_nothing(make_daemon: Any, backend: str) -> None:
    daemon = make_daemon(backend)
    ok = context(daemon, {"Dockerfile": 'FROM busybox\nCMD ["echo", "v1"]\n'})
    build(daemon, ok, "-t", "app:latest")
    before = image_id(daemon, "app:latest")
    images_before = daemon.call("image.list")
    ctx = context(
        daemon,
        {"Dockerfile": "FROM busybox\nRUN echo about to fail; echo oops >&2\nRUN touch /x && exit 3\n"},
        "failing",
    )
    r = build(daemon, ctx, "-t", "app:latest", check=False)
    assert r.returncode == 1
    err = r.stderr.decode()
    assert "step 3" in err
    assert "touch /x && exit 3" in err
    assert "returned a non-zero code: 3" in err
    assert b"about to fail\n" in r.stdout
    assert b"oops\n" in r.stderr  # the RUN's stderr streamed as stderr
    # The tag still names the old image; no new image; no container, mount, upper dir, shim.
    assert image_id(daemon, "app:latest") == before
    assert daemon.call("image.list") == images_before
    assert run(daemon, "app").stdout == b"v1\n"
    assert_no_build_leftovers(daemon)


def test_failing_run_error_over_the_api(daemon: Any) -> None:
    from tugwire import errors

    ctx = context(daemon, {"Dockerfile": 'FROM busybox\nRUN ["/bin/false"]\n'})
    with pytest.raises(errors.RuntimeFailed) as info:
        daemon.call("image.build", {"context": ctx, "tag": "nope"})
    assert info.value.details["step"] == 2
    assert info.value.details["exit_code"] == 1
    assert info.value.details["instruction"] == 'RUN ["/bin/false"]'
    with pytest.raises(errors.NotFound):
        daemon.call("image.inspect", {"ref": "nope"})


def test_scratch_with_a_static_binary(daemon: Any) -> None:
    busybox = shutil.which("busybox") or "/bin/busybox"
    ctx = context(
        daemon,
        {
            # No shell in the image: RUN in the exec form, the binary straight from the layer.
            "Dockerfile": 'FROM scratch\nCOPY busybox /bin/\nRUN ["/bin/busybox", "mkdir", "/made-by-run"]\n'
            'ENTRYPOINT ["/bin/busybox"]\n'
        },
    )
    shutil.copy(busybox, os.path.join(ctx, "busybox"))
    os.chmod(os.path.join(ctx, "busybox"), 0o755)
    build(daemon, ctx, "-t", "tiny")
    r = run(daemon, "tiny", "echo", "static and alone")
    assert (r.returncode, r.stdout) == (0, b"static and alone\n")
    assert run(daemon, "tiny", "ls", "/bin").stdout == b"busybox\n"  # nothing but what COPY put
    assert run(daemon, "tiny", "test", "-d", "/made-by-run").returncode == 0
    info = daemon.call("image.inspect", {"ref": "tiny"})
    assert len(info["layers"]) == 2


def test_add_archive_chown_and_chmod(daemon: Any) -> None:
    ctx = context(
        daemon,
        {
            "Dockerfile": "FROM busybox\nADD files.tar.gz /opt/\nCOPY --chown=tug:nogroup own.txt /own.txt\n"
            "COPY --chmod=600 --chown=1000 own.txt /mode.txt\nADD own.txt /plain/\n"
            'CMD ["sh", "-c", "cat /opt/inner/x; stat -c %u:%g /own.txt; '
            'stat -c %a:%u:%g /mode.txt; cat /plain/own.txt"]\n',
            "own.txt": "own\n",
            "inner/x": "from the archive\n",
        },
    )
    with tarfile.open(os.path.join(ctx, "files.tar.gz"), "w:gz") as tf:
        tf.add(os.path.join(ctx, "inner"), arcname="inner")
    shutil.rmtree(os.path.join(ctx, "inner"))
    build(daemon, ctx, "-t", "added")
    r = run(daemon, "added")
    assert r.stdout == b"from the archive\n1000:65534\n600:1000:1000\nown\n"


@pytest.mark.parametrize(
    ("dockerfile", "args", "message"),
    [
        ("FROM busybox\nFROB x\n", (), "Dockerfile line 2: unknown instruction: FROB"),
        (
            "FROM 127.0.0.1:1/nothing\n",  # nothing listens there: the pull fails
            (),
            "image 127.0.0.1:1/nothing not found locally, and pulling it failed",
        ),
        ("FROM busybox\nCOPY missing.txt /\n", (), "file not found in build context"),
        ("FROM busybox\nCOPY *.nothing /\n", (), "no source files were specified"),
        ("FROM busybox\nCOPY ../x /\n", (), "forbidden path outside the build context"),
        ("FROM busybox\nADD http://example.com/x /\n", (), "ADD of a URL"),
        ("FROM busybox\nCOPY Dockerfile Dockerfile /one\n", (), "must be a directory and end with a /"),
        ("FROM busybox\nCOPY --chown=nobodyknows Dockerfile /\n", (), "unable to find user nobodyknows"),
        ("FROM busybox AS a\nFROM busybox AS A\n", (), "duplicate name 'A' of a build stage"),
        ("FROM busybox\nCOPY --from=1 /bin/sh /x\n", (), "stage 1 is not built before this one"),
        ("FROM busybox AS one\n", ("--target", "two"), "failed to reach build target two in Dockerfile"),
        ("FROM busybox\nEXPOSE eighty\n", (), "invalid port"),
        ("FROM busybox\n", ("-t", "Bad Name"), "invalid"),
        ("FROM busybox\n", ("-f", "/nonexistent/Dockerfile"), "no Dockerfile at /nonexistent/Dockerfile"),
    ],
)
def test_bad_input_is_a_clear_error_and_changes_nothing(
    daemon: Any, dockerfile: str, args: tuple[str, ...], message: str
) -> None:
    ctx = context(daemon, {"Dockerfile": dockerfile})
    images = daemon.call("image.list")
    r = build(daemon, ctx, "-t", "bad", *args, check=False)
    assert r.returncode == 1
    assert message in r.stderr.decode()
    assert daemon.call("image.list") == images
    assert_no_build_leftovers(daemon)


def test_missing_context_is_an_error(daemon: Any) -> None:
    r = daemon.tug("build", os.path.join(daemon.base, "nothing-here"), check=False)
    assert r.returncode == 1
    assert "is not a directory" in r.stderr.decode()


def test_client_that_goes_away_cancels_the_build(make_daemon: Any, backend: str) -> None:
    daemon = make_daemon(backend)
    ctx = context(daemon, {"Dockerfile": "FROM busybox\nRUN echo started; sleep 1000\n"})
    proc = subprocess.Popen(
        [TUG, "--socket", daemon.socket, "build", "-t", "cancelled", ctx],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    while (line := proc.stdout.readline()) != b"started\n":
        assert line, "the build ended before its RUN started"
    assert ps_json(daemon) == []  # the RUN container runs, and is no container of tug ps
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    # tugd notices the closed connection, kills and removes the RUN container: wait for it (a
    # bounded wait for tugd's cleanup, which has no event a client can subscribe to).
    left: list[str] = []

    def cleaned() -> bool:
        try:
            assert_no_build_leftovers(daemon)
        except AssertionError as exc:
            left.append(str(exc))
            return False
        return True

    wait_until(cleaned, 30, "tugd to remove the cancelled build's RUN container", describe=lambda: left[-1])
    with pytest.raises(Exception, match="no such image"):
        daemon.call("image.inspect", {"ref": "cancelled"})


@pytest.mark.registry
@needs_registry
def test_from_pulls_an_image_that_is_not_here(make_daemon: Any, open_registry: Registry) -> None:
    d = make_daemon()
    base_ref = f"{open_registry.host}/build/base:1"
    d.tug("image", "tag", "busybox", base_ref)
    d.tug("push", base_ref)
    fresh = make_daemon(image=False)
    ctx = context(fresh, {"Dockerfile": f'FROM {base_ref}\nRUN echo pulled > /p\nCMD ["cat", "/p"]\n'})
    out = build(fresh, ctx, "-t", "on-pulled").stdout.decode()
    assert f"Pulling {base_ref} (not found locally)" in out
    assert run(fresh, "on-pulled").stdout == b"pulled\n"
    assert fresh.call("image.inspect", {"ref": base_ref})["id"] == image_id(d, "busybox")


def test_tugd_killed_mid_build_cleans_up_at_its_next_start(daemon: Any) -> None:
    ctx = context(daemon, {"Dockerfile": "FROM busybox\nRUN echo started; sleep 1000\n"})
    proc = subprocess.Popen(
        [TUG, "--socket", daemon.socket, "build", "-t", "interrupted", ctx],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    assert proc.stdout is not None and proc.stderr is not None
    while (line := proc.stdout.readline()) != b"started\n":
        assert line, "the build ended before its RUN started"
    daemon.kill9()
    assert proc.wait(timeout=30) == 1  # the client sees its daemon go away
    proc.stdout.close()
    proc.stderr.close()
    # The RUN container's shim outlived tugd (as every shim does); the next tugd finds its bundle
    # and shim owned by no container and removes them, and the build's work dir, before READY.
    daemon.start()
    assert_no_build_leftovers(daemon)
    with pytest.raises(Exception, match="no such image"):
        daemon.call("image.inspect", {"ref": "interrupted"})


def test_copy_the_whole_context_with_dockerignore_exceptions(daemon: Any) -> None:
    ctx = context(
        daemon,
        {
            "Dockerfile": "FROM busybox\nCOPY . /ctx/\n",
            ".dockerignore": "*.md\n!KEEP.md\ntmp\n.dockerignore\n",
            "README.md": "ignored\n",
            "KEEP.md": "kept by the ! pattern\n",
            "tmp/junk": "ignored with its directory\n",
            "src/main.c": "int main;\n",
            "src/notes.md": "kept: '*.md' does not cross '/'\n",
        },
    )
    os.symlink("src/main.c", os.path.join(ctx, "link"))
    build(daemon, ctx, "-t", "whole")
    r = run(daemon, "whole", "sh", "-c", "cd /ctx && find . | sort && readlink link")
    assert r.stdout.decode().split() == [
        ".",
        "./Dockerfile",
        "./KEEP.md",
        "./link",
        "./src",
        "./src/main.c",
        "./src/notes.md",
        "src/main.c",
    ]


def test_copy_through_a_symlink_out_of_the_context_is_refused(daemon: Any) -> None:
    outside = os.path.join(daemon.base, "outside")
    os.makedirs(outside)
    write(outside, {"secret": "host file\n"})
    ctx = context(daemon, {"Dockerfile": "FROM busybox\nCOPY escape/secret /\n"})
    os.symlink(outside, os.path.join(ctx, "escape"))
    r = build(daemon, ctx, "-t", "escaped", check=False)
    assert r.returncode == 1
    assert "forbidden path outside the build context: escape/secret" in r.stderr.decode()
    # The link itself is copied as a link, never followed.
    write(ctx, {"Dockerfile": "FROM busybox\nCOPY escape /escape\n"})
    build(daemon, ctx, "-t", "link")
    r = run(daemon, "link", "sh", "-c", "readlink /escape; cat /escape/secret")
    assert r.stdout == f"{outside}\n".encode()
    assert r.returncode == 1


def test_replaced_directory_is_opaque_and_a_run_without_changes_adds_no_layer(daemon: Any) -> None:
    ctx = context(
        daemon,
        {
            "Dockerfile": "FROM busybox\nRUN mkdir -p /a/b && echo x > /a/b/f\n"
            "RUN rm -rf /a && mkdir /a && echo y > /a/g\nRUN ls -R /a\n",
        },
    )
    out = build(daemon, ctx, "-t", "opaque").stdout.decode()
    assert "/a:\ng\n" in out  # the last RUN, on the layers of the two before it
    assert run(daemon, "opaque", "find", "/a").stdout == b"/a\n/a/g\n"
    info = daemon.call("image.inspect", {"ref": "opaque"})
    base = daemon.call("image.inspect", {"ref": "busybox"})
    assert len(info["layers"]) == len(base["layers"]) + 2
    assert info["history"][-1]["empty_layer"] is True


def test_shell_and_healthcheck(daemon: Any) -> None:
    ctx = context(
        daemon,
        {
            "Dockerfile": 'FROM busybox\nSHELL ["/bin/sh", "-xc"]\nRUN echo traced > /t\n'
            "HEALTHCHECK --interval=200ms --timeout=5s --retries=2 CMD test -f /tmp/ok\n"
            "CMD touch /tmp/ok; sleep 1000\n",
        },
    )
    r = build(daemon, ctx, "-t", "checked")
    assert b"+ echo traced\n" in r.stderr  # sh -x: the RUN went through SHELL's shell
    config = daemon.call("image.inspect", {"ref": "checked"})["config"]
    assert config["Shell"] == ["/bin/sh", "-xc"]
    assert config["Cmd"] == ["/bin/sh", "-xc", "touch /tmp/ok; sleep 1000"]
    assert config["Healthcheck"] == {
        "Test": ["CMD-SHELL", "test -f /tmp/ok"],
        "Interval": 200_000_000,
        "Timeout": 5_000_000_000,
        "Retries": 2,
    }
    # tug run applies the image's check: the container becomes healthy (checks every 200 ms).
    cid = daemon.tug("run", "-d", "checked").stdout.decode().strip()
    wait_events(
        daemon,
        lambda evs: any(e["attributes"]["status"] == "healthy" for e in evs),
        what="the container to be healthy",
        container=cid,
        event="health_status",
    )
    bad = context(daemon, {"Dockerfile": "FROM busybox\nHEALTHCHECK --interval=soon CMD true\n"}, "bad")
    r = build(daemon, bad, check=False)
    assert "Dockerfile line 2: --interval: invalid duration 'soon'" in r.stderr.decode()


def _interfaces(text: str) -> set[str]:
    """The interface names of the /proc/net/dev lines in ``text`` (``  eth0: 1234 5 ...``)."""
    return set(re.findall(r"^\s*([\w.@-]+):\s*\d", text, re.MULTILINE))


def test_run_network_none_by_default_or_the_hosts(daemon: Any) -> None:
    ctx = context(daemon, {"Dockerfile": "FROM busybox\nRUN cat /proc/net/dev\n"})
    alone = build(daemon, ctx, "--no-cache").stdout.decode()
    assert _interfaces(alone) == {"lo"}
    shared = build(daemon, ctx, "--no-cache", "--network", "host").stdout.decode()
    with open("/proc/net/dev") as f:
        assert _interfaces(shared) == _interfaces(f.read())
    r = build(daemon, ctx, "--network", "bridge", check=False)
    assert r.returncode == 2  # a usage error of the CLI
    from tugwire import errors

    with pytest.raises(errors.InvalidArgument, match="network none or host"):
        daemon.call("image.build", {"context": ctx, "network": "bridge"})
    assert_no_build_leftovers(daemon)
