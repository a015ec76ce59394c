"""A real kubelet for tests/test_kubelet.py (issue 16): kubelet v1.36.3 built by
scripts/install-kubelet.sh (cached outside the repo), run standalone (no API server: static pods
from a directory) in a network namespace the test made, entered with ``nsenter --net`` (``ip netns
exec`` would remount /sys and hide the host's cgroup v1 hierarchies kubelet reads).

What kubelet does to the host, and how the test gives it back:
- it sets six kernel tunables (``vm.overcommit_memory`` = 1, ``vm.panic_on_oom`` = 0,
  ``kernel.panic`` = 10, ``kernel.panic_on_oops`` = 1, ``kernel.keys.root_maxkeys``,
  ``kernel.keys.root_maxbytes``) unless ``protectKernelDefaults``, which makes it refuse to start
  on a host that differs: :class:`Kubelet` saves them before and writes them back after;
- it makes its root directory a shared mount (a bind mount on itself): unmounted after;
- every other path of its own is under a temporary directory: ``--root-dir``, ``--cert-dir`` (not
  under the root directory by default), ``podLogsDir``, ``volumePluginDir`` (else it makes
  ``/usr/libexec/kubernetes/...``);
- it makes ``/var/log/containers`` (the legacy symlinks, a fixed path) if missing: removed after
  if it made it and it is empty.
Its QoS cgroups are off (``cgroupsPerQOS: false``): nothing is made in the host's cgroup tree.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from typing import Any

from supervisor.network.netlink import in_netns

from .waiting import wait_until

VERSION = "v1.36.3"
CACHE = os.environ.get("TUGBOAT_TEST_TOOLS", "/var/cache/tugboat-test-tools")
KUBELET = os.path.join(CACHE, f"kubelet-{VERSION}")
NODE_NAME = "tugboat-node"
LEGACY_LOG_DIR = "/var/log/containers"
KERNEL_TUNABLES = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)


def netns_connect(netns_path: str, host: str, port: int, timeout: float = 5.0) -> socket.socket:
    """A TCP connection made from inside the network namespace at ``netns_path`` (a thread that
    entered it opens the socket; the socket stays in that namespace wherever it is used)."""
    return in_netns(netns_path, lambda: socket.create_connection((host, port), timeout=timeout))


def netns_http_get(
    netns_path: str, host: str, port: int, path: str, timeout: float = 5.0
) -> tuple[int, bytes]:
    """``GET path`` (HTTP/1.0: the answer ends with the connection) from inside the namespace;
    the status and the body."""
    with netns_connect(netns_path, host, port, timeout) as s:
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def try_http_get(netns_path: str, host: str, port: int, path: str) -> tuple[int, bytes] | None:
    """:func:`netns_http_get`, or None while nothing answers (for :func:`wait_until`)."""
    try:
        return netns_http_get(netns_path, host, port, path)
    except OSError:
        return None


def free_port_in(netns_path: str) -> int:
    """A TCP port nobody listens on in the namespace (the kernel's pick of an ephemeral one)."""

    def pick() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    return in_netns(netns_path, pick)


class Kubelet:
    """kubelet standalone: a generated KubeletConfiguration, static pods from ``manifests``,
    its root and pod log directories under a temporary directory of its own, the runtime at
    ``cri_endpoint``; run in the network namespace at ``netns_path``."""

    def __init__(self, netns_path: str, cri_endpoint: str, pod_cidr: str) -> None:
        self.netns_path = netns_path
        self.cri_endpoint = cri_endpoint
        self.pod_cidr = pod_cidr
        self.base = tempfile.mkdtemp(prefix="tbk", dir="/tmp")
        self.root_dir = os.path.join(self.base, "root")
        self.manifests = os.path.join(self.base, "manifests")
        self.pod_logs = os.path.join(self.base, "pod-logs")  # kubelet's /var/log/pods
        self.config_path = os.path.join(self.base, "kubelet.yaml")
        self.log_path = os.path.join(self.base, "kubelet.log")
        for d in (self.root_dir, self.manifests, self.pod_logs):
            os.makedirs(d)
        self.port = free_port_in(netns_path)
        self.read_only_port = free_port_in(netns_path)
        self.healthz_port = free_port_in(netns_path)
        self.proc: subprocess.Popen[bytes] | None = None
        self._tunables: dict[str, str] = {}
        self._made_legacy_log_dir = False

    def config(self) -> dict[str, Any]:
        """The KubeletConfiguration (JSON is YAML): no API server, anonymous read-only access on
        loopback, cgroupfs on cgroup v1, no QoS cgroups, the manifests looked at every second."""
        return {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "staticPodPath": self.manifests,
            "fileCheckFrequency": "1s",
            "syncFrequency": "5s",
            "podLogsDir": self.pod_logs,
            "volumePluginDir": os.path.join(self.base, "volume-plugins"),  # else under /usr/libexec
            "containerRuntimeEndpoint": self.cri_endpoint,
            "cgroupDriver": "cgroupfs",
            "failCgroupV1": False,
            "failSwapOn": False,
            "cgroupsPerQOS": False,
            "enforceNodeAllocatable": [],
            "podCIDR": self.pod_cidr,
            "address": "127.0.0.1",
            "port": self.port,
            "readOnlyPort": self.read_only_port,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": self.healthz_port,
            "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
            "authorization": {"mode": "AlwaysAllow"},
            "registerNode": False,
            "resolvConf": "/etc/resolv.conf",
            # A shared machine: only a disk or memory truly exhausted evicts the test's pod.
            "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
        }

    def start(self, timeout: float = 120.0) -> None:
        for name in KERNEL_TUNABLES:
            with open(f"/proc/sys/{name}") as f:
                self._tunables[name] = f.read().strip()
        self._made_legacy_log_dir = not os.path.exists(LEGACY_LOG_DIR)
        with open(self.config_path, "w") as f:
            json.dump(self.config(), f, indent=1)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    "nsenter",
                    f"--net={self.netns_path}",
                    KUBELET,
                    "--config",
                    self.config_path,
                    "--container-runtime-endpoint",
                    self.cri_endpoint,
                    "--hostname-override",
                    NODE_NAME,
                    "--root-dir",
                    self.root_dir,
                    "--cert-dir",  # its default is /var/lib/kubelet/pki whatever the root directory
                    os.path.join(self.root_dir, "pki"),
                    "--v=2",
                ],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )
        wait_until(
            lambda: self._exited() or self.healthz(),
            timeout,
            "kubelet's /healthz",
            describe=lambda: self.read_log()[-3000:],
        )
        assert self.proc.poll() is None, f"kubelet exited {self.proc.returncode}:\n{self.read_log()[-5000:]}"

    def healthz(self) -> tuple[int, bytes] | None:
        return try_http_get(self.netns_path, "127.0.0.1", self.healthz_port, "/healthz")

    def _exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def read_log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def pods(self) -> list[dict[str, Any]]:
        """kubelet's own view (``/pods`` on the read-only port): the pods with their status."""
        status, body = netns_http_get(self.netns_path, "127.0.0.1", self.read_only_port, "/pods")
        assert status == 200, (status, body[:500])
        items: list[dict[str, Any]] = json.loads(body)["items"]
        return items

    def add_manifest(self, name: str, pod: dict[str, Any]) -> str:
        """A static pod: written aside and renamed in, so kubelet never reads half a file."""
        aside, path = os.path.join(self.base, f"{name}.json"), os.path.join(self.manifests, f"{name}.json")
        with open(aside, "w") as f:
            json.dump(pod, f)
        os.rename(aside, path)
        return path

    def stop(self) -> None:
        """SIGTERM (then SIGKILL), and the host given back as it was (see the module's doc)."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        for name, value in self._tunables.items():
            with open(f"/proc/sys/{name}", "w") as f:
                f.write(value)
        with open("/proc/self/mountinfo") as f:
            mounts = [line.split()[4] for line in f if line.split()[4].startswith(self.base)]
        for m in reversed(mounts):  # kubelet's rshared bind mount of its root directory
            subprocess.run(["umount", "-l", m], check=False)
        if self._made_legacy_log_dir:
            with contextlib.suppress(OSError):
                os.rmdir(LEGACY_LOG_DIR)
        shutil.rmtree(self.base, ignore_errors=True)
