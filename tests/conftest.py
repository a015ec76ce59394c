"""Fixtures: a busybox image tar made from the host's busybox-static, and real tugd instances in
their own temporary roots that must leave nothing behind."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .waiting import WaitTimeout, wait_until

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
    """Processes whose command line or stdout mentions ``text`` (a test's own temp roots). A
    shim's command line is its title (``tug-shim ID``); its stdout, the ``shim.log`` in its state
    dir, says whose it is."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            if text not in cmd:
                with contextlib.suppress(OSError):
                    cmd += " " + os.readlink(f"/proc/{entry}/fd/1")
        except OSError:
            continue
        if text in cmd and state != "Z":
            found.append(int(entry))
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _mounts_under(path: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(path)]


class TugdExited(Exception):
    """tugd ended before it was ready; ``log`` is what it wrote."""

    def __init__(self, log: str) -> None:
        super().__init__(log)
        self.log = log


class Daemon:
    """A real tugd in its own roots. ``call`` talks to it with the blocking client."""

    def __init__(
        self,
        base: str,
        backend: str = "asyncio",
        extra: list[str] | None = None,
        runtime: str = "runc",
        netns: str | None = None,
    ) -> None:
        self.base = base
        # A network namespace (a name under /run/netns) tugd runs in; without one, tugd runs in the
        # host's and its containers default to --network none: nothing touches the host's network.
        self.netns = netns
        self.root = os.path.join(base, "root")
        self.state = os.path.join(base, "st")
        self.socket = os.path.join(self.state, "tugd.sock")
        self.backend = backend
        self.extra = extra or []
        # Metrics on for every test tugd, each on a port of its own (never the default 9323).
        self.metrics_port = 0
        if "--metrics-address" not in self.extra:
            self.metrics_port = free_port()
            self.extra = [*self.extra, "--metrics-address", f"127.0.0.1:{self.metrics_port}"]
        if netns is None and "--default-network" not in self.extra:
            self.extra = [*self.extra, "--default-network", "none"]
        self.runtime = runtime
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = os.path.join(base, "tugd.log")
        self.start_env: dict[str, str] = {}  # extra environment of the next start (failpoints)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "TUGBOAT_SOCKET": self.socket}

    def start(self, timeout: float = 20.0) -> None:
        """Start tugd and wait for its sd_notify READY=1. The metrics port was free when it was
        chosen; if another process took it meanwhile, tugd says so and exits: a new one, again."""
        for _ in range(3):
            try:
                self._start_once(timeout)
                return
            except TugdExited as exc:
                taken = f"cannot serve metrics on 127.0.0.1:{self.metrics_port}: Address already in use"
                if not self.metrics_port or taken not in exc.log:
                    raise RuntimeError(f"tugd did not get ready:\n{exc.log}") from None
                old = f"127.0.0.1:{self.metrics_port}"
                self.metrics_port = free_port()
                self.extra = [f"127.0.0.1:{self.metrics_port}" if a == old else a for a in self.extra]
        raise RuntimeError(f"tugd did not get ready:\n{self.read_log()}")

    def _start_once(self, timeout: float) -> None:
        """One start: READY=1 on a socket of ours (no polling), or TugdExited with its log."""
        notify_path = os.path.join(self.base, "notify.sock")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(notify_path)
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(notify_path)
        log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                *(["nsenter", f"--net=/run/netns/{self.netns}"] if self.netns else []),
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
            env={**os.environ, **self.start_env, "NOTIFY_SOCKET": notify_path},
        )
        log.close()
        proc = self.proc
        deadline = time.monotonic() + timeout
        try:
            while True:
                # In slices: a tugd that exits at start is seen at once, not after the timeout.
                notify.settimeout(min(0.5, max(0.01, deadline - time.monotonic())))
                try:
                    msg = notify.recv(4096).decode()
                except TimeoutError:
                    if proc.poll() is not None:  # self.proc stays: its exit status is there to read
                        raise TugdExited(self.read_log()) from None
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"tugd did not get ready:\n{self.read_log()}") from None
                    continue
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
            with contextlib.suppress(Exception):  # pods (a tugd without pod.* has none)
                for p in self.call("pod.list"):
                    try:
                        self.call("pod.remove", {"id": p["id"]})
                    except Exception as exc:
                        problems.append(f"pod rm {p['name']}: {exc}")
            self.stop()
        with contextlib.suppress(WaitTimeout):  # what is still there after 10 s is reported below
            wait_until(lambda: not _pids_mentioning(self.base), 10, "the processes of this tugd to go")
        for pid in _pids_mentioning(self.base):
            problems.append(f"process left: {pid}")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        problems += self.host_leftovers()
        for m in _mounts_under(self.base):
            problems.append(f"mount left: {m}")
            subprocess.run(["umount", "-l", m], check=False)
        runc_root = os.path.join(self.state, "runc")
        if os.path.isdir(runc_root) and os.listdir(runc_root):
            problems.append(f"runc state left: {os.listdir(runc_root)}")
            for cid in os.listdir(runc_root):
                subprocess.run(["runc", "--root", runc_root, "delete", "--force", cid], check=False)
        return problems

    def host_leftovers(self) -> list[str]:
        """Links and nft tables of this tugd's instance left in the host's namespace (a tugd in
        a test namespace leaves them there, deleted with it); each is removed."""
        if self.netns is not None:
            return []
        from supervisor.network import host

        alias, table = f"alias tugboat {host.instance_id(self.root)} ", host.table_name(self.root)
        found = [
            line.split(":")[1].strip() for line in _run_out(["ip", "-o", "link", "show"]) if alias in line
        ]
        found += [line for line in _run_out(["nft", "list", "tables"]) if line.endswith(" " + table)]
        if found:
            subprocess.run([TUGD, "--root", self.root, "--state", self.state, "--cleanup"], check=False)
        return [f"left on the host: {f}" for f in found]


def _run_out(cmd: list[str]) -> list[str]:
    if shutil.which(cmd[0]) is None:
        return []
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    return res.stdout.splitlines()


def make_test_netns(names: list[str]) -> str:
    """A new network namespace with only its loopback, up (``ip netns``: the test harness may
    use ``ip``; tugd itself never does). Recorded in ``names`` for its deletion."""
    name = f"tbnet{os.getpid() % 10000}{len(names)}{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    names.append(name)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    return name


def netns_links(ns: str) -> list[str]:
    """The names of the links of a test namespace."""
    out = subprocess.run(["ip", "-n", ns, "-o", "link", "show"], capture_output=True, text=True).stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line]


@pytest.fixture
def make_daemon(busybox_tar: str) -> Iterator[Any]:
    """A factory of started tugd instances with the busybox image imported; each is cleaned up
    and checked for leftovers at the end of the test."""
    daemons: list[Daemon] = []
    bases: list[str] = []
    netnses: list[str] = []

    def factory(
        backend: str = "asyncio",
        extra: list[str] | None = None,
        image: bool = True,
        runtime: str = "runc",
        netns: bool | str = False,
    ) -> Daemon:
        """``netns``: True for a new namespace, or the name of one made by ``factory.new_netns()``
        (several tugd side by side in one)."""
        # Short roots: unix socket paths are limited to 108 bytes.
        base = tempfile.mkdtemp(prefix="tb", dir="/tmp")
        bases.append(base)
        ns = netns if isinstance(netns, str) else make_test_netns(netnses) if netns else None
        d = Daemon(base, backend, extra, runtime, netns=ns)
        daemons.append(d)
        d.start()
        if image:
            d.call("image.import", {"path": busybox_tar, "ref": "busybox"})
        return d

    factory.new_netns = lambda: make_test_netns(netnses)  # type: ignore[attr-defined]
    yield factory
    problems = []
    for d in daemons:
        problems += d.cleanup()
    for ns in netnses:
        problems += [f"link left in netns {ns}: {name}" for name in netns_links(ns) if name.startswith("tv")]
        subprocess.run(["ip", "netns", "del", ns], check=False)
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


# ------------------------------------------------------------------------- metrics: Prometheus

needs_prometheus = pytest.mark.skipif(
    shutil.which("prometheus") is None or shutil.which("promtool") is None,
    reason="needs the prometheus package (prometheus, promtool)",
)


def http_ready(
    proc: subprocess.Popen[bytes] | None, url: str, ok: tuple[int, ...], read_log: Callable[[], str]
) -> bool:
    """Whether a server we started answers ``url`` with one of ``ok`` (a readiness poll, for
    servers that notify nobody); raises if it exited."""
    assert proc is not None
    if proc.poll() is not None:
        raise RuntimeError(f"{proc.args!r} exited {proc.returncode}:\n{read_log()}")
    with contextlib.suppress(OSError):
        return http_get(url, timeout=1)[0] in ok
    return False


def http_get(url: str, headers: dict[str, str] | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
    """(status, body) of a GET; an HTTP error status is returned, not raised."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())


class Prometheus:
    """A real Prometheus server on a free loopback port, scraping ``targets`` every second, with
    its data in a temporary directory. Killed by its pid at the end."""

    def __init__(self, base: str, targets: list[str]) -> None:
        self.base = base
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "tugd", "static_configs": [{"targets": targets}]}],
        }
        self.config_path = os.path.join(base, "prometheus.yml")
        with open(self.config_path, "w") as f:
            json.dump(config, f)  # JSON is YAML
        self.log_path = os.path.join(base, "prometheus.log")

    def start(self, timeout: float = 30.0) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    "prometheus",
                    f"--config.file={self.config_path}",
                    f"--storage.tsdb.path={os.path.join(self.base, 'data')}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )
        wait_until(  # Prometheus has no readiness notification of its own: poll /-/ready
            lambda: http_ready(self.proc, self.url + "/-/ready", (200,), self.read_log),
            timeout,
            "prometheus to be ready",
            interval=0.1,
            describe=self.read_log,
        )

    def read_log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()[-4000:]

    def api(self, path: str, **params: str) -> Any:
        """A call to the HTTP API; returns the whole JSON answer (``status`` included)."""
        import urllib.parse

        _status, body = http_get(f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}")
        return json.loads(body)

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query that must succeed; its result vector."""
        answer = self.api("query", query=expr)
        assert answer["status"] == "success", (expr, answer)
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def value(self, expr: str) -> float | None:
        """The one value of a query that returns at most one series (None: no series)."""
        result = self.query(expr)
        assert len(result) <= 1, (expr, result)
        return float(result[0]["value"][1]) if result else None

    def wait_for(self, expr: str, check: Any, timeout: float = 30.0) -> float:
        """Poll ``expr`` until ``check(value)`` holds; scrapes come every second, so this is a
        bounded wait for the next scrapes, not a sleep for synchronisation."""

        def holds() -> tuple[float] | None:
            value = self.value(expr)
            return (value,) if value is not None and check(value) else None

        [value] = wait_until(
            holds, timeout, f"{expr} to pass its check", interval=0.25, describe=lambda: self.value(expr)
        )
        return value

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


@pytest.fixture
def make_prometheus() -> Iterator[Any]:
    """A factory of started Prometheus servers scraping the given ``host:port`` targets."""
    servers: list[Prometheus] = []
    bases: list[str] = []

    def factory(targets: list[str]) -> Prometheus:
        base = tempfile.mkdtemp(prefix="prom", dir="/tmp")
        bases.append(base)
        prom = Prometheus(base, targets)
        servers.append(prom)
        prom.start()
        return prom

    yield factory
    for prom in servers:
        prom.stop()
    for base in bases:
        shutil.rmtree(base, ignore_errors=True)
