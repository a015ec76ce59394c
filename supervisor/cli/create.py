"""The options of ``tug run`` and ``tug create``, and the ``container.create`` params they make.

Imported by the ``run``/``create`` commands only (see :mod:`supervisor.cli.containers`).
"""

from __future__ import annotations

import argparse
import os

from tugwire import errors

from .options import cpus_arg, duration_seconds, env_items, parse_size, size_arg

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def parse_volume(spec: str) -> dict[str, Any]:
    """``HOST:CONTAINER[:ro|rw]`` as a ``volumes`` entry; the host path is made absolute.
    Raises ValueError."""
    parts = spec.split(":")
    if len(parts) == 1:
        raise ValueError(
            f"invalid volume {spec!r}: anonymous and named volumes are not supported, "
            "want HOST:CONTAINER[:ro]"
        )
    if len(parts) > 3:
        raise ValueError(f"invalid volume {spec!r}: want HOST:CONTAINER[:ro]")
    host, ctr = parts[0], parts[1]
    mode = parts[2] if len(parts) == 3 else "rw"
    if not host or not ctr:
        raise ValueError(f"invalid volume {spec!r}: want HOST:CONTAINER[:ro]")
    if not ctr.startswith("/"):
        raise ValueError(f"invalid volume {spec!r}: the container path {ctr!r} must be absolute")
    if mode not in ("ro", "rw"):
        raise ValueError(f"invalid volume {spec!r}: unknown mode {mode!r}, want ro or rw")
    return {"source": os.path.abspath(host), "destination": ctr, "readonly": mode == "ro"}


def _volume_arg(spec: str) -> dict[str, Any]:
    try:
        return parse_volume(spec)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_create_options(p: argparse.ArgumentParser) -> None:
    """The options (and the image and command) shared by ``run`` and ``create``."""
    p.add_argument("--help", action="help", help="show this help message and exit")
    p.add_argument("--name", help="the container's name")
    p.add_argument(
        "-e",
        "--env",
        action="append",
        default=[],
        metavar="K=V",
        help="set an environment variable (K alone: take it from this environment)",
    )
    p.add_argument(
        "--env-file", action="append", default=[], metavar="FILE", help="read K=V lines from a file"
    )
    p.add_argument("-l", "--label", action="append", default=[], metavar="K=V", help="set a label")
    p.add_argument("--label-file", action="append", default=[], metavar="FILE", help="read K=V label lines")
    p.add_argument("-w", "--workdir", help="working directory inside the container")
    p.add_argument("-u", "--user", help="uid[:gid] or a user name of the image")
    p.add_argument("--entrypoint", help="override the image's entrypoint ('' clears it)")
    p.add_argument(
        "-v",
        "--volume",
        action="append",
        default=[],
        type=_volume_arg,
        metavar="HOST:CTR[:ro]",
        help="bind mount a host path",
    )
    p.add_argument("-h", "--hostname", help="the container's host name")
    p.add_argument("--network", "--net", metavar="NETWORK", help="bridge (default), none, host or a name")
    p.add_argument("--ip", metavar="ADDRESS", help="a fixed IPv4 address on a user-defined network")
    p.add_argument("--ip6", metavar="ADDRESS", help="a fixed IPv6 address on a dual-stack network")
    p.add_argument(
        "--network-alias", action="append", default=[], metavar="NAME", help="another name on the network"
    )
    p.add_argument("--dns", action="append", default=[], metavar="IP", help="a nameserver (resolv.conf)")
    p.add_argument("--add-host", action="append", default=[], metavar="NAME:IP", help="a line for /etc/hosts")
    p.add_argument(
        "-p",
        "--publish",
        action="append",
        default=[],
        metavar="[IP:]HOSTPORT:PORT[/PROTO]",
        help="publish a container's port on the host",
    )
    p.add_argument("-P", "--publish-all", action="store_true", help="publish the image's exposed ports")
    p.add_argument("--read-only", action="store_true", help="mount the root filesystem read-only")
    p.add_argument("-i", "--interactive", action="store_true", help="keep its stdin open (run: send ours)")
    p.add_argument("-t", "--tty", action="store_true", help="give it a terminal")
    p.add_argument(
        "--detach-keys", default="ctrl-p,ctrl-q", metavar="KEYS", help="the keys that detach (ctrl-p,ctrl-q)"
    )
    p.add_argument("-m", "--memory", type=size_arg, help="memory limit (e.g. 64m)")
    p.add_argument("--cpus", type=cpus_arg, help="number of CPUs (e.g. 0.5)")
    p.add_argument("--pids-limit", type=int, help="limit on the number of processes")
    p.add_argument("--stop-signal", help="signal that stops the container (default SIGTERM)")
    p.add_argument(
        "--stop-timeout",
        type=int,
        metavar="SECONDS",
        help="seconds to wait after the stop signal before SIGKILL",
    )
    p.add_argument("--log-max-size", type=size_arg, help="rotate the log at this size (e.g. 10m)")
    p.add_argument("--log-max-files", type=int, help="log files to keep")
    p.add_argument(
        "--log-opt",
        action="append",
        default=[],
        metavar="max-size=S|max-file=N",
        help="docker-style log options",
    )
    p.add_argument("--rm", action="store_true", help="remove the container once it has exited")
    p.add_argument(
        "--restart",
        metavar="POLICY",
        help="no, on-failure[:N], always or unless-stopped (restarts with a growing delay)",
    )
    p.add_argument("--init", action="store_true", help="run an init (tini) as PID 1: signals, zombies")
    p.add_argument(
        "--privileged", action="store_true", help="every capability, no seccomp, no masked paths, all devices"
    )
    for verb in ("add", "drop"):
        p.add_argument(
            f"--cap-{verb}", action="append", default=[], metavar="CAP", help=f"{verb} a capability (or ALL)"
        )
    p.add_argument(
        "--security-opt",
        action="append",
        default=[],
        metavar="OPT",
        help="no-new-privileges[=true|false], seccomp=unconfined or seccomp=PROFILE.json",
    )
    p.add_argument("--health-cmd", metavar="CMD", help="command (sh -c) that checks the container's health")
    for opt, what in (("interval", "between checks"), ("timeout", "a check may run"), ("start-period", "")):
        p.add_argument(
            f"--health-{opt}",
            type=duration_seconds,
            metavar="DURATION",
            help=f"time {what} (30s, 1m30s, 500ms)" if what else "failures in this first time do not count",
        )
    p.add_argument("--health-retries", type=int, metavar="N", help="failures in a row that make it unhealthy")
    p.add_argument(
        "--pull",
        choices=("missing", "always", "never"),
        default="missing",
        help="pull the image first: when it is missing (default), always, or never",
    )
    p.add_argument("image", help="image reference or id")
    p.add_argument("command", nargs=argparse.REMAINDER, help="command and its arguments")


def _read_env_file(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise errors.InvalidArgument(f"cannot read env file {path}: {exc.strerror}") from exc
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def label_map(items: list[str]) -> dict[str, str]:
    """``K=V`` (or ``K``, an empty value) labels as a map; the last of a key wins, as docker's."""
    out: dict[str, str] = {}
    for item in items:
        key, _, value = item.partition("=")
        if not key.strip():
            raise errors.InvalidArgument(f"invalid label {item!r}: want KEY=VALUE", field="labels")
        out[key.strip()] = value
    return out


def _security_opt(opt: str) -> str:
    """``seccomp=PATH`` becomes ``seccomp=<the file's JSON>`` (tugd reads no client files, as
    docker's daemon); every other option goes as it is."""
    key, sep, value = opt.partition("=")
    if key.strip() != "seccomp" or not sep or value in ("unconfined", "builtin", "default"):
        return opt
    try:
        with open(value, encoding="utf-8") as f:
            return "seccomp=" + f.read((1 << 20) + 1)
    except (OSError, UnicodeDecodeError) as exc:
        raise errors.InvalidArgument(
            f"cannot read seccomp profile {value}: {exc}", field="security_opt"
        ) from exc


def create_params(args: argparse.Namespace) -> dict[str, Any]:
    """The ``container.create`` params for parsed ``run``/``create`` arguments.

    Raises :class:`errors.InvalidArgument` for values argparse cannot check alone.
    """
    params: dict[str, Any] = {"image": args.image}
    if args.name is not None:
        params["name"] = args.name
    if args.command:
        params["cmd"] = list(args.command)
    if args.entrypoint is not None:
        params["entrypoint"] = [args.entrypoint] if args.entrypoint else []
    env = []
    for path in args.env_file:
        env.extend(env_items(_read_env_file(path)))
    env.extend(env_items(args.env))
    if env:
        params["env"] = env
    labels = label_map([line for path in args.label_file for line in _read_env_file(path)] + args.label)
    if labels:
        params["labels"] = labels
    if args.workdir is not None:
        params["workdir"] = args.workdir
    if args.user is not None:
        params["user"] = args.user
    if args.hostname is not None:
        params["hostname"] = args.hostname
    if args.volume:
        params["volumes"] = list(args.volume)
    for key, param in (("network", "network"), ("ip", "ip"), ("ip6", "ip6")):
        if getattr(args, key) is not None:
            params[param] = getattr(args, key)
    for key, param in (
        ("network_alias", "network_aliases"),
        ("dns", "dns"),
        ("add_host", "add_hosts"),
        ("publish", "ports"),
    ):
        if getattr(args, key):
            params[param] = list(getattr(args, key))
    if args.publish_all:
        params["publish_all"] = True
    if args.read_only:
        params["read_only"] = True
    if args.tty:
        params["tty"] = True
    if args.interactive:
        params["stdin"] = True
    for key in ("memory", "cpus", "pids_limit", "stop_signal", "stop_timeout"):
        value = getattr(args, key)
        if value is not None:
            params[key] = value
    if args.rm:
        params["auto_remove"] = True
    if args.restart is not None:
        params["restart"] = args.restart
    if args.init:
        params["init"] = True
    if args.privileged:
        params["privileged"] = True
    if args.cap_add:
        params["cap_add"] = list(args.cap_add)
    if args.cap_drop:
        params["cap_drop"] = list(args.cap_drop)
    if args.security_opt:
        params["security_opt"] = [_security_opt(opt) for opt in args.security_opt]
    for key in ("health_cmd", "health_interval", "health_timeout", "health_start_period", "health_retries"):
        value = getattr(args, key)
        if value is not None:
            params[key] = value
    log_max_size, log_max_files = args.log_max_size, args.log_max_files
    for opt in args.log_opt:
        key, sep, value = opt.partition("=")
        try:
            if key == "max-size" and sep:
                log_max_size = parse_size(value)
            elif key == "max-file" and sep:
                log_max_files = int(value)
            else:
                raise ValueError("supported: max-size=SIZE, max-file=N")
        except ValueError as exc:
            raise errors.InvalidArgument(f"invalid --log-opt {opt!r}: {exc}", field="log_opt") from exc
    if log_max_size is not None:
        params["log_max_size"] = log_max_size
    if log_max_files is not None:
        params["log_max_files"] = log_max_files
    return params
