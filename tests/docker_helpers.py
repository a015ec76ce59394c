"""Helpers for the Docker API tests: a real ``tug-docker-api`` in front of a real tugd, and the
real docker CLI (``/usr/local/bin/docker``) pointed at it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from .conftest import BIN, Daemon

TUG_DOCKER_API = os.path.join(BIN, "tug-docker-api")
DOCKER = "/usr/local/bin/docker"


def docker_cli() -> str:
    """The docker CLI; a missing one fails the test with a clear message (never a silent skip)."""
    path = DOCKER if os.access(DOCKER, os.X_OK) else shutil.which("docker")
    if path is None:
        pytest.fail(
            "the docker CLI is needed for the Docker API tests: /usr/local/bin/docker (28.x) is "
            "missing (install the static docker CLI there)"
        )
    return path


class DockerApi:
    """A ``tug-docker-api`` process serving ``sock`` in front of tugd ``daemon``."""

    def __init__(self, daemon: Daemon, backend: str = "asyncio") -> None:
        self.daemon = daemon
        self.sock = os.path.join(daemon.base, "docker.sock")
        self.log_path = os.path.join(daemon.base, "docker-api.log")
        self.backend = backend
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        """Start it and wait for its sd_notify READY=1 (no polling)."""
        notify_path = os.path.join(self.daemon.base, "dnotify.sock")
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(notify_path)
        notify.settimeout(timeout)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    TUG_DOCKER_API,
                    "--listen",
                    self.sock,
                    "--socket",
                    self.daemon.socket,
                    "--backend",
                    self.backend,
                    "--log-level",
                    "debug",
                ],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "NOTIFY_SOCKET": notify_path},
            )
        try:
            while True:
                try:
                    if "READY=1" in notify.recv(4096).decode():
                        return
                except TimeoutError:
                    raise RuntimeError(f"tug-docker-api did not get ready:\n{self.read_log()}") from None
        finally:
            notify.close()
            os.unlink(notify_path)

    def read_log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "DOCKER_HOST": f"unix://{self.sock}",
            "DOCKER_CONFIG": os.path.join(self.daemon.base, "docker-config"),
            "DOCKER_BUILDKIT": "0",
            "DOCKER_CLI_HINTS": "false",
        }

    def docker(
        self, *args: str, input: bytes | None = None, timeout: float = 60, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run the docker CLI against this front door."""
        result = subprocess.run(
            [docker_cli(), *args],
            capture_output=True,
            input=input.decode() if input is not None else None,
            text=True,
            timeout=timeout,
            env=self.env,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"docker {' '.join(args)} exited {result.returncode}\nstdout: {result.stdout!r}\n"
                f"stderr: {result.stderr!r}\napi log:\n{self.read_log()[-3000:]}"
            )
        return result

    def ps_names(self, *args: str) -> list[str]:
        out = self.docker("ps", *args, "--format", "{{.Names}}").stdout
        return out.split()

    def inspect(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.docker("inspect", name).stdout)[0]
        return result


def wait_until(check: Any, timeout: float = 20.0, what: str = "condition") -> None:
    """Poll a cheap check with a deadline (for states only visible by asking)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def make_docker_api(make_daemon: Any) -> Iterator[Any]:
    """A factory: a started tugd (busybox imported) with a started ``tug-docker-api`` in front."""
    apis: list[DockerApi] = []

    def factory(backend: str = "asyncio", netns: bool = False, **kw: Any) -> DockerApi:
        daemon = make_daemon(backend=backend, netns=netns, **kw)
        api = DockerApi(daemon, backend)
        apis.append(api)
        api.start()
        return api

    yield factory
    for api in apis:
        api.stop()


@pytest.fixture
def dapi(make_docker_api: Any) -> DockerApi:
    api: DockerApi = make_docker_api()
    return api
