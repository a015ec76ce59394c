"""systemd integration, checked with the real tools: ``systemd-analyze verify`` on the units as
``scripts/install-systemd.sh`` installs them, ``systemd-socket-activate`` handing tugd its socket,
and sd_notify (READY, STATUS, WATCHDOG, STOPPING) on a notify socket the test binds itself."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from supervisor import systemd
from tugwire.syncclient import Client, Disconnected

from .conftest import REPO, TUGD, Daemon, needs_root, needs_runc
from .helpers import run, start
from .waiting import wait_until

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
SOCKET_ACTIVATE = shutil.which("systemd-socket-activate")
needs_analyze = pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="needs systemd-analyze")
needs_activate = pytest.mark.skipif(SOCKET_ACTIVATE is None, reason="needs systemd-socket-activate")


# ------------------------------------------------------------------------------------ the units


def _install(destdir: str) -> str:
    """Run scripts/install-systemd.sh into ``destdir``; returns the unit directory."""
    result = subprocess.run(
        ["bash", os.path.join(REPO, "scripts", "install-systemd.sh")],
        env={**os.environ, "DESTDIR": destdir},
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return os.path.join(destdir, "etc", "systemd", "system")


def _verify(*units: str) -> subprocess.CompletedProcess[bytes]:
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run([SYSTEMD_ANALYZE, "verify", *units], capture_output=True, timeout=60)


def _settings(path: str) -> dict[str, str]:
    out = {}
    with open(path) as f:
        for line in f:
            key, sep, value = line.strip().partition("=")
            if sep and not key.startswith("#"):
                out[key] = value
    return out


@needs_analyze
def test_installed_units_pass_systemd_analyze_verify(tmp_path: Any) -> None:
    unitdir = _install(str(tmp_path / "dest"))
    service = os.path.join(unitdir, "tugd.service")
    sock = os.path.join(unitdir, "tugd.socket")
    result = _verify(service, sock)
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")
    s = _settings(service)
    assert s["ExecStart"] == TUGD  # this checkout's tugd, an existing executable
    assert os.access(s["ExecStart"], os.X_OK)
    for key, value in {
        "Type": "notify",
        "KillMode": "process",
        "Delegate": "yes",
        "Restart": "always",
        "Requires": "tugd.socket",
    }.items():
        assert s[key] == value, key
    assert "ProtectSystem" not in s and "PrivateTmp" not in s and "NoNewPrivileges" not in s
    k = _settings(sock)
    assert k["ListenStream"] == "/run/tugboat/tugd.sock"
    assert (k["SocketMode"], k["FileDescriptorName"]) == ("0660", "tugd.sock")
    assert k["FileDescriptorName"] in systemd.API_FD_NAMES
    # Verify is not silent by accident: a broken copy makes it speak.
    broken = tmp_path / "broken"
    broken.mkdir()
    with open(service) as f:
        (broken / "tugd.service").write_text(f.read().replace("KillMode=process", "KillMode=bogus"))
    shutil.copy(sock, broken / "tugd.socket")
    assert b"bogus" in _verify(str(broken / "tugd.service")).stderr


@needs_root
def test_tmpfiles_entry_makes_the_roots(tmp_path: Any) -> None:
    tmpfiles = shutil.which("systemd-tmpfiles")
    if tmpfiles is None:
        pytest.skip("needs systemd-tmpfiles")
    dest = tmp_path / "dest"
    _install(str(dest))
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\ntugboat:x:4242:\n")
    conf = dest / "etc" / "tmpfiles.d" / "tugboat.conf"
    result = subprocess.run(
        [tmpfiles, "--create", f"--root={root}", str(conf)], capture_output=True, timeout=60
    )
    assert (result.returncode, result.stderr) == (0, b"")
    st = os.stat(root / "run" / "tugboat")
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o710, 0, 4242)
    assert os.stat(root / "var" / "lib" / "tugboat").st_mode & 0o7777 == 0o700


# ------------------------------------------------------------------------ the protocols, unit


def test_notifier_reads_and_removes_its_environment(tmp_path: Any) -> None:
    env = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "500000", "WATCHDOG_PID": str(os.getpid()), "HOME": "/"}
    n = systemd.Notifier.from_environment(env)
    assert (n.address, n.watchdog_usec) == ("@x", 500000)
    assert env == {"HOME": "/"}  # children (template, shims, runc) must not inherit them
    n = systemd.Notifier.from_environment({"NOTIFY_SOCKET": "/n", "WATCHDOG_USEC": "5", "WATCHDOG_PID": "1"})
    assert n.watchdog_usec is None  # meant for another process
    n = systemd.Notifier.from_environment({})
    assert not n.enabled and n.notify("READY=1") is False
    # Messages arrive as datagrams; a gone listener is not an error.
    path = str(tmp_path / "n.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(path)
        n = systemd.Notifier(path)
        n.status("two\nlines")
        n.stopping_now()
        n.stopping_now()
        listener.settimeout(5)
        assert listener.recv(100) == b"STATUS=two lines"
        assert listener.recv(100) == b"STOPPING=1"
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.recv(100)
    assert systemd.Notifier(path).notify("READY=1") is False


def test_listen_fds_only_for_our_pid() -> None:
    env = {"LISTEN_PID": "1", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "tugd.sock"}
    assert systemd.listen_fds(env) == []
    assert env == {}
    env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "0"}
    assert systemd.listen_fds(env) == []


def test_api_socket_picks_the_named_unix_stream_listener(tmp_path: Any) -> None:
    stream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stream.bind(str(tmp_path / "a.sock"))
    stream.listen()
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.bind(str(tmp_path / "b.sock"))
    other.listen()
    dgram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    unlistened = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    fds = [stream.fileno(), other.fileno(), dgram.fileno(), unlistened.fileno()]
    try:
        assert systemd.api_socket([]) is None
        got = systemd.api_socket([(other.fileno(), "metrics"), (stream.fileno(), "tugd.sock")])
        assert got is not None and got.fileno() == stream.fileno()
        got.detach()
        got = systemd.api_socket([(stream.fileno(), "stored")])  # the only one, whatever its name
        assert got is not None
        got.detach()
        with pytest.raises(systemd.ActivationError, match="none is named"):
            systemd.api_socket([(stream.fileno(), "x"), (other.fileno(), "y")])
        with pytest.raises(systemd.ActivationError, match="not a Unix stream"):
            systemd.api_socket([(dgram.fileno(), "tugd.sock")])
        with pytest.raises(systemd.ActivationError, match="not listening"):
            systemd.api_socket([(unlistened.fileno(), "tugd.sock")])
        r, w = os.pipe()
        try:
            with pytest.raises(systemd.ActivationError, match="not a socket"):
                systemd.api_socket([(r, "tugd.sock")])
        finally:
            os.close(r)
            os.close(w)
    finally:
        for s in (stream, other, dgram, unlistened):
            s.close()
    assert all(_closed(fd) for fd in fds)


def _closed(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False


# ------------------------------------------------------------- socket activation, real tugd


class NotifyListener:
    """A datagram socket of the test's own, as systemd's NOTIFY_SOCKET; a thread keeps every
    message it receives."""

    def __init__(self, path: str) -> None:
        self.path = path
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.messages: list[str] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except OSError:
                return
            with self._cond:
                self.messages.append(data.decode())
                self._cond.notify_all()

    def wait_for(self, predicate: Callable[[list[str]], bool], timeout: float = 20) -> list[str]:
        """Wait until ``predicate(messages)`` holds; returns the messages."""
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self.messages), timeout):
                raise AssertionError(f"notify messages so far: {self.messages}")
            return list(self.messages)

    def lines(self, prefix: str) -> list[str]:
        with self._cond:
            return [line for m in self.messages for line in m.split("\n") if line.startswith(prefix)]

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(5)


class ActivatedDaemon(Daemon):
    """tugd started by ``systemd-socket-activate``, which binds the API socket, waits for the
    first connection and then execs tugd with LISTEN_FDS=1 (so its pid is tugd's)."""

    def __init__(self, base: str, env: dict[str, str]) -> None:
        super().__init__(base)
        self.extra_env = env
        self.notify: NotifyListener | None = None
        self.first_answer: Any = None

    def start(self, timeout: float = 20.0) -> None:
        assert SOCKET_ACTIVATE is not None
        os.makedirs(self.state, mode=0o700, exist_ok=True)
        if self.notify is not None:
            self.notify.close()
        self.notify = NotifyListener(os.path.join(self.base, "notify.sock"))
        setenv = ["-E", f"NOTIFY_SOCKET={self.notify.path}", "-E", "PATH"]
        for key, value in self.extra_env.items():
            setenv += ["-E", f"{key}={value}"]
        argv = [SOCKET_ACTIVATE, "-l", self.socket, "--fdname=tugd.sock", *setenv]
        argv += [TUGD, "--root", self.root, "--state", self.state, *self.extra]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        # systemd-socket-activate binds, then execs tugd on the first connection: make it. (The
        # socket's appearance has no event to wait on; the connection then waits in the backlog.)
        proc = self.proc

        def connected() -> Client | None:
            if proc.poll() is not None:
                raise RuntimeError(f"systemd-socket-activate exited:\n{self.read_log()}")
            try:
                return Client(self.socket)
            except Disconnected:
                return None

        client = wait_until(connected, timeout, "systemd-socket-activate to listen", describe=self.read_log)
        with client:
            rid = client.send("system.info")
            self.notify.wait_for(lambda ms: any("READY=1" in m for m in ms), timeout)
            self.first_answer = client.wait_for(rid)


@pytest.fixture
def activated(busybox_tar: str) -> Iterator[Callable[..., ActivatedDaemon]]:
    daemons: list[ActivatedDaemon] = []

    def factory(env: dict[str, str] | None = None) -> ActivatedDaemon:
        d = ActivatedDaemon(tempfile.mkdtemp(prefix="tb", dir="/tmp"), env or {})
        daemons.append(d)
        d.start()
        d.call("image.import", {"path": busybox_tar, "ref": "busybox"})
        return d

    yield factory
    problems = []
    for d in daemons:
        problems += d.cleanup()
        if d.notify is not None:
            d.notify.close()
        shutil.rmtree(d.base, ignore_errors=True)
    assert not problems, f"left behind: {problems}"


def activation(fn: Any) -> Any:
    """Real tugd under systemd-socket-activate, real shims and runc."""
    return pytest.mark.integration(needs_root(needs_runc(needs_activate(fn))))


def _environ(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        items = [i.decode(errors="replace") for i in f.read().split(b"\0") if i]
    return dict(i.partition("=")[::2] for i in items)


@activation
def test_socket_activation_ready_status_and_the_api(activated: Any) -> None:
    d = activated()
    assert d.notify is not None
    # The first client, the one that triggered the activation, got its answer on that socket.
    assert d.first_answer["socket"] == d.socket
    assert "(socket activation)" in d.read_log()
    ready = next(m for m in d.notify.messages if "READY=1" in m)
    assert "STATUS=0 running, 0 containers, 0 images" in ready.split("\n")
    # STATUS follows changes.
    cid = start(d, ["sleep", "1000"], name="s")
    d.notify.wait_for(lambda ms: "STATUS=1 running, 1 containers, 1 images" in ms)
    # Nothing of systemd's protocol reaches the children (runc would proxy NOTIFY_SOCKET). The
    # shim's environment is the one the template was started with, from tugd's.
    info = d.call("container.inspect", {"id": cid})
    env = _environ(info["shim_pid"])
    assert not {"NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"} & set(env), env
    assert "PATH" in env
    shim_fds = os.listdir(f"/proc/{info['shim_pid']}/fd")
    assert all(os.readlink(f"/proc/{info['shim_pid']}/fd/{fd}") != os.readlink(f"/proc/{d.proc.pid}/fd/3")
               for fd in shim_fds)  # fmt: skip
    d.call("container.stop", {"id": cid, "timeout": 0})
    d.notify.wait_for(lambda ms: "STATUS=0 running, 1 containers, 1 images" in ms)


@activation
def test_watchdog_pings_at_half_the_interval(activated: Any) -> None:
    d = activated({"WATCHDOG_USEC": "200000"})
    assert d.notify is not None
    t0 = time.monotonic()
    d.notify.wait_for(lambda ms: ms.count("WATCHDOG=1") >= 6, timeout=10)
    assert time.monotonic() - t0 < 5
    cid = start(d, ["sleep", "1000"])
    assert "WATCHDOG_USEC" not in _environ(d.call("container.inspect", {"id": cid})["shim_pid"])


@activation
def test_sigterm_leaves_containers_running_and_a_new_tugd_picks_them_up(activated: Any) -> None:
    d = activated()
    assert d.notify is not None and d.proc is not None
    cid = start(d, ["sh", "-c", "echo up; sleep 1000"], name="keeper")
    done, _ = run(d, ["sh", "-c", "exit 4"], name="done")
    info = d.call("container.inspect", {"id": cid})
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(timeout=20) == 0
    d.proc = None
    assert "STOPPING=1" in d.notify.messages
    assert os.path.exists(d.socket)  # the socket is systemd's: tugd leaves it alone
    os.kill(info["pid"], 0)  # the container and its shim still run
    os.kill(info["shim_pid"], 0)
    d.start()  # a new activation, a new tugd
    again = d.call("container.inspect", {"id": "keeper"})
    assert (again["state"], again["pid"], again["shim_pid"]) == ("running", info["pid"], info["shim_pid"])
    assert d.call("container.inspect", {"id": done})["exit_code"] == 4
    # The events from before the restart are still there.
    r = d.tug("events", "--since", "1h", "--until", "0s", "--filter", "container=keeper")
    assert [line.split()[2] for line in r.stdout.decode().splitlines()] == ["create", "start"]
    assert d.call("container.stop", {"id": cid, "timeout": 0})["exit_code"] == 137
