"""The cgroup of a pod's infra process: ``<cgroup parent>/<pod id>`` (as containerd puts its
pause container under the pod's parent), in every mounted hierarchy (cgroup v1: one per
controller, named ones too; v2: the unified one). The directories it made are listed in the
pod's directory (``cgroups.made``, written before each is made, so a tugd that dies meanwhile
still removes them) and removed, deepest first, when the infra process is stopped. Blocking:
run in a worker thread."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import time

MADE = "cgroups.made"
RMDIR_WAIT = 2.0  # seconds for a killed process to leave its cgroup


def hierarchies(mountinfo: str = "/proc/self/mountinfo") -> list[str]:
    """The mount points of the cgroup hierarchies (v1 and v2), each once."""
    out: list[str] = []
    with open(mountinfo) as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fstype = right.split(" ", 1)[0]
            if fstype not in ("cgroup", "cgroup2"):
                continue
            point = left.split(" ")[4].replace("\\040", " ")
            if point not in out:
                out.append(point)
    return out


def _made(directory: str) -> list[str]:
    try:
        with open(os.path.join(directory, MADE)) as f:
            found = json.load(f)
    except (OSError, ValueError):
        return []
    return [p for p in found if isinstance(p, str)] if isinstance(found, list) else []


def _record(directory: str, made: list[str]) -> None:
    tmp = os.path.join(directory, MADE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(made, f)
    os.replace(tmp, os.path.join(directory, MADE))


def _copy_cpuset(path: str) -> None:
    """A new v1 cpuset cgroup takes no process until its cpus and mems are set: its parent's."""
    for name in ("cpuset.cpus", "cpuset.mems"):
        own = os.path.join(path, name)
        if not os.path.exists(own):
            return
        with open(own) as f:
            if f.read().strip():
                continue
        with open(os.path.join(os.path.dirname(path), name)) as f:
            value = f.read().strip()
        with open(own, "w") as f:
            f.write(value)


def enter(cgroup: str, pid: int, directory: str) -> None:
    """Put ``pid`` in ``cgroup`` (a path as in the OCI spec: ``/kubepods/pod1/<id>``) of every
    hierarchy, making the directories missing. OSError when a hierarchy refuses it."""
    parts = [p for p in cgroup.split("/") if p]
    if not parts or ".." in parts:
        raise OSError(errno.EINVAL, f"invalid cgroup path {cgroup!r}")
    made = _made(directory)
    for root in hierarchies():
        if not os.access(root, os.W_OK):
            continue  # read-only (a cgroupfs mounted so in a container): not ours to use
        path = root
        for part in parts:
            path = os.path.join(path, part)
            if os.path.isdir(path):
                continue
            made.append(path)
            _record(directory, made)
            os.mkdir(path)
            _copy_cpuset(path)
        with open(os.path.join(path, "cgroup.procs"), "w") as f:
            f.write(str(pid))


def remove(directory: str) -> None:
    """Remove the cgroup directories :func:`enter` made, deepest first. The infra's own is
    waited for (a killed process leaves its cgroup a moment later); a parent still in use (by
    the pod's containers, or other pods) stays listed, removed by a later call. Idempotent."""
    made = _made(directory)
    if not made:
        return
    own = os.path.basename(directory.rstrip("/"))
    deadline = time.monotonic() + RMDIR_WAIT
    left = []
    for path in sorted(made, key=lambda p: p.count("/"), reverse=True):
        while True:
            try:
                os.rmdir(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                if exc.errno == errno.EBUSY and os.path.basename(path) == own and time.monotonic() < deadline:
                    time.sleep(0.01)
                    continue
                left.append(path)
            break
    if left:
        _record(directory, left)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(directory, MADE))
