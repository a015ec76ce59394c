"""A pod's namespaces, pinned without a process: the network, IPC and UTS namespaces made by
util-linux's ``unshare`` and bind-mounted on files of the pod's directory (persistent
namespaces), the hostname set in the UTS one. Blocking: run in a worker thread."""

from __future__ import annotations

import contextlib
import os
import subprocess

from tugwire import fsutil
from tugwire.errors import RuntimeFailed

from ..network import netlink

KINDS = ("net", "ipc", "uts")


def make(directory: str, kinds: list[str], hostname: str) -> dict[str, str]:
    """The namespaces ``kinds`` (of :data:`KINDS`) bind-mounted at ``directory/<kind>``; the
    hostname set in the UTS one. Their paths by kind. Nothing left behind on failure."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    paths = {k: os.path.join(directory, k) for k in kinds}
    if not paths:
        return paths
    args = ["unshare"]
    for kind, path in paths.items():
        with open(path, "a"):
            pass
        args.append(f"--{kind}={path}")
    args += ["--", "hostname", hostname] if "uts" in paths else ["--", "true"]
    proc = subprocess.run(args, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        remove(directory)
        raise RuntimeFailed(f"making the pod's namespaces failed: {proc.stderr.strip() or proc.returncode}")
    return paths


def alive(path: str) -> bool:
    """Whether a namespace is bind-mounted at ``path``."""
    return netlink.is_netns(path)


def unmount(directory: str) -> None:
    """Unmount every namespace of the pod (files stay). Idempotent."""
    for kind in (*KINDS, "pid"):
        path = os.path.join(directory, kind)
        if os.path.exists(path):
            netlink.delete_netns(path)


def remove(directory: str) -> None:
    """Unmount the namespaces and remove the pod's directory. Idempotent."""
    with contextlib.suppress(FileNotFoundError):
        unmount(directory)
    fsutil.remove_tree(directory)


def write_files(directory: str, hostname: str, ip: str, resolv: str) -> dict[str, str]:
    """The pod's ``hostname``, ``hosts`` and ``resolv.conf`` (containers of the pod mount them)."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    hosts = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    if ip:
        hosts += f"{ip}\t{hostname}\n"
    out = {}
    for name, text in (("hostname", hostname + "\n"), ("hosts", hosts), ("resolv.conf", resolv)):
        path = os.path.join(directory, name)
        fsutil.write_atomic(path, text.encode(), mode=0o644, durable=False)
        out[name] = path
    return out


def resolv_text(servers: list[str], searches: list[str], options: list[str]) -> str:
    """resolv.conf from a pod's DNS config; the host's when it gives none."""
    if not (servers or searches or options):
        try:
            with open("/etc/resolv.conf") as f:
                return f.read()
        except OSError:
            return ""
    lines = [f"nameserver {s}" for s in servers]
    if searches:
        lines.append("search " + " ".join(searches))
    if options:
        lines.append("options " + " ".join(options))
    return "\n".join(lines) + "\n"
