"""A pod's namespaces, pinned without a process: the network, IPC and UTS namespaces made by
util-linux's ``unshare`` and bind-mounted on files of the pod's directory (persistent
namespaces), the hostname set in the UTS one. A pod-shared PID namespace needs a process as its
PID 1 (a PID namespace whose init died takes no new process): the infra process, one process
named ``pause`` (a shell that blocks and reaps: :data:`INFRA`), started detached (``setsid -f``:
tugd is never its parent, so a restart of tugd leaves it alone and nothing waits for it) by
``unshare --pid --fork``, which is killed once PID 1 runs; PID 1's pid is kept in ``infra.pid``;
killing it kills the namespace. Blocking: run in a worker thread."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time

from tugwire import fsutil
from tugwire.errors import InvalidArgument, RuntimeFailed

from ..network import netlink
from . import cgroups

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


# PID 1 of a pod's PID namespace: a shell that reaps what is reparented to it (``jobs`` at each
# SIGCHLD waits for every dead child, the pod's orphans too) and otherwise blocks reading a FIFO
# it holds open itself (no child, no wake-up); exits on SIGTERM. One process (containerd's is
# its ``pause``): the shell is run through a symlink named ``pause``, so that ``ps`` and
# ``pgrep`` see ``pause`` (comm and argv[0]), never ``sh`` nor ``sleep``.
INFRA = 'trap "exit 0" TERM; trap "jobs >/dev/null" CHLD; exec 3<>"$0"; while :; do read -r _ <&3; done'
# The detached shell writes its pid, then becomes the unshare that makes the namespace; once the
# namespace is up, its PID 1 replaces it in infra.pid and the unshare is killed (no
# ``--kill-child``: PID 1 stays, reparented to the host's init).
LAUNCH = 'echo $$ > "$0"; exec unshare --pid="$1" --fork -- "$2" -c "$3" "$4"'
INFRA_WAIT = 5.0  # seconds for the infra's namespace to appear
SHELLS = ("/bin/dash", "/usr/bin/dash", "/bin/sh")  # the smallest first: dash is ~250 KiB PSS


def _shell() -> str:
    for path in SHELLS:
        if os.access(path, os.X_OK):
            return os.path.realpath(path)
    raise RuntimeFailed("no shell for the pod's infra process (/bin/sh)")


def start_infra(directory: str, cgroup_parent: str = "") -> str:
    """The pod's PID namespace, held by its infra process, bind-mounted at ``directory/pid``;
    the infra process in the cgroup ``<cgroup_parent>/<pod id>`` if a parent is given."""
    path = os.path.join(directory, "pid")
    with open(path, "a"):
        pass
    pause = os.path.join(directory, "pause")
    fifo = os.path.join(directory, "infra.fifo")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(pause)
    os.symlink(_shell(), pause)
    if not os.path.exists(fifo):
        os.mkfifo(fifo, 0o600)
    pidfile = os.path.join(directory, "infra.pid")
    proc = subprocess.run(
        ["setsid", "-f", "sh", "-c", LAUNCH, pidfile, path, pause, INFRA, fifo],
        # No pipe: the detached process would hold it open, and this would wait for it.
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeFailed(f"starting the pod's infra process failed: setsid exited {proc.returncode}")
    deadline = time.monotonic() + INFRA_WAIT
    # The unshare mounts it just after its fork; its child (PID 1) is then there.
    while not (alive(path) and (pid := infra_pid(directory)) and (children := _children(pid))):
        if time.monotonic() > deadline:
            stop_infra(directory)
            raise RuntimeFailed("the pod's infra process did not make its PID namespace")
        time.sleep(0.005)
    if pid != children[0]:  # the unshare: PID 1 takes its place, then it goes
        fsutil.write_atomic(pidfile, f"{children[0]}\n".encode(), mode=0o644, durable=False)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if cgroup_parent:
        try:
            cgroups.enter(_infra_cgroup(directory, cgroup_parent), children[0], directory)
        except OSError as exc:
            stop_infra(directory)
            raise RuntimeFailed(f"putting the pod's infra process in its cgroup failed: {exc}") from exc
    return path


def _infra_cgroup(directory: str, cgroup_parent: str) -> str:
    return cgroup_parent.rstrip("/") + "/" + os.path.basename(directory.rstrip("/"))


def _same_ns(link: str, path: str) -> bool:
    try:
        a, b = os.stat(link), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def infra_pid(directory: str) -> int | None:
    """The pid of the pod's infra process (PID 1 of the pod's namespace; while it starts, the
    ``unshare`` making it) if it runs: checked by its namespace, never a recycled pid."""
    path = os.path.join(directory, "pid")
    try:
        with open(os.path.join(directory, "infra.pid")) as f:
            pid = int(f.read().strip() or 0)
    except (OSError, ValueError):
        return None
    if pid <= 0:
        return None
    if _same_ns(f"/proc/{pid}/ns/pid", path) or _same_ns(f"/proc/{pid}/ns/pid_for_children", path):
        return pid
    return None


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except (OSError, ValueError):
        return []


def stop_infra(directory: str) -> None:
    """Kill the infra process (PID 1 of the namespace: all in it die with it); while it starts,
    the ``unshare``'s child first, then the ``unshare``. Its cgroup is removed. Idempotent."""
    pid = infra_pid(directory)
    if pid is not None:
        for child in _children(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(directory, "infra.pid"))
    cgroups.remove(directory)


def set_sysctls(directory: str, sysctls: dict[str, str]) -> None:
    """Write ``sysctls`` (net.* and IPC ones, checked by records.check) in the pod's network and
    IPC namespaces, where its containers then find them (as a pause container would hold them)."""
    if not sysctls:
        return
    args = ["nsenter"]
    for kind in ("net", "ipc"):
        path = os.path.join(directory, kind)
        if alive(path):
            args.append(f"--{kind}={path}")
    args += ["--", "sysctl", "-q", "-w", *(f"{k}={v}" for k, v in sysctls.items())]
    proc = subprocess.run(args, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise InvalidArgument(f"setting the pod's sysctls failed: {proc.stderr.strip()}", field="sysctls")


def alive(path: str) -> bool:
    """Whether a namespace is bind-mounted at ``path``."""
    return netlink.is_netns(path)


def unmount(directory: str) -> None:
    """Stop the infra process and unmount every namespace of the pod (files stay). Idempotent."""
    stop_infra(directory)
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
