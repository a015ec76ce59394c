"""The real docker CLI (``/usr/local/bin/docker``) against ``tug-docker-api`` in front of a real
tugd, real shims and runc (issue 15): exact output, exit codes and states."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from typing import Any

import pytest

from .conftest import needs_root, needs_runc
from .docker_helpers import DockerApi, dapi, docker_cli, make_docker_api, wait_until

pytestmark = [pytest.mark.integration, needs_root, needs_runc]


def test_version_info_and_ping(dapi: DockerApi) -> None:
    out = dapi.docker(
        "version", "--format", "{{.Server.APIVersion}} {{.Server.MinAPIVersion}} {{.Client.APIVersion}}"
    )
    assert out.stdout.split() == ["1.43", "1.24", "1.43"]
    info = json.loads(dapi.docker("info", "--format", "{{json .}}").stdout)
    assert (info["Images"], info["Containers"], info["OSType"]) == (1, 0, "linux")
    assert dapi.docker("info").returncode == 0  # the default template renders


def test_run_rm_echo_hi(dapi: DockerApi) -> None:
    out = dapi.docker("run", "--rm", "busybox", "echo", "hi")
    assert (out.stdout, out.stderr) == ("hi\n", "")
    # --rm is done on the server: nothing is listed right after run returns.
    assert dapi.ps_names("-a") == []


def test_run_streams_exit_code_env_workdir_user(dapi: DockerApi) -> None:
    out = dapi.docker("run", "--rm", "busybox", "sh", "-c", "echo out; echo err >&2; exit 3", check=False)
    assert (out.returncode, out.stdout, out.stderr) == (3, "out\n", "err\n")
    out = dapi.docker(
        "run", "--rm", "-e", "A=1", "-w", "/tmp", "-u", "1000", "busybox", "sh", "-c", "echo $A; pwd; id -u"
    )
    assert out.stdout == "1\n/tmp\n1000\n"
    out = dapi.docker("run", "--rm", "--entrypoint", "echo", "busybox", "via", "entrypoint")
    assert out.stdout == "via entrypoint\n"


def test_run_stdin_half_close(dapi: DockerApi) -> None:
    # The CLI half-closes after stdin's EOF: cat sees EOF, exits, its output is all there.
    out = dapi.docker("run", "-i", "--rm", "busybox", "cat", input=b"hello\nworld\n")
    assert out.stdout == "hello\nworld\n"
    out = dapi.docker("run", "-i", "--rm", "busybox", "wc", "-l", input=b"a\nb\nc\n")
    assert out.stdout.strip() == "3"


def test_detached_lifecycle(dapi: DockerApi) -> None:
    cid = dapi.docker("run", "-d", "--name", "web", "busybox", "sleep", "300").stdout.strip()
    assert len(cid) == 64
    assert dapi.ps_names() == ["web"]
    c = dapi.inspect("web")
    assert (c["Id"], c["Name"], c["State"]["Status"], c["State"]["Running"]) == (cid, "/web", "running", True)
    assert c["Config"]["Cmd"] == ["sleep", "300"]
    # start of a running container: 304, the CLI still prints the name
    assert dapi.docker("start", "web").stdout == "web\n"
    # rm of a running one: 409
    rm = dapi.docker("rm", "web", check=False)
    assert rm.returncode == 1
    assert "You cannot remove a running container" in rm.stderr
    assert dapi.docker("pause", "web").stdout == "web\n"
    assert dapi.docker("ps", "--format", "{{.Status}}").stdout.endswith("(Paused)\n")
    assert dapi.inspect("web")["State"]["Paused"] is True
    assert dapi.docker("unpause", "web").stdout == "web\n"
    assert dapi.docker("rename", "web", "web2").returncode == 0
    assert dapi.ps_names() == ["web2"]
    top = dapi.docker("top", "web2").stdout.splitlines()
    assert top[0].split()[:3] == ["UID", "PID", "PPID"]
    assert top[1].endswith("sleep 300")
    assert dapi.docker("stop", "-t", "1", "web2").stdout == "web2\n"
    c = dapi.inspect("web2")
    assert (c["State"]["Status"], c["State"]["ExitCode"]) == ("exited", 137)  # no trap: SIGKILL
    # stop of a stopped container: 304, still the name and exit 0
    assert dapi.docker("stop", "web2").stdout == "web2\n"
    kill = dapi.docker("kill", "web2", check=False)
    assert kill.returncode == 1
    assert "is not running" in kill.stderr
    assert dapi.docker("restart", "-t", "1", "web2").stdout == "web2\n"
    assert dapi.inspect("web2")["State"]["Running"] is True
    assert dapi.docker("kill", "web2").stdout == "web2\n"
    assert dapi.docker("wait", "web2").stdout == "137\n"
    assert dapi.docker("rm", "web2").stdout == "web2\n"
    assert dapi.ps_names("-a") == []


def test_rm_force_and_missing(dapi: DockerApi) -> None:
    dapi.docker("run", "-d", "--name", "doomed", "busybox", "sleep", "300")
    assert dapi.docker("rm", "-f", "doomed").stdout == "doomed\n"
    for verb in (["rm"], ["stop"], ["start"], ["kill"], ["logs"], ["wait"], ["pause"]):
        out = dapi.docker(*verb, "doomed", check=False)
        assert out.returncode == 1, verb
        assert "No such container: doomed" in out.stderr, (verb, out.stderr)


def test_inspect_missing_is_no_such_object(dapi: DockerApi) -> None:
    out = dapi.docker("inspect", "nosuch", check=False)
    assert (out.returncode, out.stdout, out.stderr) == (1, "[]\n", "Error: No such object: nosuch\n")
    # the same probe finds an image, then a network, by name
    assert json.loads(dapi.docker("inspect", "busybox").stdout)[0]["RepoTags"] == ["busybox:latest"]
    assert json.loads(dapi.docker("inspect", "none").stdout)[0]["Name"] == "none"
    assert dapi.docker("inspect", "--type", "container", "busybox", check=False).returncode == 1


def test_bad_name_and_conflict(dapi: DockerApi) -> None:
    out = dapi.docker("run", "--name", "x", "busybox", "true", check=False)
    assert out.returncode == 125
    assert "Invalid container name (x)" in out.stderr
    dapi.docker("create", "--name", "twice", "busybox", "true")
    out = dapi.docker("create", "--name", "twice", "busybox", "true", check=False)
    assert out.returncode == 1
    assert 'The container name "/twice" is already in use' in out.stderr


def test_missing_image_is_404(dapi: DockerApi) -> None:
    out = dapi.docker("create", "--pull", "never", "nosuchimage:1", check=False)
    assert out.returncode == 1
    assert "No such image: nosuchimage:1" in out.stderr


def test_ps_filters_and_json(dapi: DockerApi) -> None:
    dapi.docker("run", "-d", "--name", "alpha", "busybox", "sleep", "300")
    dapi.docker("run", "-d", "--name", "beta", "busybox", "sleep", "300")
    dapi.docker("run", "--name", "gamma", "busybox", "true")
    assert sorted(dapi.ps_names()) == ["alpha", "beta"]
    assert sorted(dapi.ps_names("-a")) == ["alpha", "beta", "gamma"]
    assert dapi.ps_names("--filter", "name=^alpha$") == ["alpha"]
    assert dapi.ps_names("--filter", "name=/beta") == ["beta"]
    assert dapi.ps_names("-a", "--filter", "status=exited") == ["gamma"]
    assert dapi.ps_names("-a", "--filter", "exited=0") == ["gamma"]
    dapi.docker("create", "--name", "delta", "--label", "x=y", "--label", "tier=web", "busybox", "true")
    assert dapi.ps_names("-a", "--filter", "label=x=y") == ["delta"]
    assert dapi.ps_names("-a", "--filter", "label=x", "--filter", "label=tier=web") == ["delta"]
    assert dapi.ps_names("-a", "--filter", "label=x", "--filter", "label=tier=db") == []
    assert dapi.inspect("delta")["Config"]["Labels"] == {"x": "y", "tier": "web"}
    assert dapi.docker("ps", "-a", "-f", "name=delta", "--format", '{{.Label "tier"}}').stdout == "web\n"
    dapi.docker("rm", "delta")
    rows = [json.loads(line) for line in dapi.docker("ps", "--format", "json").stdout.splitlines()]
    assert sorted(r["Names"] for r in rows) == ["alpha", "beta"]
    assert {r["State"] for r in rows} == {"running"}
    assert all(r["Image"] == "busybox:latest" and r["Command"] == '"sleep 300"' for r in rows)
    assert (
        dapi.docker("ps", "-q", "--no-trunc", "--filter", "name=alpha").stdout.strip()
        == dapi.inspect("alpha")["Id"]
    )
    bad = dapi.docker("ps", "--filter", "nosuchfilter=1", check=False)
    assert bad.returncode == 1
    assert "invalid filter 'nosuchfilter'" in bad.stderr


def test_logs_tail_timestamps_follow(dapi: DockerApi) -> None:
    dapi.docker(
        "run", "--name", "talk", "busybox", "sh", "-c", "for i in 1 2 3 4 5; do echo l$i; done; echo e >&2"
    )
    out = dapi.docker("logs", "talk")
    assert (out.stdout, out.stderr) == ("l1\nl2\nl3\nl4\nl5\n", "e\n")
    # the last 2 records: l5 and e, in whichever order the shim read its two pipes; never more
    tail = dapi.docker("logs", "--tail", "2", "talk")
    assert (tail.stdout, tail.stderr) in (("l5\n", "e\n"), ("l4\nl5\n", ""))
    assert dapi.docker("logs", "--tail", "1", "--", "talk").stdout in ("l5\n", "")
    stamped = dapi.docker("logs", "-t", "talk").stdout.splitlines()
    assert len(stamped) == 5
    for line, i in zip(stamped, range(1, 6), strict=True):
        ts, text = line.split(" ")
        assert text == f"l{i}"
        assert ts.endswith("Z") and len(ts) == 30 and ts[4] == "-" and ts[10] == "T", ts
    # --since / --until (the CLI sends unix seconds): a window before the run has nothing
    assert dapi.docker("logs", "--until", "2000-01-01T00:00:00Z", "talk").stdout == ""
    assert dapi.docker("logs", "--since", "2000-01-01T00:00:00Z", "talk").stdout == "l1\nl2\nl3\nl4\nl5\n"
    assert dapi.docker("logs", "--since", "2099-01-01T00:00:00Z", "talk").stdout == ""
    assert dapi.docker("logs", "--until", "2099-01-01T00:00:00Z", "talk").stdout == "l1\nl2\nl3\nl4\nl5\n"
    # -f on a running container ends when it exits, with everything it wrote
    dapi.docker("run", "-d", "--name", "slow", "busybox", "sh", "-c", "echo a; sleep 1; echo b")
    assert dapi.docker("logs", "-f", "slow").stdout == "a\nb\n"


def test_exec_exit_code_stdin_detach(dapi: DockerApi) -> None:
    since = str(int(time.time()))
    dapi.docker("run", "-d", "--name", "box", "busybox", "sleep", "300")
    out = dapi.docker("exec", "box", "sh", "-c", "echo in; echo err >&2; exit 5", check=False)
    assert (out.returncode, out.stdout, out.stderr) == (5, "in\n", "err\n")
    # docker's exec events: `exec_create: CMD` (matched by event=exec_create), exec_die's exitCode
    events = dapi.docker(
        "events",
        "--since",
        since,
        "--until",
        str(int(time.time()) + 1),
        "--filter",
        "container=box",
        "--filter",
        "event=exec_create",
        "--filter",
        "event=exec_die",
        "--format",
        "{{.Action}} {{.Actor.Attributes.exitCode}}",
    ).stdout
    assert events == "exec_create: sh -c echo in; echo err >&2; exit 5 <no value>\nexec_die 5\n"
    out = dapi.docker("exec", "-i", "box", "cat", input=b"piped\n")
    assert out.stdout == "piped\n"
    out = dapi.docker(
        "exec", "-e", "X=7", "-w", "/tmp", "-u", "1000", "box", "sh", "-c", "echo $X $(pwd) $(id -u)"
    )
    assert out.stdout == "7 /tmp 1000\n"
    assert dapi.docker("exec", "-d", "box", "touch", "/tmp/made").stdout == ""
    wait_until(lambda: dapi.docker("exec", "box", "test", "-e", "/tmp/made", check=False).returncode == 0)
    missing = dapi.docker("exec", "box", "/no/such/binary", check=False)
    assert missing.returncode == 127
    dapi.docker("stop", "-t", "0", "box")
    out = dapi.docker("exec", "box", "true", check=False)
    assert out.returncode == 1
    assert "is not running" in out.stderr


def test_images_tag_rmi_save_load(dapi: DockerApi) -> None:
    lines = dapi.docker("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
    assert lines == ["busybox:latest"]
    dapi.docker("tag", "busybox", "my/bb:1")
    assert sorted(dapi.docker("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()) == [
        "busybox:latest",
        "my/bb:1",
    ]
    assert dapi.docker("images", "--format", "{{.Repository}}", "my/bb").stdout == "my/bb\n"
    img = json.loads(dapi.docker("image", "inspect", "my/bb:1").stdout)[0]
    assert img["RepoTags"] == ["busybox:latest", "my/bb:1"] or sorted(img["RepoTags"]) == [
        "busybox:latest",
        "my/bb:1",
    ]
    assert (img["Os"], img["RootFS"]["Type"]) == ("linux", "layers")
    assert dapi.docker("rmi", "my/bb:1").stdout == "Untagged: my/bb:1\n"
    missing = dapi.docker("rmi", "my/bb:1", check=False)
    assert missing.returncode == 1
    assert "No such image: my/bb:1" in missing.stderr
    tar = os.path.join(dapi.daemon.base, "bb.tar")
    dapi.docker("save", "busybox", "-o", tar)
    image_id = img["Id"]
    out = dapi.docker("rmi", "busybox").stdout
    assert out == f"Untagged: busybox:latest\nDeleted: {image_id}\n"
    assert dapi.docker("images", "-q").stdout == ""
    assert dapi.docker("load", "-i", tar).stdout == "Loaded image: busybox:latest\n"
    assert dapi.docker("run", "--rm", "busybox", "echo", "back").stdout == "back\n"


def test_events_since_until(dapi: DockerApi) -> None:
    dapi.docker("run", "--name", "ev", "busybox", "sh", "-c", "exit 4", check=False)
    dapi.docker("rm", "ev")
    # The CLI sends whole seconds: an ``until`` in the past could cut the last second's events.
    until = str(int(time.time()) + 2)
    out = dapi.docker(
        "events",
        "--since",
        "5m",
        "--until",
        until,
        "--filter",
        "type=container",
        "--format",
        "{{.Action}} {{.Actor.Attributes.name}} {{.Actor.Attributes.exitCode}}",
    ).stdout.splitlines()
    actions = [line.split()[0] for line in out]
    assert actions == ["create", "attach", "start", "die", "destroy"] or actions == [
        "create",
        "start",
        "die",
        "destroy",
    ]
    assert "die ev 4" in out
    status_line = dapi.docker(
        "events",
        "--since",
        "5m",
        "--until",
        until,
        "--filter",
        "event=die",
        "--format",
        "{{.Status}} {{.From}}",
    ).stdout
    assert status_line == "die busybox:latest\n"


def test_events_follow_disconnect(dapi: DockerApi) -> None:
    """A live ``docker events`` gets what happens; killing it leaves the front door serving."""
    proc = subprocess.Popen(
        [docker_cli(), "events", "--format", "{{.Action}} {{.Actor.Attributes.name}}"],
        stdout=subprocess.PIPE,
        text=True,
        env=dapi.env,
    )
    try:
        # The subscription is live once the CLI has its response head; a container's events
        # then arrive in order.
        wait_until(lambda: "events: subscribed" in dapi.read_log(), what="the events subscription")
        dapi.docker("run", "--rm", "--name", "live", "busybox", "true")
        assert proc.stdout is not None
        seen = [proc.stdout.readline().strip() for _ in range(3)]
        assert seen == ["create live", "start live", "die live"]
    finally:
        proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
    assert dapi.docker("version", "--format", "{{.Server.APIVersion}}").stdout == "1.43\n"


def test_system_df(dapi: DockerApi) -> None:
    dapi.docker("run", "--name", "one", "busybox", "true")
    rows = [line.split()[0] for line in dapi.docker("system", "df").stdout.splitlines()[1:]]
    assert rows == ["Images", "Containers", "Local", "Build"]
    df = json.loads(dapi.docker("system", "df", "--format", "{{json .}}").stdout.splitlines()[0])
    assert (df["Type"], df["TotalCount"], df["Active"]) == ("Images", "1", "1")


def test_too_new_version_prefix(dapi: DockerApi) -> None:
    env = {**dapi.env, "DOCKER_API_VERSION": "1.50"}
    out = subprocess.run([docker_cli(), "ps"], capture_output=True, text=True, env=env, timeout=30)
    assert out.returncode == 1
    assert "client version 1.50 is too new. Maximum supported API version is 1.43" in out.stderr


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_both_backends_run(make_docker_api: object, backend: str) -> None:
    api: DockerApi = make_docker_api(backend=backend)  # type: ignore[operator]
    assert api.docker("run", "--rm", "busybox", "echo", backend).stdout == f"{backend}\n"
    assert api.docker("run", "-i", "--rm", "busybox", "cat", input=b"x\n").stdout == "x\n"
    out = api.docker("run", "-d", "--name", "ex", "busybox", "sleep", "60").stdout
    assert len(out.strip()) == 64
    assert api.docker("exec", "ex", "sh", "-c", "exit 9", check=False).returncode == 9


@pytest.mark.network
def test_networks_and_published_port(make_docker_api: object) -> None:
    """tugd in a network namespace of the test's own: network create/ls/inspect/connect/
    disconnect/rm (403 while in use), and ``run -p`` reachable on the published port."""
    api: DockerApi = make_docker_api(netns=True)  # type: ignore[operator]
    ns = api.daemon.netns
    assert ns is not None
    net_id = api.docker("network", "create", "n1").stdout.strip()
    assert len(net_id) == 64
    dup = api.docker("network", "create", "n1", check=False)
    assert dup.returncode == 1
    assert "network with name n1 already exists" in dup.stderr
    names = api.docker("network", "ls", "--format", "{{.Name}} {{.Driver}}").stdout.splitlines()
    assert sorted(names) == ["bridge bridge", "host host", "n1 bridge", "none null"]
    net = json.loads(api.docker("network", "inspect", "n1").stdout)[0]
    assert (net["Id"], net["Driver"], net["Scope"]) == (net_id, "bridge", "local")
    subnet = net["IPAM"]["Config"][0]["Subnet"]
    api.docker("run", "-d", "--name", "a1", "--network", "n1", "busybox", "sleep", "300")
    ip = api.docker("inspect", "--format", "{{.NetworkSettings.Networks.n1.IPAddress}}", "a1").stdout.strip()
    assert ip.split(".")[:2] == subnet.split(".")[:2]
    busy = api.docker("network", "rm", "n1", check=False)
    assert busy.returncode == 1
    assert "has active endpoints" in busy.stderr
    assert api.docker("network", "disconnect", "n1", "a1").returncode == 0
    assert json.loads(api.docker("network", "inspect", "n1").stdout)[0]["Containers"] == {}
    assert api.docker("network", "connect", "n1", "a1").returncode == 0
    containers = json.loads(api.docker("network", "inspect", "n1").stdout)[0]["Containers"]
    assert [c["Name"] for c in containers.values()] == ["a1"]
    api.docker("rm", "-f", "a1")
    assert api.docker("network", "rm", "n1").stdout == "n1\n"
    missing = api.docker("network", "inspect", "n1", check=False)
    assert missing.returncode == 1
    assert "network n1 not found" in missing.stderr
    # A published port, served by busybox httpd in the container, fetched in tugd's namespace.
    api.docker(
        "run",
        "-d",
        "--name",
        "web",
        "-p",
        "127.0.0.1:18080:80",
        "busybox",
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/etc",
    )
    hostname = api.docker("exec", "web", "cat", "/etc/hostname").stdout
    assert api.docker("port", "web").stdout == "80/tcp -> 127.0.0.1:18080\n"

    def fetch() -> str:
        out = subprocess.run(
            [
                "nsenter",
                f"--net=/run/netns/{ns}",
                "busybox",
                "wget",
                "-qO-",
                "http://127.0.0.1:18080/hostname",
            ],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout

    wait_until(lambda: fetch() == hostname, what="the published port to answer")


def test_cp_both_ways(dapi: DockerApi, tmp_path: object) -> None:
    base = str(tmp_path)
    src = os.path.join(base, "src")
    os.makedirs(os.path.join(src, "sub"))
    with open(os.path.join(src, "sub", "y"), "w") as f:
        f.write("deep\n")
    with open(os.path.join(base, "f.txt"), "w") as f:
        f.write("hello\n")
    os.chmod(os.path.join(base, "f.txt"), 0o640)
    dapi.docker("run", "-d", "--name", "cpc", "busybox", "sleep", "300")
    dapi.docker("cp", os.path.join(base, "f.txt"), "cpc:/tmp/")
    dapi.docker("cp", src, "cpc:/tmp/")
    out = dapi.docker(
        "exec", "cpc", "sh", "-c", "cat /tmp/f.txt /tmp/src/sub/y; stat -c %a /tmp/f.txt"
    ).stdout
    assert out == "hello\ndeep\n640\n"
    dapi.docker(
        "exec", "cpc", "sh", "-c", "mkdir -p /out/d && echo made > /out/d/file && ln -s file /out/d/link"
    )
    back = os.path.join(base, "back")
    dapi.docker("cp", "cpc:/out/d", back)
    with open(os.path.join(back, "file")) as f:
        assert f.read() == "made\n"
    assert os.readlink(os.path.join(back, "link")) == "file"
    missing = dapi.docker("cp", "cpc:/nosuch", os.path.join(base, "x"), check=False)
    assert missing.returncode == 1
    assert "Could not find the file /nosuch" in missing.stderr


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_cp_64_mib_byte_exact_both_ways_and_tars_on_stdio(
    make_docker_api: Any, backend: str, tmp_path: Any
) -> None:
    """docker cp of a 64 MiB file in and out, byte-exact, with nothing spooled by the door; a
    tar on stdout (``cp C:PATH -``) and on stdin (``cp - C:DIR``)."""
    import hashlib
    import io
    import tarfile

    api: DockerApi = make_docker_api(backend=backend)
    base = str(tmp_path)
    big = os.path.join(base, "big")
    with open(big, "wb") as f:
        for _ in range(64):
            f.write(os.urandom(1 << 20))
    with open(big, "rb") as f:
        want = hashlib.sha256(f.read()).hexdigest()
    api.docker("run", "-d", "--name", "cpbig", "busybox", "sleep", "300")
    api.docker("cp", big, "cpbig:/tmp/")
    api.docker("cp", "cpbig:/tmp/big", os.path.join(base, "back"))
    with open(os.path.join(base, "back"), "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == want
    out = subprocess.run(
        [docker_cli(), "cp", "cpbig:/tmp/big", "-"], capture_output=True, env=api.env, timeout=60, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(out)) as tar:
        got = tar.extractfile("big")
        assert got is not None and hashlib.sha256(got.read()).hexdigest() == want
    upload = io.BytesIO()
    with tarfile.open(fileobj=upload, mode="w") as tar:
        info = tarfile.TarInfo("in/x")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"hi\n"))
    subprocess.run(
        [docker_cli(), "cp", "-", "cpbig:/tmp"], input=upload.getvalue(), env=api.env, timeout=60, check=True
    )
    assert api.docker("exec", "cpbig", "cat", "/tmp/in/x").stdout == "hi\n"


def test_stats_no_stream_and_tty(dapi: DockerApi) -> None:
    dapi.docker("run", "-d", "--name", "st", "busybox", "sleep", "300")
    # The CLI ignores SIGTERM while streaming; --no-stream ends by itself (a KILL deadline anyway).
    out = subprocess.run(
        [
            "timeout",
            "-s",
            "KILL",
            "30",
            docker_cli(),
            "stats",
            "--no-stream",
            "--format",
            "{{.Name}} {{.PIDs}}",
        ],
        capture_output=True,
        text=True,
        env=dapi.env,
    )
    assert (out.returncode, out.stdout) == (0, "st 1\n")
    out = subprocess.run(
        [
            "timeout",
            "-s",
            "KILL",
            "30",
            docker_cli(),
            "stats",
            "--no-stream",
            "st",
            "--format",
            "{{.MemUsage}}",
        ],
        capture_output=True,
        text=True,
        env=dapi.env,
    )
    assert out.returncode == 0
    assert out.stdout.split(" / ")[0].endswith("iB")
    # a busy container: the CPU % comes from two samples a second apart (as dockerd's)
    dapi.docker("run", "-d", "--name", "busy", "busybox", "sh", "-c", "while :; do :; done")
    out = subprocess.run(
        [
            "timeout",
            "-s",
            "KILL",
            "30",
            docker_cli(),
            "stats",
            "--no-stream",
            "busy",
            "--format",
            "{{.CPUPerc}}",
        ],
        capture_output=True,
        text=True,
        env=dapi.env,
    )
    assert out.returncode == 0
    assert float(out.stdout.strip().rstrip("%")) > 1.0, out.stdout
    dapi.docker("rm", "-f", "busy")
    out = dapi.docker("run", "-t", "--rm", "busybox", "sh", "-c", "tty")
    assert out.stdout.strip() == "/dev/pts/0"
    assert (
        dapi.docker("run", "-i", "--rm", "busybox", "sh", input=b"echo hi\nexit 3\n", check=False).returncode
        == 3
    )
    assert "ERROR" not in dapi.read_log()  # no error of the front door itself (nor asyncio's)


def test_build_classic(dapi: DockerApi, tmp_path: object) -> None:
    ctx = os.path.join(str(tmp_path), "ctx")
    os.makedirs(ctx)
    with open(os.path.join(ctx, "Dockerfile"), "w") as f:
        f.write(
            "FROM busybox\nARG X=1\nCOPY data.txt /data.txt\n"
            'RUN echo built-$X >> /data.txt\nCMD ["cat", "/data.txt"]\n'
        )
    with open(os.path.join(ctx, "data.txt"), "w") as f:
        f.write("from-context\n")
    with open(os.path.join(ctx, "Bad.Dockerfile"), "w") as f:
        f.write("FROM busybox\nRUN exit 3\n")
    out = dapi.docker("build", "-t", "mine:1", "-t", "mine:2", "--build-arg", "X=7", ctx)
    lines = out.stdout.splitlines()
    assert "Step 1/5 : FROM busybox" in lines
    assert "Step 4/5 : RUN echo built-$X >> /data.txt" in lines
    assert lines[-2:] == ["Successfully tagged mine:1", "Successfully tagged mine:2"]
    # the classic builder's ` ---> ID` after each step: the base's after FROM, the image's last
    arrows = [x[6:] for x in lines if re.fullmatch(r" ---> [0-9a-f]{12}", x)]
    base = json.loads(dapi.docker("image", "inspect", "busybox").stdout)[0]["Id"]
    built = json.loads(dapi.docker("image", "inspect", "mine:1").stdout)[0]["Id"]
    assert len(arrows) == 5 and arrows[0] == base[7:19] and arrows[-1] == built[7:19], lines
    assert lines[-3] == f"Successfully built {built[7:19]}"
    assert "BuildKit is currently disabled" in out.stderr  # the classic builder, DOCKER_BUILDKIT=0
    assert dapi.docker("run", "--rm", "mine:2").stdout == "from-context\nbuilt-7\n"
    quiet = dapi.docker("build", "-q", "--no-cache", ctx).stdout
    assert quiet.startswith("sha256:") and len(quiet.strip()) == 71
    bad = dapi.docker("build", "-f", os.path.join(ctx, "Bad.Dockerfile"), "-t", "bad:1", ctx, check=False)
    assert bad.returncode == 1
    assert "exit" in bad.stderr and "3" in bad.stderr
    assert "bad:1" not in dapi.docker("images", "--format", "{{.Repository}}:{{.Tag}}").stdout


@pytest.mark.registry
def test_push_pull_login_with_a_local_registry(dapi: DockerApi) -> None:
    from .test_registry import PASSWORD, USER, _htpasswd, running_registry

    with running_registry() as reg:
        ref = f"{reg.host}/tug/bb:1"
        dapi.docker("tag", "busybox", ref)
        out = dapi.docker("push", ref)
        assert f"The push refers to repository [{reg.host}/tug/bb]" in out.stdout
        assert out.stdout.splitlines()[-1].startswith("1: digest: sha256:"), out.stdout
        digest = out.stdout.splitlines()[-1].split()[2]
        dapi.docker("rmi", ref)
        out = dapi.docker("pull", ref)
        assert f"Status: Downloaded newer image for {ref}" in out.stdout
        assert out.stdout.splitlines()[-1] == ref
        assert dapi.docker("run", "--rm", ref, "echo", "pulled").stdout == "pulled\n"
        img = json.loads(dapi.docker("image", "inspect", ref).stdout)[0]
        assert f"{reg.host}/tug/bb@{digest}" in img["RepoDigests"]
        missing = dapi.docker("pull", f"{reg.host}/tug/nosuch:1", check=False)
        assert missing.returncode == 1
    with running_registry(prep=_htpasswd) as reg:
        bad = dapi.docker("login", reg.host, "-u", USER, "--password-stdin", input=b"wrong\n", check=False)
        assert bad.returncode == 1
        good = dapi.docker("login", reg.host, "-u", USER, "--password-stdin", input=PASSWORD.encode() + b"\n")
        assert "Login Succeeded" in good.stdout
        ref = f"{reg.host}/private/bb:1"
        dapi.docker("tag", "busybox", ref)
        assert dapi.docker("push", ref).stdout.splitlines()[-1].startswith("1: digest: sha256:")


def test_run_limits_restart_volume(dapi: DockerApi, tmp_path: object) -> None:
    host_dir = os.path.join(str(tmp_path), "vol")
    os.makedirs(host_dir)
    with open(os.path.join(host_dir, "in.txt"), "w") as f:
        f.write("from-host\n")
    out = dapi.docker(
        "run",
        "--rm",
        "-m",
        "64m",
        "-v",
        f"{host_dir}:/data",
        "busybox",
        "sh",
        "-c",
        "cat /data/in.txt; echo out > /data/out.txt",
    )
    assert out.stdout == "from-host\n"
    with open(os.path.join(host_dir, "out.txt")) as f:
        assert f.read() == "out\n"
    out = dapi.docker(
        "run", "--rm", "-v", f"{host_dir}:/data:ro", "busybox", "sh", "-c", "echo x > /data/y", check=False
    )
    assert out.returncode != 0
    assert "Read-only file system" in out.stderr
    dapi.docker("create", "--name", "lim", "-m", "64m", "--restart", "on-failure:2", "busybox", "true")
    c = dapi.inspect("lim")
    assert c["HostConfig"]["Memory"] == 64 * 1024 * 1024
    assert c["HostConfig"]["RestartPolicy"]["Name"] == "on-failure"
    conflict = dapi.docker("run", "--rm", "--restart", "always", "busybox", "true", check=False)
    assert conflict.returncode != 0  # the CLI refuses --rm with a restart policy itself


def test_attach_and_start_attached_again(dapi: DockerApi) -> None:
    dapi.docker("run", "--name", "again", "busybox", "sh", "-c", "echo run")
    # start -a of an exited container shows its new run's output (and only that)
    out = dapi.docker("start", "-a", "again")
    assert out.stdout == "run\n"
    assert dapi.docker("logs", "again").stdout == "run\nrun\n"
    # attach to a running container with stdin open (-i): input in, both streams out
    dapi.docker(
        "run", "-d", "-i", "--name", "talker", "busybox", "sh", "-c", "read x; echo got-$x; echo bye >&2"
    )
    out = dapi.docker("attach", "talker", input=b"line\n")
    assert (out.stdout, out.stderr) == ("got-line\n", "bye\n")


def test_prune_and_history(dapi: DockerApi) -> None:
    dapi.docker("run", "--name", "done1", "busybox", "true")
    dapi.docker("create", "--name", "made1", "busybox", "true")
    dapi.docker("run", "-d", "--name", "alive", "busybox", "sleep", "300")
    out = dapi.docker("container", "prune", "-f").stdout
    assert out.startswith("Deleted Containers:\n")
    assert dapi.ps_names("-a") == ["alive"]
    dapi.docker("tag", "busybox", "extra:1")
    hist = dapi.docker("history", "--no-trunc", "--format", "{{.ID}}", "busybox").stdout.splitlines()
    assert hist[0].startswith("sha256:")
    dapi.docker("rm", "-f", "alive")
    dapi.docker("rmi", "busybox")
    out = dapi.docker("image", "prune", "-a", "-f").stdout
    assert "untagged: extra:1" in out.lower()
    assert dapi.docker("images", "-q").stdout == ""


def test_stop_and_restart_with_a_signal(dapi: DockerApi) -> None:
    """``docker stop -s`` / ``restart -s`` (API 1.42): that signal rather than the stop signal."""
    script = 'trap "exit 42" USR1; while :; do sleep 0.1; done'
    dapi.docker("run", "-d", "--name", "sig", "busybox", "sh", "-c", script)
    bad = dapi.docker("stop", "-s", "NOPE", "sig", check=False)
    assert (bad.returncode, bad.stdout) == (1, "")
    assert "invalid signal: NOPE" in bad.stderr
    assert dapi.inspect("sig")["State"]["Running"] is True
    assert dapi.docker("stop", "-s", "USR1", "-t", "20", "sig").stdout == "sig\n"
    state = dapi.inspect("sig")["State"]
    assert (state["Status"], state["ExitCode"]) == ("exited", 42)  # the trap, not SIGKILL
    assert dapi.docker("restart", "-s", "SIGUSR1", "-t", "20", "sig").stdout == "sig\n"
    assert dapi.inspect("sig")["State"]["Running"] is True
    assert dapi.docker("restart", "-s", "10", "-t", "20", "sig").stdout == "sig\n"  # by number
    assert dapi.docker("stop", "-t", "0", "sig").stdout == "sig\n"  # the stop signal: SIGKILL at 0
    assert dapi.inspect("sig")["State"]["ExitCode"] == 137
    dapi.docker("rm", "sig")


def test_diff(dapi: DockerApi) -> None:
    """``docker diff``: A/C/D from the container's upper directory, sorted by path, without the
    runtime's mount points; running and stopped alike."""
    dapi.docker("run", "-d", "--name", "dif", "busybox", "sleep", "300")
    assert dapi.docker("diff", "dif").stdout == ""
    script = (
        "mkdir -p /new/sub && echo x > /new/sub/f && echo y >> /etc/profile2 && rm /bin/ls && touch /tmp/t"
    )
    dapi.docker("exec", "dif", "sh", "-c", script)
    expected = (
        "C /bin\nD /bin/ls\nC /etc\nA /etc/profile2\nA /new\nA /new/sub\nA /new/sub/f\nC /tmp\nA /tmp/t\n"
    )
    assert dapi.docker("diff", "dif").stdout == expected
    dapi.docker("stop", "-t", "0", "dif")
    assert dapi.docker("diff", "dif").stdout == expected
    missing = dapi.docker("diff", "nosuch", check=False)
    assert (missing.returncode, missing.stderr) == (
        1,
        "Error response from daemon: No such container: nosuch\n",
    )
    dapi.docker("rm", "dif")
