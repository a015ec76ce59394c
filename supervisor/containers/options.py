"""The user's settings of a container: ``container.create``'s options (:class:`CreateRequest`),
checked into a :class:`~supervisor.records.ContainerSettings`, and names."""

from __future__ import annotations

import os
import random
import secrets
import signal as signals
from dataclasses import dataclass, field
from typing import Any

from tugwire import httpserve, names
from tugwire.errors import InvalidArgument

from .. import limits, policy, security, spec
from ..config import Config
from ..limits import LimitsRequest
from ..network.requests import EndpointRequest
from ..records import ContainerSettings
from ..store import Store
from .health import HealthRequest


def parse_signal(value: Any, default: int = int(signals.SIGKILL)) -> int:
    """``SIGTERM``, ``TERM``, ``term``, ``15`` or 15."""
    if value is None or value == "":
        return default
    if isinstance(value, int) and not isinstance(value, bool):
        num = value
    elif isinstance(value, str) and value.isdigit():
        num = int(value)
    elif isinstance(value, str):
        name = value.upper()
        name = name if name.startswith("SIG") else "SIG" + name
        try:
            num = int(signals.Signals[name])
        except KeyError:
            raise InvalidArgument(f"invalid signal: {value}", field="signal") from None
    else:
        raise InvalidArgument(f"invalid signal: {value!r}", field="signal")
    if not 0 < num < 65:
        raise InvalidArgument(f"invalid signal: {value}", field="signal")
    return num


_ADJ = [
    "brave",
    "calm",
    "eager",
    "fond",
    "keen",
    "lucid",
    "merry",
    "nimble",
    "quiet",
    "sharp",
    "steady",
    "swift",
    "tender",
    "vivid",
    "witty",
    "zealous",
    "bold",
    "gentle",
    "jolly",
    "proud",
]
_NOUN = [
    "otter",
    "heron",
    "marlin",
    "puffin",
    "walrus",
    "gull",
    "seal",
    "orca",
    "pelican",
    "tern",
    "narwhal",
    "dolphin",
    "beaver",
    "crab",
    "skate",
    "cormorant",
    "manatee",
    "plover",
    "eel",
    "kelp",
]


@dataclass(frozen=True)
class CreateRequest:
    """``container.create``'s options as a front door read them (their types checked there);
    :func:`parse_create` checks their values. Names as in docs/api.md."""

    image: str
    name: str | None = None
    cmd: list[str] = field(default_factory=list)
    entrypoint: list[str] | None = None  # None: the image's
    env: list[str] = field(default_factory=list)
    workdir: str | None = None
    user: str | None = None
    hostname: str | None = None
    volumes: list[dict[str, Any]] = field(default_factory=list)
    read_only: bool = False
    tty: bool = False
    stdin: bool = False
    memory: int | None = None
    cpus: float | None = None
    pids_limit: int | None = None
    limits: LimitsRequest = field(default_factory=LimitsRequest)  # the CRI's finer ones
    auto_remove: bool = False
    stop_signal: str | None = None
    restart: str | None = None
    init: bool = False
    privileged: bool = False
    cap_add: list[str] = field(default_factory=list)
    cap_drop: list[str] = field(default_factory=list)
    security_opt: list[str] = field(default_factory=list)
    stop_timeout: int | None = None
    log_max_size: int | None = None
    log_max_files: int | None = None
    metrics_address: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    health: HealthRequest = field(default_factory=HealthRequest)
    network: EndpointRequest = field(default_factory=EndpointRequest)
    # What the CRI (tug-cri) sets; docs/api.md, "container.create", and docs/cri.md.
    pod_id: str | None = None  # the pod it belongs to: recorded, a filter of container.list
    namespaces: dict[str, str] = field(default_factory=dict)  # kind -> a namespace file or "host"
    cgroup_parent: str | None = None  # the cgroup (as in the OCI spec) its own goes under
    annotations: dict[str, str] = field(default_factory=dict)  # kept exactly; the spec's too
    log_path: str | None = None  # where the shim writes its CRI log (no rotation of tugd's)
    log_directory: str | None = None  # the directory log_path must be inside
    run_as_user: int | None = None
    run_as_group: int | None = None
    run_as_username: str | None = None
    supplemental_groups: list[int] = field(default_factory=list)
    supplemental_groups_policy: str | None = None  # "merge" or "strict"; None: docker's rules
    no_new_privileges: bool | None = None  # None: tugd's default (on, off when privileged)
    seccomp: str | None = None  # "default", "unconfined" or a profile file (absolute path)
    masked_paths: list[str] | None = None  # None: tugd's defaults
    readonly_paths: list[str] | None = None
    sysctls: dict[str, str] = field(default_factory=dict)


def parse_create(p: CreateRequest, cfg: Config) -> ContainerSettings:
    """The user's settings of ``container.create``, checked: InvalidArgument on the first
    bad one (the image, its health check and its network are resolved by the caller)."""
    opts: dict[str, Any] = {}
    opts["image"] = p.image
    name = p.name
    if name is not None:
        names.check_name(name)
    opts["name"] = name
    cmd = list(p.cmd)
    opts["cmd"] = cmd
    if p.entrypoint is not None:
        opts["entrypoint"] = list(p.entrypoint)
    env = list(p.env)
    for item in env:
        if "=" not in item or item.startswith("="):
            raise InvalidArgument(f"invalid environment variable {item!r}: want KEY=VALUE", field="env")
        if "\x00" in item:
            raise InvalidArgument("environment variables may not contain NUL", field="env")
    opts["env"] = env
    workdir = p.workdir
    if workdir is not None and (not workdir.startswith("/") or "\x00" in workdir):
        raise InvalidArgument(f"the working directory {workdir!r} must be an absolute path", field="workdir")
    opts["workdir"] = workdir
    opts["user"] = p.user
    hostname = p.hostname
    if hostname is not None and not _valid_hostname(hostname):
        raise InvalidArgument(f"invalid hostname {hostname!r}", field="hostname")
    opts["hostname"] = hostname
    volumes = []
    for vol in p.volumes:
        if vol.get("type") == "image":
            volumes.append(_image_volume(vol))
            continue
        src, dst = vol.get("source"), vol.get("destination")
        if not isinstance(src, str) or not os.path.isabs(src):
            raise InvalidArgument(f"volume source {src!r} must be an absolute host path", field="volumes")
        if not isinstance(dst, str) or not os.path.isabs(dst) or ".." in dst.split("/"):
            raise InvalidArgument(
                f"volume destination {dst!r} must be an absolute path without '..'", field="volumes"
            )
        if dst.rstrip("/") in ("", "/proc", "/sys", "/dev"):
            raise InvalidArgument(f"cannot mount a volume on {dst}", field="volumes")
        if not os.path.exists(src):
            raise InvalidArgument(f"volume source {src} does not exist on the host", field="volumes")
        propagation = vol.get("propagation") or "rprivate"
        if propagation not in PROPAGATIONS:
            raise InvalidArgument(
                f"volume propagation {propagation!r}: want one of {', '.join(PROPAGATIONS)}", field="volumes"
            )
        rro = bool(vol.get("recursive_readonly", False))
        if rro and (not vol.get("readonly") or propagation != "rprivate"):
            raise InvalidArgument(
                f"the recursive read-only volume {dst} must be read-only with private propagation",
                field="volumes",
            )
        if rro and not spec.recursive_readonly(cfg.runtime):
            raise InvalidArgument(
                f"the runtime {cfg.runtime} cannot make recursive read-only mounts", field="volumes"
            )
        volumes.append(
            {
                "source": os.path.normpath(src),
                "destination": os.path.normpath(dst),
                "readonly": bool(vol.get("readonly", False)),
                **({"propagation": propagation} if propagation != "rprivate" else {}),
                **({"recursive_readonly": True} if rro else {}),
            }
        )
    opts["volumes"] = volumes
    opts["read_only"] = p.read_only
    opts["tty"] = p.tty  # PID 1 on a terminal the shim holds (run -t)
    opts["stdin"] = p.stdin  # PID 1's stdin open for attach (run -i)
    memory = p.memory
    if memory is not None and memory < 6 * 1024 * 1024:
        raise InvalidArgument("minimum memory limit allowed is 6MB", field="memory")
    opts["memory"] = memory
    cpus = p.cpus
    if cpus is not None and not 0.01 <= cpus <= (os.cpu_count() or 1):
        raise InvalidArgument(
            f"range of CPUs is from 0.01 to {os.cpu_count() or 1}, as there are only "
            f"{os.cpu_count() or 1} CPUs available",
            field="cpus",
        )
    opts["cpus"] = cpus
    pids = p.pids_limit
    if pids is not None and pids < 1:
        raise InvalidArgument("pids limit must be positive", field="pids_limit")
    opts["pids_limit"] = pids
    opts.update(limits.check(p.limits, memory))
    opts["auto_remove"] = p.auto_remove
    stop_signal = p.stop_signal
    parse_signal(stop_signal, int(signals.SIGTERM))
    opts["stop_signal"] = stop_signal  # None: the image's StopSignal, else SIGTERM (see create)
    opts["restart"] = str(policy.parse(p.restart))
    if opts["restart"] != policy.NO and opts["auto_remove"]:
        raise InvalidArgument("conflicting options: a restart policy and auto-remove (--rm)", field="restart")
    opts["init"] = p.init
    if opts["init"] and not os.path.exists(spec.INIT_BINARY):
        raise InvalidArgument(
            f"--init needs {spec.INIT_BINARY} on the host (Debian package tini)", field="init"
        )
    opts["security"] = security.parse(
        p.privileged,
        list(p.cap_add),
        list(p.cap_drop),
        list(p.security_opt),
        no_new_privileges=p.no_new_privileges,
        seccomp=p.seccomp,
        masked_paths=p.masked_paths,
        readonly_paths=p.readonly_paths,
    )
    stop_timeout = p.stop_timeout
    if stop_timeout is not None and stop_timeout < 0:
        raise InvalidArgument("stop timeout must not be negative", field="stop_timeout")
    opts["stop_timeout"] = 10 if stop_timeout is None else stop_timeout
    size = p.log_max_size
    if size is not None and size < 4096:
        raise InvalidArgument("log max size must be at least 4096 bytes", field="log_max_size")
    opts["log_max_size"] = size or cfg.log_max_size
    files = p.log_max_files
    if files is not None and files < 1:
        raise InvalidArgument("log max files must be at least 1", field="log_max_files")
    opts["log_max_files"] = files or cfg.log_max_files
    metrics_address = p.metrics_address
    if metrics_address:
        try:
            httpserve.parse_address(metrics_address)
        except httpserve.AddressError as exc:
            raise InvalidArgument(str(exc), field="metrics_address") from None
    opts["metrics_address"] = metrics_address or None
    opts["labels"] = parse_labels(p.labels)  # the image's go under them (create)
    opts.update(parse_cri(p))
    return ContainerSettings(**opts)


NAMESPACE_KINDS = ("network", "ipc", "uts", "pid")
PROPAGATIONS = ("rprivate", "rslave", "rshared")  # a volume's mount propagation (the CRI's three)
MAX_ID = 1 << 31  # uids and gids: what the kernel takes (a 32-bit value, -1 reserved)


def _image_volume(vol: dict[str, Any]) -> dict[str, Any]:
    """An image volume of ``container.create``, checked: ``image`` (a name or id; the caller
    resolves it), ``target`` (or ``destination``), ``subpath`` (relative, inside the image)."""
    image, dst = vol.get("image"), vol.get("target", vol.get("destination"))
    if not isinstance(image, str) or not image:
        raise InvalidArgument("an image volume needs an image", field="volumes")
    if not isinstance(dst, str) or not os.path.isabs(dst) or ".." in dst.split("/") or "\x00" in dst:
        raise InvalidArgument(f"volume target {dst!r} must be an absolute path without '..'", field="volumes")
    if dst.rstrip("/") in ("", "/proc", "/sys", "/dev"):
        raise InvalidArgument(f"cannot mount a volume on {dst}", field="volumes")
    if vol.get("readonly") is False:
        raise InvalidArgument("an image volume is read-only", field="volumes")
    subpath = vol.get("subpath") or ""
    if not isinstance(subpath, str) or "\x00" in subpath or ".." in subpath.split("/"):
        raise InvalidArgument(f"image volume subpath {subpath!r} must be inside the image", field="volumes")
    subpath = os.path.normpath(subpath.strip("/")) if subpath.strip("/") else ""
    return {
        "type": "image",
        "image": image,
        "destination": os.path.normpath(dst),
        "readonly": True,
        **({"subpath": subpath} if subpath else {}),
    }


def _clean_path(value: str, what: str, field_name: str) -> str:
    """An absolute path without ``..`` or NUL, normalised; InvalidArgument otherwise."""
    if not value.startswith("/") or "\x00" in value or ".." in value.split("/"):
        raise InvalidArgument(f"{what} {value!r} must be an absolute path without '..'", field=field_name)
    return os.path.normpath(value)


def parse_cri(p: CreateRequest) -> dict[str, Any]:
    """The options the CRI sets (pod, namespaces, cgroup parent, annotations, log path, user
    and groups, sysctls), checked. The security ones are :func:`security.parse`'s."""
    opts: dict[str, Any] = {}
    if p.pod_id is not None and not names.is_id(p.pod_id):
        raise InvalidArgument(f"invalid pod id {p.pod_id!r}: want 64 hex digits", field="pod_id")
    opts["pod_id"] = p.pod_id
    namespaces: dict[str, str] = {}
    for kind, where in p.namespaces.items():
        if kind not in NAMESPACE_KINDS:
            raise InvalidArgument(
                f"cannot join a {kind!r} namespace: want one of {', '.join(NAMESPACE_KINDS)}",
                field="namespaces",
            )
        if where == "host":
            namespaces[kind] = "host"
            continue
        path = _clean_path(where, f"the {kind} namespace", "namespaces")
        if not os.path.exists(path):
            raise InvalidArgument(f"the {kind} namespace file {path} does not exist", field="namespaces")
        namespaces[kind] = path
    if namespaces.get("network") and p.network.network not in (None, "none", "host"):
        raise InvalidArgument(
            "a container that joins a network namespace cannot also be on a network", field="namespaces"
        )
    opts["namespaces"] = namespaces
    parent = p.cgroup_parent
    if parent is not None:
        parent = _clean_path(parent, "the cgroup parent", "cgroup_parent").rstrip("/")
        if not parent:
            raise InvalidArgument("the cgroup parent cannot be the root cgroup", field="cgroup_parent")
    opts["cgroup_parent"] = parent
    for key, value in p.annotations.items():
        if not key or "\x00" in key or "\x00" in value:
            raise InvalidArgument(
                f"invalid annotation {key!r}: want a non-empty key, no NUL", field="annotations"
            )
    opts["annotations"] = dict(p.annotations)
    opts["log_path"] = None
    if p.log_path is not None:
        if p.log_directory is None:
            raise InvalidArgument(
                "log_path needs log_directory, the directory it must be in", field="log_path"
            )
        directory = _clean_path(p.log_directory, "the log directory", "log_directory")
        path = _clean_path(p.log_path, "the log path", "log_path")
        if not path.startswith(directory.rstrip("/") + "/"):
            raise InvalidArgument(f"the log path {path} is not inside {directory}", field="log_path")
        opts["log_path"] = path
    elif p.log_directory is not None:
        raise InvalidArgument("log_directory without log_path", field="log_directory")
    if p.user is not None and (p.run_as_user is not None or p.run_as_username is not None):
        raise InvalidArgument("user conflicts with run_as_user and run_as_username", field="user")
    if p.run_as_user is not None and p.run_as_username is not None:
        raise InvalidArgument("run_as_user and run_as_username exclude each other", field="run_as_user")
    for name, num in (("run_as_user", p.run_as_user), ("run_as_group", p.run_as_group)):
        if num is not None and not 0 <= num < MAX_ID:
            raise InvalidArgument(f"{name} {num} is out of range", field=name)
    if p.run_as_group is not None and p.run_as_user is None and p.run_as_username is None:
        raise InvalidArgument("run_as_group needs run_as_user or run_as_username", field="run_as_group")
    username = p.run_as_username
    if username is not None and (not username or ":" in username or "\x00" in username):
        raise InvalidArgument(f"invalid user name {username!r}", field="run_as_username")
    who = str(p.run_as_user) if p.run_as_user is not None else username
    if who is not None:
        # The one user string of the container (uid[:gid] or name[:gid]), resolved at create
        # against the image's /etc/passwd like docker's --user.
        opts["user"] = who if p.run_as_group is None else f"{who}:{p.run_as_group}"
    for gid in p.supplemental_groups:
        if not 0 <= gid < MAX_ID:
            raise InvalidArgument(f"supplemental group {gid} is out of range", field="supplemental_groups")
    opts["supplemental_groups"] = list(p.supplemental_groups)
    groups_policy = p.supplemental_groups_policy
    if groups_policy is not None and groups_policy not in ("merge", "strict"):
        raise InvalidArgument(
            f"supplemental_groups_policy {groups_policy!r}: want merge or strict",
            field="supplemental_groups_policy",
        )
    opts["supplemental_groups_policy"] = groups_policy
    for key, value in p.sysctls.items():
        if not key or not all(c.isalnum() or c in "._/-" for c in key) or "\x00" in value:
            raise InvalidArgument(f"invalid sysctl {key!r}", field="sysctls")
    opts["sysctls"] = dict(p.sysctls)
    return opts


def parse_labels(labels: dict[str, str]) -> dict[str, str]:
    """A container's labels, checked: non-empty keys, no NUL anywhere."""
    for key, value in labels.items():
        if not key or "\x00" in key or "\x00" in value:
            raise InvalidArgument(f"invalid label {key!r}: want a non-empty key, no NUL", field="labels")
    return dict(labels)


def generate_name(store: Store, pending: set[str] | frozenset[str] = frozenset()) -> str:
    """A free name like ``brave_otter`` (none of ``pending``, the names being created)."""
    for _ in range(100):
        name = f"{random.choice(_ADJ)}_{random.choice(_NOUN)}"
        if name not in pending and not store.name_taken(name):
            return name
    return f"tug_{secrets.token_hex(4)}"


def _valid_hostname(name: str) -> bool:
    if not 0 < len(name) <= 253:
        return False
    return all(
        0 < len(label) <= 63
        and label[0] != "-"
        and label[-1] != "-"
        and all(c.isalnum() or c == "-" for c in label)
        and label.isascii()
        for label in name.split(".")
    )
