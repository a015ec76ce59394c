"""docker-compose (Debian's package, 1.29) against ``tug-docker-api`` in front of a real tugd,
real shims and runc (issue 15): ``up -d``, ``ps``, ``logs``, ``exec``, ``down`` of a two-service
file with a user network, a published port and name resolution between the services."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from .conftest import needs_root, needs_runc
from .docker_helpers import DockerApi, make_docker_api, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.network, needs_root, needs_runc]

COMPOSE_FILE = """\
version: "3.8"
services:
  web:
    image: busybox
    command: ["httpd", "-f", "-v", "-p", "80", "-h", "/etc"]
    ports:
      - "127.0.0.1:18081:80"
    networks: [back]
    labels:
      tier: front
  client:
    image: busybox
    command: ["sh", "-c", "echo client up; sleep 300"]
    networks: [back]
    depends_on: [web]
networks:
  back: {}
"""


def compose_cli() -> str:
    """Debian's docker-compose; a missing one fails the test with a clear message (never a skip)."""
    path = shutil.which("docker-compose")
    if path is None:
        pytest.fail("docker-compose is needed: apt-get install docker-compose (scripts/install.sh)")
    return path


def compose(
    api: DockerApi, project_dir: str, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """``docker-compose --ansi never ARGS`` in ``project_dir`` (project ``demo``) against ``api``."""
    result = subprocess.run(
        [compose_cli(), "--ansi", "never", *args],
        capture_output=True,
        text=True,
        cwd=project_dir,
        env={**api.env, "COMPOSE_PROJECT_NAME": "demo"},
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"docker-compose {' '.join(args)} exited {result.returncode}\nstdout: {result.stdout!r}\n"
            f"stderr: {result.stderr!r}\napi log:\n{api.read_log()[-4000:]}"
        )
    return result


def progress(out: str) -> list[str]:
    """compose's progress lines (stderr), the final ones only, their padding squeezed: without
    a terminal it prints ``Creating x ... `` then ``Creating x ... done`` on a line of its own."""
    return [" ".join(line.split()) for line in out.splitlines() if not line.endswith("... ")]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_compose_up_ps_logs_exec_down(make_docker_api: object, tmp_path: object, backend: str) -> None:
    api: DockerApi = make_docker_api(backend, netns=True)  # type: ignore[operator]
    ns = api.daemon.netns
    project = os.path.join(str(tmp_path), "demo")
    os.makedirs(project)
    with open(os.path.join(project, "docker-compose.yml"), "w") as f:
        f.write(COMPOSE_FILE)

    up = compose(api, project, "up", "-d")
    assert up.stdout == ""
    assert progress(up.stderr) == [
        'Creating network "demo_back" with the default driver',
        "Creating demo_web_1 ... done",  # first: client depends on it
        "Creating demo_client_1 ... done",
    ]
    # compose's labels round trip: on the network and on each container (with the file's own)
    net = json.loads(api.docker("network", "inspect", "demo_back").stdout)[0]
    assert net["Labels"] == {
        "com.docker.compose.network": "back",
        "com.docker.compose.project": "demo",
        "com.docker.compose.version": "1.29.2",
    }
    web = api.inspect("demo_web_1")
    client = api.inspect("demo_client_1")
    labels = web["Config"]["Labels"]
    assert (labels["com.docker.compose.project"], labels["com.docker.compose.service"]) == ("demo", "web")
    assert (labels["com.docker.compose.container-number"], labels["tier"]) == ("1", "front")
    assert len(labels["com.docker.compose.config-hash"]) == 64
    assert client["Config"]["Labels"]["com.docker.compose.service"] == "client"
    assert sorted(web["NetworkSettings"]["Networks"]) == ["demo_back"]
    assert "web" in web["NetworkSettings"]["Networks"]["demo_back"]["Aliases"]
    # the published port in docker ps and docker port; compose's labels as docker ps filters
    ports = api.docker("ps", "--format", "{{.Names}}|{{.Ports}}").stdout
    assert sorted(ports.splitlines()) == ["demo_client_1|", "demo_web_1|127.0.0.1:18081->80/tcp"]
    assert api.docker("port", "demo_web_1").stdout == "80/tcp -> 127.0.0.1:18081\n"
    by_label = api.ps_names("--filter", "label=com.docker.compose.project=demo", "--filter", "label=tier")
    assert by_label == ["demo_web_1"]
    # a second `up -d` finds both by their labels (the label filters) and leaves them be
    again = compose(api, project, "up", "-d")
    assert sorted(progress(again.stderr)) == ["demo_client_1 is up-to-date", "demo_web_1 is up-to-date"]
    assert api.inspect("demo_web_1")["Id"] == web["Id"]

    ps = compose(api, project, "ps")
    lines = ps.stdout.splitlines()
    assert lines[0].split() == ["Name", "Command", "State", "Ports"]
    assert set(lines[1]) == {"-"}
    assert [line.split() for line in lines[2:]] == [
        ["demo_client_1", "sh", "-c", "echo", "client", "up;", "slee", "...", "Up"],
        ["demo_web_1", "httpd", "-f", "-v", "-p", "80", "-h", "/etc", "Up", "127.0.0.1:18081->80/tcp"],
    ]
    assert compose(api, project, "ps", "--services").stdout.split() == ["web", "client"]
    assert sorted(compose(api, project, "ps", "-q").stdout.split()) == sorted([web["Id"], client["Id"]])

    # the client reaches web by its service name (tugd's /etc/hosts of the network's containers)
    web_host = web["Config"]["Hostname"]
    assert web_host == web["Id"][:12]

    def fetch_by_name() -> bool:
        out = compose(
            api, project, "exec", "-T", "client", "wget", "-qO-", "http://web/hostname", check=False
        )
        return (out.returncode, out.stdout) == (0, web_host + "\n")

    wait_until(fetch_by_name, what="web to answer the client by name")
    hosts = compose(api, project, "exec", "-T", "client", "cat", "/etc/hosts").stdout.splitlines()
    web_ip = web["NetworkSettings"]["Networks"]["demo_back"]["IPAddress"]
    client_ip = client["NetworkSettings"]["Networks"]["demo_back"]["IPAddress"]
    # compose gives the aliases as a set (the service's name and the short id): their order varies
    by_ip = {line.split("\t")[0]: line.split("\t")[1].split() for line in hosts}
    assert (by_ip[web_ip][0], sorted(by_ip[web_ip][1:])) == ("demo_web_1", sorted(["web", web_host]))
    assert by_ip[client_ip][:2] == [client["Id"][:12], "demo_client_1"]
    assert sorted(by_ip[client_ip]) == sorted([client["Id"][:12], "demo_client_1", "client"])
    # exec's true exit code, and its stdout and stderr apart
    out = compose(api, project, "exec", "-T", "client", "sh", "-c", "echo o; echo e >&2; exit 3", check=False)
    assert (out.returncode, out.stdout, out.stderr) == (3, "o\n", "e\n")

    # the published port, from tugd's network namespace
    fetched = subprocess.run(
        ["nsenter", f"--net=/run/netns/{ns}", "busybox", "wget", "-qO-", "http://127.0.0.1:18081/hostname"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert (fetched.returncode, fetched.stdout) == (0, web_host + "\n")

    logs = compose(api, project, "logs", "--no-color", "client")
    assert logs.stdout == "Attaching to demo_client_1\nclient_1  | client up\n"
    web_logs = compose(api, project, "logs", "--no-color", "web").stdout.splitlines()
    assert web_logs[0] == "Attaching to demo_web_1"
    assert web_logs[1:] and all(line.startswith("web_1     | [::ffff:") for line in web_logs[1:])
    assert any(line.startswith(f"web_1     | [::ffff:{client_ip}]:") for line in web_logs[1:])
    assert all(line.endswith(": response:200") for line in web_logs[1:])

    down = compose(api, project, "down")
    assert down.stdout == ""
    assert sorted(progress(down.stderr)) == [
        "Removing demo_client_1 ... done",
        "Removing demo_web_1 ... done",
        "Removing network demo_back",
        "Stopping demo_client_1 ... done",
        "Stopping demo_web_1 ... done",
    ]
    assert api.ps_names("-a") == []
    names = api.docker("network", "ls", "--format", "{{.Name}}").stdout.split()
    assert sorted(names) == ["bridge", "host", "none"]
    # down again: nothing left to do
    assert compose(api, project, "down").returncode == 0
