"""Fixtures: a busybox image tar made from the host's busybox-static, and real tugd instances in
their own temporary roots that must leave nothing behind."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "scripts"))
BIN = os.path.dirname(sys.executable)
TUGD = os.path.join(BIN, "tugd")
TUG = os.path.join(BIN, "tug")
TUG_SHIM = os.path.join(BIN, "tug-shim")

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
needs_runc = pytest.mark.skipif(shutil.which("runc") is None, reason="needs runc")


@pytest.fixture(scope="session")
def busybox_tar(tmp_path_factory: pytest.TempPathFactory) -> str:
    import make_busybox_rootfs

    out = str(tmp_path_factory.mktemp("images") / "busybox.tar")
    make_busybox_rootfs.build(out, shutil.which("busybox") or "/bin/busybox")
    return out


def _pids_mentioning(text: str) -> list[int]:
    """Processes whose command line or cwd mentions ``text`` (a test's own temp roots)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmd and state != "Z":
            found.append(int(entry))
    return found


def _mounts_under(path: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(path)]


class Daemon:
    """A real tugd in its own roots. ``call`` talks to it with the blocking client."""

    def __init__(
        self, base: str, backend: str = "asyncio", extra: list[str] | None = None, runtime: str = "runc"
    ) -> None:
        self.base = base
        self.root = os.path.join(base, "root")
        self.state = os.path.join(base, "st")
        self.socket = os.path.join(self.state, "tugd.sock")
        self.backend = backend
        self.extra = extra or []
        self.runtime = runtime
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = os.path.join(base, "tugd.log")

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "TUGBOAT_SOCKET": self.socket}

    def start(self, timeout: float = 20.0) -> None:
        """Start tugd and wait for its sd_notify READY=1 on a socket of ours (no polling)."""
        notify_path = os.path.join(self.base, "notify.sock")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(notify_path)
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(notify_path)
        notify.settimeout(timeout)
        log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                TUGD,
                "--root",
                self.root,
                "--state",
                self.state,
                "--backend",
                self.backend,
                "--runtime",
                self.runtime,
                *self.extra,
            ],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "NOTIFY_SOCKET": notify_path},
        )
        log.close()
        try:
            while True:
                try:
                    msg = notify.recv(4096).decode()
                except TimeoutError:
                    raise RuntimeError(f"tugd did not get ready:\n{self.read_log()}") from None
                if "READY=1" in msg:
                    return
        finally:
            notify.close()

    def read_log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self.proc = None

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

    def restart(self) -> None:
        self.stop()
        self.start()

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        from tugwire.syncclient import Client

        client = Client(self.socket)
        try:
            return client.call(method, params or {})
        finally:
            client.close()

    def tug(
        self, *args: str, check: bool = True, input: bytes | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[bytes]:
        result = subprocess.run(
            [TUG, "--socket", self.socket, *args],
            capture_output=True,
            input=input,
            timeout=timeout,
            stdin=None if input else subprocess.DEVNULL,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"tug {' '.join(args)} exited {result.returncode}\nstdout: {result.stdout!r}\n"
                f"stderr: {result.stderr!r}"
            )
        return result

    def cleanup(self) -> list[str]:
        """Remove every container, stop tugd, and report anything left behind."""
        problems: list[str] = []
        if self.proc is None and os.path.exists(os.path.join(self.root, "tugboat.db")):
            with contextlib.suppress(Exception):
                self.start()
        if self.proc is not None:
            try:
                for c in self.call("container.list", {"all": True}):
                    try:
                        self.call("container.delete", {"id": c["id"], "force": True})
                    except Exception as exc:
                        problems.append(f"rm -f {c['name']}: {exc}")
            except Exception as exc:
                problems.append(f"listing containers: {exc}")
            self.stop()
        deadline = time.monotonic() + 10
        while (left := _pids_mentioning(self.base)) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in left:
            problems.append(f"process left: {pid}")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for m in _mounts_under(self.base):
            problems.append(f"mount left: {m}")
            subprocess.run(["umount", "-l", m], check=False)
        runc_root = os.path.join(self.state, "runc")
        if os.path.isdir(runc_root) and os.listdir(runc_root):
            problems.append(f"runc state left: {os.listdir(runc_root)}")
            for cid in os.listdir(runc_root):
                subprocess.run(["runc", "--root", runc_root, "delete", "--force", cid], check=False)
        return problems


@pytest.fixture
def make_daemon(busybox_tar: str) -> Iterator[Any]:
    """A factory of started tugd instances with the busybox image imported; each is cleaned up
    and checked for leftovers at the end of the test."""
    daemons: list[Daemon] = []
    bases: list[str] = []

    def factory(
        backend: str = "asyncio", extra: list[str] | None = None, image: bool = True, runtime: str = "runc"
    ) -> Daemon:
        # Short roots: unix socket paths are limited to 108 bytes.
        base = tempfile.mkdtemp(prefix="tb", dir="/tmp")
        bases.append(base)
        d = Daemon(base, backend, extra, runtime)
        daemons.append(d)
        d.start()
        if image:
            d.call("image.import", {"path": busybox_tar, "ref": "busybox"})
        return d

    yield factory
    problems = []
    for d in daemons:
        problems += d.cleanup()
    for base in bases:
        shutil.rmtree(base, ignore_errors=True)
    assert not problems, f"left behind: {problems}"


@pytest.fixture(params=["asyncio", "trio"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def daemon(make_daemon: Any) -> Daemon:
    d: Daemon = make_daemon()
    return d


def ps_json(d: Daemon) -> list[dict[str, Any]]:
    out = d.tug("ps", "-a", "--format", "json").stdout.decode()
    return [json.loads(line) for line in out.splitlines() if line.strip()]
