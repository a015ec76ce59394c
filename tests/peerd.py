"""Tugboat's peers, run privately: containerd, podman and the reference dockerd (20.10).

The binaries come from Debian's packages unpacked by ``scripts/install-peers.sh`` into
``/var/cache/tugboat-peers/root`` (``TUGBOAT_PEERS`` to move it); nothing here installs anything.
:func:`missing` says why a peer cannot run, so that a benchmark reports it as missing and a test
skips with that reason.

Everything a peer keeps lives under a directory the caller gives (short: unix socket paths must
fit 107 bytes): containerd's root, state and sockets, dockerd's data-root and exec-root,
podman's ``--root``/``--runroot`` and configuration. dockerd runs in a network namespace of its
own (``ip netns add``, entered with ``nsenter --net``, never ``ip netns exec``, which mounts a
fresh /sys and hides the cgroup v1 hierarchies), with its own containerd in it, so its bridge and
addresses never touch the host's network. :meth:`Daemon.stop` and :func:`sweep` stop what was
started by pid, unmount what is left under the directory and delete the namespace.

Used by the tests (``tests/test_docker_reference.py``) and the benchmarks (``bench/start.py``,
``bench/docker.py``, as ``tests.peerd``); only the standard library.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence

PEERS = os.environ.get("TUGBOAT_PEERS", "/var/cache/tugboat-peers")
ROOT = os.path.join(PEERS, "root")
INSTALL_HINT = "run scripts/install-peers.sh (make peers) to unpack it"
DOCKER_CLI = "/usr/local/bin/docker"
RUNC = shutil.which("runc") or "/usr/sbin/runc"

BINARIES = {
    "containerd": ["usr/bin/containerd", "usr/bin/containerd-shim-runc-v2", "usr/bin/ctr"],
    "podman": ["usr/bin/podman", "usr/bin/conmon", "usr/share/containers/seccomp.json"],
    "dockerd": ["usr/sbin/dockerd", "usr/bin/containerd", "usr/bin/containerd-shim-runc-v2"],
}


def path(rel: str) -> str:
    return os.path.join(ROOT, rel)


def missing(peer: str) -> str | None:
    """Why ``peer`` (containerd, podman, dockerd, docker-cli) cannot run here, or None."""
    if peer == "docker-cli":
        return None if os.access(DOCKER_CLI, os.X_OK) else f"the docker CLI {DOCKER_CLI} is not there"
    if os.geteuid() != 0:
        return "needs root"
    for rel in BINARIES[peer]:
        if not os.path.exists(path(rel)):
            return f"{peer}: {path(rel)} is missing ({INSTALL_HINT})"
    if shutil.which("runc") is None:
        return "runc is not installed"
    return None


def env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a peer runs in: the unpacked binaries first on PATH, their libraries."""
    e = dict(os.environ)
    e.pop("NOTIFY_SOCKET", None)
    e["PATH"] = f"{path('usr/bin')}:{path('usr/sbin')}:" + e.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    e["LD_LIBRARY_PATH"] = path("usr/lib/x86_64-linux-gnu")
    if extra:
        e.update(extra)
    return e


def wait_socket(sock: str, proc: subprocess.Popen[bytes], log: str, timeout: float = 30) -> None:
    """Until ``sock`` accepts a connection; the daemon's exit or the timeout raise."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}: {tail(log)}")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(sock)
                return
            except OSError:
                pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{sock} did not answer in {timeout:g} s: {tail(log)}")
        time.sleep(0.05)


def tail(log: str, n: int = 1500) -> str:
    try:
        with open(log, "rb") as f:
            f.seek(max(0, os.path.getsize(log) - n))
            return f.read().decode(errors="replace")
    except OSError:
        return "(no log)"


class Daemon:
    """A daemon process of ours; stopped by pid (SIGTERM, then SIGKILL after ``grace``)."""

    proc: subprocess.Popen[bytes] | None = None

    def spawn(self, argv: Sequence[str], log: str, environ: dict[str, str]) -> None:
        with open(log, "ab") as f:
            self.proc = subprocess.Popen(
                list(argv), env=environ, stdin=subprocess.DEVNULL, stdout=f, stderr=f, start_new_session=True
            )

    def stop(self, grace: float = 20) -> None:
        p = self.proc
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


class Netns:
    """A named network namespace with only ``lo`` up; :meth:`delete` removes it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.path = f"/run/netns/{name}"
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, capture_output=True)

    def enter(self, argv: Sequence[str]) -> list[str]:
        return ["nsenter", f"--net={self.path}", *argv]

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "delete", self.name], check=False, capture_output=True)


class Containerd(Daemon):
    """containerd with its root, state and sockets under ``base`` (no CRI plugin, no /opt)."""

    def __init__(self, base: str, netns: Netns | None = None) -> None:
        self.base = base
        self.netns = netns
        self.sock = os.path.join(base, "c.sock")
        self.log = os.path.join(base, "containerd.log")
        self.config = os.path.join(base, "containerd.toml")
        os.makedirs(base, exist_ok=True)
        with open(self.config, "w") as f:
            f.write(
                "version = 2\n"
                f'root = "{base}/root"\n'
                f'state = "{base}/state"\n'
                'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
                f'[grpc]\n  address = "{self.sock}"\n'
                f'[ttrpc]\n  address = "{self.sock}.ttrpc"\n'
                '[metrics]\n  address = ""\n'
                f'[plugins."io.containerd.internal.v1.opt"]\n  path = "{base}/opt"\n'
            )

    def start(self) -> None:
        # containerd 1.6 puts its shims' sockets in /run/containerd/s whatever its state dir:
        # the directories go again at the stop if they were ours (and are empty).
        self.made_run_containerd = not os.path.exists("/run/containerd")
        argv = [path("usr/bin/containerd"), "--config", self.config]
        self.spawn(self.netns.enter(argv) if self.netns else argv, self.log, env())
        assert self.proc is not None
        wait_socket(self.sock, self.proc, self.log)

    def stop(self, grace: float = 20) -> None:
        super().stop(grace)
        if getattr(self, "made_run_containerd", False):
            for d in ("/run/containerd/s", "/run/containerd/fifo", "/run/containerd"):
                with contextlib.suppress(OSError):
                    os.rmdir(d)

    @property
    def fifo_dir(self) -> str:
        """For ``ctr run --fifo-dir`` (instead of /run/containerd/fifo)."""
        return os.path.join(self.base, "fifo")

    def ctr(self, *args: str, namespace: str = "bench") -> list[str]:
        return [path("usr/bin/ctr"), "--address", self.sock, "--namespace", namespace, *args]

    @property
    def runc_root(self) -> str:
        """Where ``ctr run --runc-root`` keeps runc's state (instead of /run/containerd/runc)."""
        return os.path.join(self.base, "runc")


class Dockerd(Daemon):
    """The reference dockerd 20.10 in a network namespace of its own, with its own containerd,
    data-root, exec-root and socket under ``base``; ``docker_env`` points the docker CLI at it."""

    def __init__(self, base: str, netns_name: str) -> None:
        self.base = base
        os.makedirs(base, exist_ok=True)
        self.netns = Netns(netns_name)
        self.containerd = Containerd(os.path.join(base, "ctd"), self.netns)
        self.sock = os.path.join(base, "docker.sock")
        self.log = os.path.join(base, "dockerd.log")
        self.config = os.path.join(base, "daemon.json")
        with open(self.config, "w") as f:
            json.dump(
                {
                    "iptables": False,
                    "ip-masq": False,
                    "userland-proxy": False,
                    # else /etc/docker/key.json on the host
                    "deprecated-key-path": os.path.join(base, "key.json"),
                },
                f,
            )
        # dockerd makes /run/docker/plugins whatever its exec-root: removed again if it was ours.
        self.made_run_docker = not os.path.exists("/run/docker")

    def start(self) -> None:
        self.containerd.start()
        argv = [
            path("usr/sbin/dockerd"),
            "--config-file", self.config,
            "--containerd", self.containerd.sock,
            "--data-root", os.path.join(self.base, "data"),
            "--exec-root", os.path.join(self.base, "exec"),
            "--pidfile", os.path.join(self.base, "dockerd.pid"),
            "-H", f"unix://{self.sock}",
        ]  # fmt: skip
        self.spawn(self.netns.enter(argv), self.log, env())
        assert self.proc is not None
        wait_socket(self.sock, self.proc, self.log, timeout=60)

    @property
    def docker_env(self) -> dict[str, str]:
        cli = os.path.join(self.base, "cli")
        return {**os.environ, "DOCKER_HOST": f"unix://{self.sock}", "DOCKER_CONFIG": cli}

    def stop(self, grace: float = 20) -> None:
        try:
            super().stop(grace)
            self.containerd.stop(grace)
        finally:
            sweep(self.base)
            self.netns.delete()
            if self.made_run_docker:
                with contextlib.suppress(OSError):
                    os.rmdir("/run/docker/plugins")
                    os.rmdir("/run/docker")


class Podman:
    """``podman`` with private ``--root``/``--runroot``/``--tmpdir`` and configuration under
    ``base`` (runc, cgroupfs, file events, an empty CNI directory): it leaves nothing outside."""

    def __init__(self, base: str) -> None:
        self.base = base
        os.makedirs(os.path.join(base, "cni"), exist_ok=True)
        self.conf = os.path.join(base, "containers.conf")
        with open(self.conf, "w") as f:
            f.write(
                "[containers]\n"
                # podman's own defaults (nofile 1048576, nproc above what its runc init may
                # have) fail in runc where root lacks CAP_SYS_RESOURCE (here): tugd's nofile, and
                # an nproc that passes (podman sets one, tugd none)
                'default_ulimits = ["nofile=20000:20000", "nproc=20000:20000"]\n'
                f'seccomp_profile = "{path("usr/share/containers/seccomp.json")}"\n'
                "[network]\n"
                f'cni_plugin_dirs = ["/usr/lib/cni"]\n'
                f'network_config_dir = "{base}/cni"\n'
                "[engine]\n"
                f'conmon_path = ["{path("usr/bin/conmon")}"]\n'
                'cgroup_manager = "cgroupfs"\n'
                'events_logger = "file"\n'
                f'events_logfile_path = "{base}/events.log"\n'
                f'tmp_dir = "{base}/tmp"\n'
                f'static_dir = "{base}/root/libpod"\n'
                f'volume_path = "{base}/root/volumes"\n'
                'runtime = "runc"\n'
                # conmon runs `podman container cleanup` at the exit with only these variables:
                # without them it cannot load podman's libraries nor find this configuration
                "conmon_env_vars = [\n"
                f'  "PATH={path("usr/bin")}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",\n'
                f'  "LD_LIBRARY_PATH={path("usr/lib/x86_64-linux-gnu")}",\n'
                f'  "CONTAINERS_CONF={self.conf}",\n'
                f'  "CONTAINERS_STORAGE_CONF={base}/storage.conf",\n'
                "]\n"
            )
        self.storage = os.path.join(base, "storage.conf")
        with open(self.storage, "w") as f:
            f.write(f'[storage]\ndriver = "overlay"\nrunroot = "{base}/run"\ngraphroot = "{base}/root"\n')

    def argv(self, *args: str) -> list[str]:
        return [
            path("usr/bin/podman"),
            "--root", os.path.join(self.base, "root"),
            "--runroot", os.path.join(self.base, "run"),
            "--tmpdir", os.path.join(self.base, "tmp"),
            "--runtime", RUNC,
            "--cgroup-manager", "cgroupfs",
            "--events-backend", "file",
            *args,
        ]  # fmt: skip

    @property
    def env(self) -> dict[str, str]:
        return env(
            {
                "CONTAINERS_CONF": self.conf,
                "CONTAINERS_STORAGE_CONF": self.storage,
                "CONTAINERS_REGISTRIES_CONF": path("etc/containers/registries.conf"),
            }
        )

    def stop(self) -> None:
        """podman has no daemon: unmount its storage (``podman system reset`` would too, slower)."""
        sweep(self.base)


def processes_under(base: str) -> list[int]:
    """Pids whose command line mentions ``base`` (our daemons, shims, conmons), not ours."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                if base.encode() in f.read():
                    found.append(int(name))
        except OSError:
            continue
    return found


def sweep(base: str) -> list[str]:
    """Kill what still runs from under ``base`` (by pid), unmount what is mounted under it;
    what was found, for the caller to report."""
    found = []
    for pid in processes_under(base):
        found.append(f"process {pid}")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with open("/proc/self/mounts") as f:
        mounts = [line.split()[1] for line in f if line.split()[1].startswith(base + "/")]
    for m in reversed(mounts):
        found.append(f"mount {m}")
        subprocess.run(["umount", "-l", m], check=False, capture_output=True)
    return found
