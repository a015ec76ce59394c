"""The OCI runtime spec (``config.json``) of a container, from its image and its create options.

Defaults follow docker's: the default capability set, masked and read-only /proc paths, private
namespaces for pid, ipc, uts, mount and network, a cgroup under ``/tugboat/<id>``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import resource
import stat
import subprocess
from typing import Any

from tugwire.errors import InvalidArgument

from . import limits, security
from .records import ContainerSettings

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# docker's defaults, kept in supervisor/security.py with the rest of the security profile.
DEFAULT_CAPS = security.DEFAULT_CAPS
MASKED_PATHS = security.MASKED_PATHS
READONLY_PATHS = security.READONLY_PATHS

CPU_PERIOD = 100_000
# --init: tini's static build (Debian package tini), bind-mounted read-only where docker puts its
# own init, /dev/init: /dev is the container's tmpfs, so nothing is added to its root filesystem.
INIT_BINARY = "/usr/bin/tini-static"
INIT_PATH = "/dev/init"


def init_prefix() -> list[str]:
    """What ``--init`` puts in front of the command: tini, mounted at :data:`INIT_PATH`."""
    return [INIT_PATH, "-s", "-g", "--"]


def cgroup_path(cid: str, parent: str | None = None) -> str:
    """The container's cgroup as the OCI spec names it: ``/tugboat/<id>``, or ``<parent>/<id>``
    under a ``cgroup_parent`` (a pod's)."""
    return f"{parent.rstrip('/')}/{cid}" if parent else f"/tugboat/{cid}"


@functools.cache
def recursive_readonly(runtime: str) -> bool:
    """Whether ``runtime`` makes recursive read-only bind mounts: its ``features`` list the
    ``rro`` mount option (runc 1.1 does) and the kernel has mount_setattr (5.12)."""
    try:
        out = subprocess.run([runtime, "features"], capture_output=True, text=True, timeout=10).stdout
        options = json.loads(out).get("mountOptions") or []
    except (OSError, subprocess.TimeoutExpired, ValueError, AttributeError):
        return False
    release = platform.release().split(".")
    try:
        kernel = (int(release[0]), int("".join(c for c in release[1] if c.isdigit()) or 0))
    except (IndexError, ValueError):
        return False
    return "rro" in options and kernel >= (5, 12)


def _nofile_limit() -> int:
    """RLIMIT_NOFILE for containers: 1048576 as docker, but never above the host's hard limit
    (without CAP_SYS_RESOURCE, asking for more makes runc fail)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 1048576
    return want if hard == resource.RLIM_INFINITY else min(want, hard)


def resolve_user(user: str, roots: list[str], *, by_uid: bool = False) -> tuple[int, int, list[int]]:
    """``uid[:gid]`` or ``name[:group]``, names looked up in the image's /etc/passwd and /etc/group.
    The user's groups in /etc/group are added for a name (docker's rule), and with ``by_uid``
    for a uid too, by the name /etc/passwd gives it (the CRI's Merge policy)."""
    if not user:
        return 0, 0, []
    name, _, group = user.partition(":")
    uid: int | None = None
    gid: int | None = None
    passwd = _read_db(roots, "etc/passwd")
    groups = _read_db(roots, "etc/group")
    if name.isdigit():
        uid = int(name)
        for entry in passwd:
            if len(entry) > 3 and entry[2] == name and entry[3].isdigit():
                gid = int(entry[3])
    else:
        for entry in passwd:
            if entry[0] == name and len(entry) > 3 and entry[2].isdigit() and entry[3].isdigit():
                uid, gid = int(entry[2]), int(entry[3])
                break
        if uid is None:
            raise InvalidArgument(
                f"unable to find user {name}: no matching entries in passwd file", field="user"
            )
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            found = [e for e in groups if e[0] == group and len(e) > 2 and e[2].isdigit()]
            if not found:
                raise InvalidArgument(
                    f"unable to find group {group}: no matching entries in group file", field="user"
                )
            gid = int(found[0][2])
    extra = []
    if name.isdigit() and by_uid:
        name = next((e[0] for e in passwd if len(e) > 2 and e[2] == name), name)
    if not name.isdigit():
        extra = [int(e[2]) for e in groups if len(e) > 3 and name in e[3].split(",") and e[2].isdigit()]
    return uid, gid if gid is not None else 0, extra


def _read_db(roots: list[str], rel: str) -> list[list[str]]:
    """The image's own file (from the top-most layer that has it), read without following a
    symlink out of the rootfs."""
    for root in roots:
        path = os.path.join(root, rel)
        with contextlib.suppress(OSError):
            st = os.lstat(path)
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                return []  # an overlayfs whiteout: a layer above deleted the file
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            break
        except OSError:
            continue
    else:
        return []
    with os.fdopen(fd, encoding="utf-8", errors="replace") as f:
        return [line.rstrip("\n").split(":") for line in f if line.strip() and not line.startswith("#")]


def build(
    cid: str,
    settings: ContainerSettings,
    image_config: dict[str, Any],
    rootfs: str,
    layers: list[str],
    net: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The spec for ``runc``. ``settings`` were checked by the containers service; ``layers`` are
    the image's snapshot dirs, top first, where user names are looked up. ``net`` (from
    :meth:`supervisor.network.Networks.spec_for`): ``netns`` a namespace file to join, "" for
    the host's, None for a new one; ``mounts`` the generated /etc files."""
    entrypoint = settings.entrypoint
    if entrypoint is None:
        entrypoint = image_config.get("Entrypoint") or []
    cmd = settings.cmd
    if not cmd and settings.entrypoint is None:
        cmd = image_config.get("Cmd") or []
    args = list(entrypoint) + list(cmd)
    if not args:
        raise InvalidArgument("no command specified (the image has no Cmd or Entrypoint)", field="cmd")
    if settings.init:
        # tini as PID 1: forwards signals to the command (-g: to its process group) and reaps
        # the zombies of orphans; -s keeps it a subreaper should it ever not be PID 1.
        args = [*init_prefix(), *args]
    env = list(image_config.get("Env") or [])
    if not any(e.startswith("PATH=") for e in env):
        env.insert(0, DEFAULT_PATH)
    env_keys = {e.split("=", 1)[0]: i for i, e in enumerate(env)}
    joined = settings.namespaces
    # A container that joins another UTS namespace (a pod's, or the host's) keeps its hostname,
    # unless one is asked for.
    hostname = settings.hostname or ("" if joined.get("uts") else cid[:12])
    for item in [*([f"HOSTNAME={hostname}"] if hostname else []), *settings.env]:
        key = item.split("=", 1)[0]
        if key in env_keys:
            env[env_keys[key]] = item
        else:
            env_keys[key] = len(env)
            env.append(item)
    groups_policy = settings.supplemental_groups_policy
    uid, gid, extra_gids = resolve_user(
        settings.user or image_config.get("User") or "", layers, by_uid=groups_policy == "merge"
    )
    if groups_policy == "strict":
        extra_gids = []  # the image's /etc/group memberships are not the container's
    if groups_policy is not None:  # the CRI's: the primary group is one of them (containerd's)
        extra_gids = [gid, *(g for g in extra_gids if g != gid)]
    extra_gids += [g for g in settings.supplemental_groups if g not in extra_gids]
    cwd = settings.workdir or image_config.get("WorkingDir") or "/"
    nofile = _nofile_limit()
    if settings.tty and not any(e.startswith("TERM=") for e in env):
        env.append("TERM=xterm")  # as docker does for -t
    process: dict[str, Any] = {
        "terminal": settings.tty,
        "user": {"uid": uid, "gid": gid, **({"additionalGids": extra_gids} if extra_gids else {})},
        "args": args,
        "env": env,
        "cwd": cwd,
        "capabilities": {k: list(DEFAULT_CAPS) for k in ("bounding", "effective", "permitted")},
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": nofile, "soft": nofile}],
        "noNewPrivileges": False,
        **({"oomScoreAdj": settings.oom_score_adj} if settings.oom_score_adj is not None else {}),
    }
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        },
        {
            "destination": "/dev/mqueue",
            "type": "mqueue",
            "source": "mqueue",
            "options": ["nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/sys",
            "type": "sysfs",
            "source": "sysfs",
            "options": ["nosuid", "noexec", "nodev", "ro"],
        },
        {
            "destination": "/sys/fs/cgroup",
            "type": "cgroup",
            "source": "cgroup",
            "options": ["nosuid", "noexec", "nodev", "relatime", "ro"],
        },
    ]
    if settings.init:
        mounts.append(
            {
                "destination": INIT_PATH,
                "type": "bind",
                "source": INIT_BINARY,
                "options": ["bind", "ro", "nosuid", "nodev"],
            }
        )
    propagations = set()
    for vol in settings.volumes:
        propagation = vol.get("propagation") or "rprivate"
        propagations.add(propagation)
        options = ["rbind", propagation]
        if vol.get("readonly"):
            options.append("ro")
        if vol.get("recursive_readonly"):
            options.append("rro")  # its submounts too (runc's mount_setattr, AT_RECURSIVE)
        mounts.append(
            {"destination": vol["destination"], "type": "bind", "source": vol["source"], "options": options}
        )
    namespaces: list[dict[str, Any]] = [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")]
    if net is not None:
        # The generated /etc files, but where a volume is mounted (a pod's hosts, resolv.conf and
        # hostname, from the CRI): the volume wins, as docker's -v /x:/etc/hosts does.
        taken = {m["destination"] for m in mounts}
        mounts.extend(m for m in net.get("mounts") or [] if m["destination"] not in taken)
        if net.get("netns") == "":  # --network host: no namespace of its own
            namespaces = [n for n in namespaces if n["type"] != "network"]
        elif net.get("netns"):
            namespaces[1]["path"] = net["netns"]
    for kind, where in joined.items():  # the pod's namespaces by path, or "host": none of its own
        if where == "host":
            namespaces = [n for n in namespaces if n["type"] != kind]
        else:
            namespaces = [{"type": kind, "path": where} if n["type"] == kind else n for n in namespaces]
    resources: dict[str, Any] = {"devices": [{"allow": False, "access": "rwm"}], **limits.resources(settings)}
    oci: dict[str, Any] = {
        "ociVersion": "1.0.2",
        "process": process,
        "root": {"path": rootfs, "readonly": settings.read_only},
        "mounts": mounts,
        "linux": {
            "resources": resources,
            "cgroupsPath": cgroup_path(cid, settings.cgroup_parent),
            "namespaces": namespaces,
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
        },
    }
    if "rshared" in propagations:  # the root's mount must propagate too, or runc refuses
        oci["linux"]["rootfsPropagation"] = "rshared"
    elif "rslave" in propagations:
        oci["linux"]["rootfsPropagation"] = "rslave"
    if hostname:
        oci["hostname"] = hostname  # runc refuses a hostname without a UTS namespace of its own
    if settings.sysctls:
        oci["linux"]["sysctl"] = dict(settings.sysctls)
    labels = image_config.get("Labels")
    annotations: dict[str, str] = {}
    if isinstance(labels, dict) and labels:
        # the image's Labels become the runtime spec's annotations (string values only, as the
        # OCI runtime spec requires), so runc hooks and `runc state` see them
        annotations = {str(k): v for k, v in labels.items() if isinstance(v, str)}
    annotations.update(settings.annotations)  # the container's own (the CRI's) over them
    if annotations:
        oci["annotations"] = annotations
    # Capabilities, seccomp, no-new-privileges, masked paths: the container's security options.
    security.apply(oci, settings.security)
    return oci
