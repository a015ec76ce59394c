"""A real tug-cri for the CRI tests (issue 16): started on a temporary socket against a real tugd,
waited for by its sd_notify READY=1 on a socket of the test's own (no polling, no sleeps), stopped
by its pid; and crictl, built by scripts/install-cri-tools.sh (cached outside the repo)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from cri.gen import api_pb2_grpc

from .conftest import BIN, REPO

TUG_CRI = os.path.join(BIN, "tug-cri")


class TugCri:
    """One tug-cri process serving ``base``/cri.sock for the tugd at ``tugd_socket``."""

    def __init__(
        self, base: str, tugd_socket: str, args: tuple[str, ...] = (), netns: str | None = None
    ) -> None:
        self.base = base
        self.netns = netns  # a network namespace (under /run/netns) to run in
        self.args = args  # more of tug-cri's options
        self.socket = os.path.join(base, "cri.sock")
        self.endpoint = f"unix://{self.socket}"
        self.tugd_socket = tugd_socket
        self.log_path = os.path.join(base, "tug-cri.log")
        self.proc: subprocess.Popen[bytes] | None = None
        self._channel: grpc.Channel | None = None

    def start(self, timeout: float = 30.0) -> None:
        notify_path = os.path.join(self.base, "cri-notify.sock")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(notify_path)
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(notify_path)
        notify.settimeout(timeout)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    *(["nsenter", f"--net=/run/netns/{self.netns}"] if self.netns else []),
                    TUG_CRI,
                    "--listen",
                    self.socket,
                    "--socket",
                    self.tugd_socket,
                    *self.args,
                ],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "NOTIFY_SOCKET": notify_path},
            )
        try:
            while True:
                try:
                    msg = notify.recv(4096).decode()
                except TimeoutError:
                    raise RuntimeError(f"tug-cri did not get ready:\n{self.read_log()}") from None
                if "READY=1" in msg:
                    break
        finally:
            notify.close()
        assert os.path.exists(self.socket)

    def read_log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    @property
    def channel(self) -> grpc.Channel:
        if self._channel is None:
            self._channel = grpc.insecure_channel(f"unix:{self.socket}")
        return self._channel

    # The generated .pyi types the stubs for grpc.aio (what tug-cri serves with); the tests call
    # them through a blocking channel, whose answers are the messages themselves: hence Any.
    @property
    def runtime(self) -> Any:
        return api_pb2_grpc.RuntimeServiceStub(self.channel)  # type: ignore[arg-type]

    @property
    def images(self) -> Any:
        return api_pb2_grpc.ImageServiceStub(self.channel)  # type: ignore[arg-type]

    def stop(self) -> int | None:
        """SIGTERM and wait; returns the exit status (None if it was not running)."""
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        finally:
            self.proc = None
        return code


@pytest.fixture
def make_tug_cri() -> Iterator[Any]:
    """A factory of started tug-cri processes for a Daemon; each is stopped at the end of the
    test, must exit 0 and must remove its socket."""
    servers: list[TugCri] = []

    def factory(daemon: Any, *args: str, netns: bool = False) -> TugCri:
        """``netns``: run in the daemon's network namespace (as critest does, to reach its
        streaming server and the pods' ports)."""
        server = TugCri(daemon.base, daemon.socket, args, daemon.netns if netns else None)
        servers.append(server)
        server.start()
        return server

    yield factory
    problems = []
    for server in servers:
        code = server.stop()
        if code not in (0, None):
            problems.append(f"tug-cri exited {code}:\n{server.read_log()}")
    problems += [f"socket left: {server.socket}" for server in servers if os.path.exists(server.socket)]
    assert not problems, problems


def build_cri_tool(name: str) -> str:
    """The path of ``name`` (crictl, critest), built by scripts/install-cri-tools.sh when it is
    not in the cache yet (minutes, once per machine); a failed build fails the test with the
    script's output, never skips it."""
    result = subprocess.run(
        ["bash", os.path.join(REPO, "scripts", "install-cri-tools.sh"), name],
        capture_output=True,
        timeout=3000,
    )
    if result.returncode != 0:
        pytest.fail(
            f"{name} is not built and scripts/install-cri-tools.sh could not build it "
            f"(exit {result.returncode}):\n{result.stderr.decode(errors='replace')[-4000:]}"
        )
    path = result.stdout.decode().strip().splitlines()[-1]
    assert os.access(path, os.X_OK), path
    return path


@pytest.fixture(scope="session")
def crictl_path() -> str:
    return build_cri_tool("crictl")


@pytest.fixture(scope="session")
def critest_path() -> str:
    return build_cri_tool("critest")


def crictl(
    path: str, server: TugCri, *args: str, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[bytes]:
    """Run crictl against ``server`` with a config file of the test's own (never the host's
    /etc/crictl.yaml): ``server`` as runtime and image endpoint."""
    config = os.path.join(server.base, "crictl.yaml")
    with open(config, "w") as f:
        json.dump({"runtime-endpoint": server.endpoint, "image-endpoint": server.endpoint, "timeout": 60}, f)
    result = subprocess.run(
        [path, "--config", config, *args],
        capture_output=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"crictl {' '.join(args)} exited {result.returncode}\nstdout: {result.stdout!r}\n"
            f"stderr: {result.stderr!r}\ntug-cri log:\n{server.read_log()[-3000:]}"
        )
    return result
