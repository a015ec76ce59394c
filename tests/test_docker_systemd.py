"""The Docker API's systemd units, checked with the real tools: ``systemd-analyze verify`` on
them as installed (ExecStart pointing at this checkout), and ``systemd-socket-activate`` handing
``tug-docker-api`` its listening socket (LISTEN_FDS)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from typing import Any

import pytest

from .conftest import REPO, needs_root, needs_runc
from .docker_helpers import TUG_DOCKER_API, DockerApi, dapi, make_docker_api

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
SOCKET_ACTIVATE = shutil.which("systemd-socket-activate")


def _settings(path: str) -> dict[str, str]:
    out = {}
    with open(path) as f:
        for line in f:
            key, sep, value = line.strip().partition("=")
            if sep and not key.startswith("#"):
                out[key] = value
    return out


def test_units_pass_systemd_analyze_verify(tmp_path: Any) -> None:
    if SYSTEMD_ANALYZE is None:
        pytest.fail("systemd-analyze is needed to check the units (Debian package systemd)")
    # as scripts/install-systemd.sh puts them in place (DESTDIR: files only)
    result = subprocess.run(
        ["bash", os.path.join(REPO, "scripts", "install-systemd.sh")],
        env={**os.environ, "DESTDIR": str(tmp_path / "dest")},
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    unitdir = tmp_path / "dest" / "etc" / "systemd" / "system"
    units = [str(unitdir / "tug-docker-api.service"), str(unitdir / "tug-docker-api.socket")]
    result = subprocess.run([SYSTEMD_ANALYZE, "verify", *units], capture_output=True, timeout=60)
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b""), result
    s = _settings(units[0])
    assert s["ExecStart"].split()[0] == TUG_DOCKER_API
    assert os.access(TUG_DOCKER_API, os.X_OK)
    assert (s["Type"], s["Requires"]) == ("notify", "tug-docker-api.socket")
    sock = _settings(units[1])
    assert (sock["ListenStream"], sock["SocketMode"], sock["SocketGroup"]) == (
        "/run/tugboat/docker.sock",
        "0660",
        "tugboat",
    )


@pytest.mark.integration
@needs_root
@needs_runc
def test_socket_activation(dapi: DockerApi) -> None:
    """Given its socket by systemd-socket-activate, it serves there (and does not unlink it)."""
    if SOCKET_ACTIVATE is None:
        pytest.fail("systemd-socket-activate is needed (Debian package systemd)")
    path = os.path.join(dapi.daemon.base, "activated.sock")
    proc = subprocess.Popen(
        [SOCKET_ACTIVATE, "-l", path, TUG_DOCKER_API, "--socket", dapi.daemon.socket],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # systemd-socket-activate binds before it execs: the socket is there once it exists;
        # the first connection starts the service.
        from .docker_helpers import wait_until

        wait_until(lambda: os.path.exists(path), what="the activated socket")
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(30)
            s.connect(path)
            s.sendall(b"GET /_ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = b""
            while data := s.recv(4096):
                answer += data
        assert answer.startswith(b"HTTP/1.1 200 ")
        assert answer.endswith(b"\r\n\r\nOK")
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert os.path.exists(path)  # systemd's socket: never unlinked by the service
