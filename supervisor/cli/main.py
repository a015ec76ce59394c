"""``tug``: the command line client of tugd, docker-compatible where that makes sense.

It talks JSON-RPC to tugd over a Unix socket (``--socket``, else ``$TUGBOAT_SOCKET``, else
``/run/tugboat/tugd.sock``) with the blocking :class:`tugwire.syncclient.Client`, and imports
nothing heavy (no anyio, no asyncio, no datetime): a ``tug`` command must start in milliseconds.

Exit statuses follow docker: 0 on success, 1 for an error, 125 when ``run``/``create`` fail before
the container runs (126 when its command cannot be executed, 127 when it is not found), the
container's own exit status for a foreground ``run``, 2 for a usage error (125 for ``run`` and
``create``).
"""

from __future__ import annotations

import argparse
import binascii
import importlib
import json
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Iterable, Sequence

from tugwire import errors
from tugwire.crilog import parse_record, timestamp
from tugwire.syncclient import Client, Disconnected, is_response, response_result

# typing is not imported at run time: it costs ~2 ms of every `tug` command, and with
# `from __future__ import annotations` these names only appear in annotations.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn

DEFAULT_SOCKET = "/run/tugboat/tugd.sock"
SOCKET_ENV = "TUGBOAT_SOCKET"

# Signals a foreground ``run`` forwards to its container (docker's sig-proxy does the same).
FORWARDED_SIGNALS = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)
FORCE_DETACH_INTERRUPTS = 3  # the third Ctrl-C leaves a container that ignores SIGINT running

Handler = Callable[[argparse.Namespace, Client], int]


# =================================================================================== parsing


class _Formatter(argparse.HelpFormatter):
    """argparse's formatter, minus its ``import shutil`` for the terminal's width: argparse
    makes a formatter for every ``add_argument`` (to check the metavar), and shutil drags in
    bz2, lzma and fnmatch, 2-3 ms of every ``tug`` command for a width that only ``--help``
    and usage errors print. Same rule as ``shutil.get_terminal_size``: ``$COLUMNS``, else
    the terminal of stdout, else 80."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:  # fmt: skip
        if width is None:
            width = _terminal_columns() - 2
        super().__init__(prog, indent_increment, max_help_position, width)


def _terminal_columns() -> int:
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno() if sys.__stdout__ else 1).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors exit with ``exit_status`` (125 for run/create)."""

    def __init__(self, *args: Any, exit_status: int = 2, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)
        self.exit_status = exit_status

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(self.exit_status, f"{self.prog}: error: {message}\n")


# Patterns are strings, compiled (and cached) by `re` on first use: compiling the five of them
# at import cost ~0.8 ms of every `tug` command, most of which never parse a size or a time.
_SIZE_RE = r"(\d+(?:\.\d+)?) ?([kKmMgGtTpP])?[iI]?[bB]?"
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def _duration_seconds(text: str) -> float:
    """``30s``, ``1m30s``, ``500ms`` or a plain number of seconds."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return parse_duration(text) / NS
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def parse_size(text: str) -> int:
    """A size in bytes from ``64m``, ``1.5g``, ``512k``, ``100b`` or ``4096`` (1024-based, as
    docker's ``RAMInBytes``). Raises ValueError."""
    m = re.fullmatch(_SIZE_RE, text.strip())
    if m is None:
        raise ValueError(f"invalid size {text!r}: want a number and an optional b, k, m or g")
    unit = (m.group(2) or "").lower()
    return int(float(m.group(1)) * _SIZE_UNITS[unit])


def _size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _cpus_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number of CPUs {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"invalid number of CPUs {text!r}: must be positive")
    return value


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


def _add_create_options(p: argparse.ArgumentParser) -> None:
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
    p.add_argument("-m", "--memory", type=_size_arg, help="memory limit (e.g. 64m)")
    p.add_argument("--cpus", type=_cpus_arg, help="number of CPUs (e.g. 0.5)")
    p.add_argument("--pids-limit", type=int, help="limit on the number of processes")
    p.add_argument("--stop-signal", help="signal that stops the container (default SIGTERM)")
    p.add_argument(
        "--stop-timeout",
        type=int,
        metavar="SECONDS",
        help="seconds to wait after the stop signal before SIGKILL",
    )
    p.add_argument("--log-max-size", type=_size_arg, help="rotate the log at this size (e.g. 10m)")
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
            type=_duration_seconds,
            metavar="DURATION",
            help=f"time {what} (30s, 1m30s, 500ms)" if what else "failures in this first time do not count",
        )
    p.add_argument("--health-retries", type=int, metavar="N", help="failures in a row that make it unhealthy")
    p.add_argument("image", help="image reference or id")
    p.add_argument("command", nargs=argparse.REMAINDER, help="command and its arguments")


def _read_env_file(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise errors.InvalidArgument(f"cannot read env file {path}: {exc.strerror}") from exc
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _env_items(items: Iterable[str]) -> list[str]:
    """``K=V`` as given; ``K`` alone takes this process's value, or is dropped (as docker)."""
    out = []
    for item in items:
        if "=" in item:
            if item.startswith("="):
                raise errors.InvalidArgument(f"invalid environment variable {item!r}", field="env")
            out.append(item)
        elif item and item in os.environ:
            out.append(f"{item}={os.environ[item]}")
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
        env.extend(_env_items(_read_env_file(path)))
    env.extend(_env_items(args.env))
    if env:
        params["env"] = env
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


# ===================================================================================== time

_RFC3339_RE = (  # compiled on first use, like the patterns above
    r"(\d{4})-(\d{2})-(\d{2})"
    r"(?:[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?)?"
    r"(Z|z|[+-]\d{2}(?::?\d{2})?)?"
)
_DURATION_PART = r"(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|μs|ms|s|m|h)"
_DURATION_RE = rf"[+-]?(?:{_DURATION_PART})+|[+-]?0"
_DURATION_PART_RE = r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)"
_DURATION_UNITS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "μs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_UNIX_RE = r"(\d+)(?:\.(\d{1,9}))?"
_DAYS_IN_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
NS = 1_000_000_000


def _days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm)."""
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def parse_rfc3339(text: str, *, local_if_naive: bool = True) -> int:
    """Nanoseconds since the epoch of an RFC 3339 time (``2026-01-02T03:04:05Z``, a fraction of
    up to 9 digits, ``+02:00``); a time without a zone is local time (as docker) unless
    ``local_if_naive`` is false (then UTC). A date alone means its midnight. Raises ValueError."""
    m = re.fullmatch(_RFC3339_RE, text.strip())
    if m is None:
        raise ValueError(f"invalid time {text!r}")
    year, month, day = int(m.group(1)), int(m.group(2)), int(m.group(3))
    hour, minute, sec = (int(g) if g else 0 for g in m.group(4, 5, 6))
    frac = int((m.group(7) or "")[:9].ljust(9, "0"))
    leap = month == 2 and day == 29 and (year % 4 != 0 or (year % 100 == 0 and year % 400 != 0))
    if not (1 <= month <= 12 and 1 <= day <= _DAYS_IN_MONTH[month - 1]) or leap:
        raise ValueError(f"invalid date in {text!r}")
    if hour > 23 or minute > 59 or sec > 60:
        raise ValueError(f"invalid time of day in {text!r}")
    zone = m.group(8)
    if zone is None and local_if_naive:
        secs = int(time.mktime((year, month, day, hour, minute, sec, 0, 0, -1)))
        return secs * NS + frac
    offset = 0
    if zone and zone not in "Zz":
        digits = zone[1:].replace(":", "")
        offset = int(digits[:2]) * 3600 + int(digits[2:4] or 0) * 60
        if zone[0] == "-":
            offset = -offset
    secs = _days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + sec - offset
    return secs * NS + frac


def parse_duration(text: str) -> int:
    """Nanoseconds of a Go-style duration (``10s``, ``5m``, ``1h30m``, ``1.5h``, ``300ms``).
    Raises ValueError."""
    text = text.strip()
    if re.fullmatch(_DURATION_RE, text) is None:
        raise ValueError(f"invalid duration {text!r}")
    sign = -1 if text.startswith("-") else 1
    total = 0.0
    for number, unit in re.findall(_DURATION_PART_RE, text):
        total += float(number) * _DURATION_UNITS[unit]
    return sign * round(total)


def parse_time_ns(value: str, now_ns: int | None = None, option: str = "--since") -> int:
    """Nanoseconds since the epoch of a time given on the command line: an RFC 3339 time, a
    duration before now (``10s``, ``5m``, ``2h``) or a unix timestamp (``1700000000[.123]``).
    Raises ValueError."""
    value = value.strip()
    if now_ns is None:
        now_ns = time.time_ns()
    if re.fullmatch(_DURATION_RE, value):
        ns = now_ns - parse_duration(value)
    elif (m := re.fullmatch(_UNIX_RE, value)) is not None:
        ns = int(m.group(1)) * NS + int((m.group(2) or "").ljust(9, "0"))
    else:
        try:
            ns = parse_rfc3339(value)
        except ValueError:
            raise ValueError(
                f"invalid {option} {value!r}: want an RFC 3339 time (2026-01-02T03:04:05Z), "
                "a duration (10s, 5m, 2h) or a unix timestamp"
            ) from None
    return max(ns, 0)


def parse_since(value: str, now_ns: int | None = None) -> str:
    """The ``since`` of ``container.logs``: a fixed-width UTC ``YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ``
    from an RFC 3339 time, a duration before now (``10s``, ``5m``, ``2h``) or a unix timestamp
    (``1700000000[.123]``). Raises ValueError."""
    return timestamp(parse_time_ns(value, now_ns)).decode()


def time_ns_of(value: Any) -> int | None:
    """Nanoseconds since the epoch of a timestamp from tugd (RFC 3339 in UTC, or a number of
    seconds), or None when absent or unreadable."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return int(value * NS) if value < 1e12 else int(value)
    if isinstance(value, str) and value:
        try:
            ns = parse_rfc3339(value, local_if_naive=False)
        except ValueError:
            return None
        return ns if ns > 0 else None  # Go's zero time, "0001-01-01T00:00:00Z", means never
    return None


def human_duration(seconds: float) -> str:
    """How long, docker style (go-units ``HumanDuration``): ``5 seconds``, ``About a minute``."""
    secs = int(seconds)
    if secs < 1:
        return "Less than a second"
    if secs == 1:
        return "1 second"
    if secs < 60:
        return f"{secs} seconds"
    minutes = secs // 60
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(seconds / 3600 + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds / 3600) // 24 // 365} years"


def human_size(size: float, precision: int = 3) -> str:
    """A byte count, docker style (go-units ``HumanSizeWithPrecision``, 1000-based): ``4.26MB``."""
    units = ("B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB")
    i = 0
    while size >= 1000 and i < len(units) - 1:
        size /= 1000
        i += 1
    return f"{size:.{precision}g}{units[i]}"


def _ago(value: Any, now_ns: int) -> str:
    ns = time_ns_of(value)
    if ns is None:
        return ""
    return human_duration(max(now_ns - ns, 0) / NS) + " ago"


def container_status(summary: dict[str, Any], now_ns: int | None = None) -> str:
    """The STATUS column of ``ps``: ``Up 3 seconds``, ``Exited (3) 2 seconds ago``, ``Created``."""
    if now_ns is None:
        now_ns = time.time_ns()
    state = summary.get("state")
    if state in ("running", "paused"):
        started = time_ns_of(summary.get("started_at"))
        up = "Up" if started is None else "Up " + human_duration(max(now_ns - started, 0) / NS)
        if state == "paused":
            return up + " (Paused)"
        health = summary.get("health")
        if health == "starting":
            return up + " (health: starting)"
        return f"{up} ({health})" if health else up
    if state == "exited":
        code = summary.get("exit_code")
        word = "Restarting" if summary.get("restarting") else "Exited"
        text = f"{word} ({code if code is not None else '?'})"
        ago = _ago(summary.get("finished_at"), now_ns)
        return f"{text} {ago}" if ago else text
    if state == "created":
        return "Created"
    if state == "unknown":
        return "Unknown"
    return str(state or "Unknown").capitalize()


# ================================================================================ log records

# The common case, a chunk of full lines of one stream with crilog's fixed-width timestamps, is
# decoded by one regex substitution (C speed, about 150 MB/s), not record by record in Python. A
# record starts after a newline, so the data gets one in front: a pattern that starts with a
# literal is searched for far faster than one anchored with ``^`` and ``re.M``.
_TS_WIDTH = len(timestamp(0))
_HEADER_WIDTH = _TS_WIDTH + len(b" stdout F ")
_FULL_RECORD = {
    stream: re.compile(rb"\n.{%d} %s F " % (_TS_WIDTH, stream)) for stream in (b"stdout", b"stderr")
}
# The shim writes a P record wherever a read from the pipe ended mid-line (it never holds a
# partial line back), so a 1 MiB chunk of short lines has a P record every ~64 KiB: one P used
# to send the whole chunk to the per-record path (46 MB/s for a followed `tug run`).
_ANY_RECORD = {
    stream: re.compile(rb"\n.{%d} %s [FP] " % (_TS_WIDTH, stream)) for stream in (b"stdout", b"stderr")
}
_PARTIAL_RECORD = {
    stream: re.compile(rb"\n.{%d} %s P " % (_TS_WIDTH, stream)) for stream in (b"stdout", b"stderr")
}
_FDS = {b"stdout": 1, b"stderr": 2}


class LogDecoder:
    """Turns CRI log records into the bytes the container wrote, per stream.

    ``feed`` takes data from ``container.logs.data`` (whole records; a torn record is kept until
    the rest arrives) and returns ``[(fd, bytes), ...]`` with fd 1 (stdout) or 2 (stderr), runs of
    one stream joined. A newline is added after an ``F`` record and nothing after a ``P`` one.
    With ``timestamps``, each line starts with its record's timestamp and a space (only the first
    piece of a line split into ``P`` records).
    """

    def __init__(self, *, timestamps: bool = False) -> None:
        self.timestamps = timestamps
        self._torn = b""
        self._midline = {b"stdout": False, b"stderr": False}  # after a P record of that stream

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """The output for ``data``: a list of (fd, bytes)."""
        if self._torn:
            data = self._torn + data
        end = data.rfind(b"\n") + 1
        self._torn = data[end:]
        data = data[:end]
        if not data:
            return []
        stream = data[_TS_WIDTH + 1 : _TS_WIDTH + 7]
        if not self.timestamps and stream in _ANY_RECORD:
            joined = self._one_stream(data, stream)
            if joined is not None:
                return [(_FDS[stream], joined)]
            return self._slow(data)
        pattern = _FULL_RECORD.get(stream)
        if pattern is not None:
            stripped, n = pattern.subn(b"\n", b"\n" + data)
            if n == data.count(b"\n"):  # every record is a full line of this stream
                if not self.timestamps:
                    return [(_FDS[stream], stripped[1:])]
                # "<ts> stdout F <content>" -> "<ts> <content>"
                lines = data[:-1].split(b"\n")
                out = [line[:_TS_WIDTH] + line[_HEADER_WIDTH - 1 :] for line in lines]
                if self._midline[stream]:  # the end of a line begun by a P record
                    out[0] = lines[0][_HEADER_WIDTH:]
                self._midline[stream] = False
                return [(_FDS[stream], b"\n".join(out) + b"\n")]
        return self._slow(data)

    def _one_stream(self, data: bytes, stream: bytes) -> bytes | None:
        """The content of ``data`` if every record in it is of ``stream`` (F or P), else None.

        Each ``\\n<header> `` becomes ``\\n`` in one C-level substitution: with a newline put in
        front, that leaves every record's content preceded by the newline that ended the record
        before it, so dropping the first byte gives the container's bytes, except that a P
        record's newline is not the container's. Each header is ``_HEADER_WIDTH`` bytes longer
        than its replacement, so the P records' newlines are found in the result by arithmetic
        and cut out by slicing.
        """
        framed = b"\n" + data
        whole, n = _ANY_RECORD[stream].subn(b"\n", framed)
        if n != data.count(b"\n"):
            return None  # another stream, or something that is not a record
        cuts = [0]  # positions in ``whole`` of bytes to drop: the artificial newline, P newlines
        records = 0  # records whose header starts at or before the current match
        counted = 0
        for m in _PARTIAL_RECORD[stream].finditer(framed):
            records += framed.count(b"\n", counted, m.start() + 1)
            counted = m.start() + 1
            cuts.append(framed.index(b"\n", m.end()) - records * _HEADER_WIDTH)
        self._midline[stream] = cuts[-1] == len(whole) - 1 and len(cuts) > 1  # ends with a P
        if len(cuts) == 1:
            return whole[1:]
        ends = [*cuts[1:], len(whole)]
        return b"".join(whole[cut + 1 : end] for cut, end in zip(cuts, ends, strict=True))

    def _slow(self, data: bytes) -> list[tuple[int, bytes]]:
        out: list[tuple[int, list[bytes]]] = []
        for record in data[:-1].split(b"\n"):
            ts, stream, full, content = parse_record(record)
            fd = _FDS.get(stream)
            if fd is None:
                continue  # not a record
            pieces = []
            if self.timestamps and not self._midline[stream]:
                pieces.append(ts + b" ")
            pieces.append(content)
            if full:
                pieces.append(b"\n")
            self._midline[stream] = not full
            if out and out[-1][0] == fd:
                out[-1][1].extend(pieces)
            else:
                out.append((fd, pieces))
        return [(fd, b"".join(parts)) for fd, parts in out]


def _write_output(chunks: list[tuple[int, bytes]]) -> None:
    for fd, data in chunks:
        stream = sys.stdout if fd == 1 else sys.stderr
        stream.flush()
        stream.buffer.write(data)
        stream.buffer.flush()


def _log_data(msg: dict[str, Any], req_id: int) -> bytes | None:
    """The decoded data of a ``container.logs.data`` notification for ``req_id``, else None."""
    if msg.get("method") != "container.logs.data":
        return None
    params = msg.get("params")
    if not isinstance(params, dict) or params.get("request") != req_id:
        return None
    try:
        return binascii.a2b_base64(params.get("data") or "")
    except (binascii.Error, TypeError, ValueError) as exc:
        raise errors.Internal(f"malformed log data from tugd: {exc}") from exc


# =================================================================================== output


def _print_error(message: str) -> None:
    sys.stdout.flush()
    print(f"tug: Error: {message}", file=sys.stderr, flush=True)


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Columns as docker's tabwriter lays them out (min width 10, padding 3)."""
    rows = [list(headers), *(list(r) for r in rows)]
    widths = [max(10, max(len(r[i]) for r in rows) + 3) for i in range(len(headers) - 1)]
    lines = []
    for r in rows:
        cells = [cell.ljust(w) for cell, w in zip(r, widths, strict=False)]
        lines.append(("".join(cells) + r[-1]).rstrip())
    return "\n".join(lines)


def _ellipsis(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _short_id(value: Any) -> str:
    return str(value or "").split(":", 1)[-1][:12]


def _json_line(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def _call_many(client: Client, method: str, params: list[dict[str, Any]]) -> list[Any]:
    """Pipelined calls on one connection (tugd runs them concurrently): each result, or the
    :class:`TugError` it raised. A broken connection is raised."""
    ids = [client.send(method, p) for p in params]
    results: list[Any] = []
    for req_id in ids:
        try:
            results.append(client.wait_for(req_id))
        except Disconnected:
            raise
        except errors.TugError as exc:
            results.append(exc)
    return results


def _report(names: list[str], results: list[Any]) -> int:
    """Print each name whose call succeeded and each error; 1 if any failed."""
    status = 0
    for name, result in zip(names, results, strict=True):
        if isinstance(result, errors.TugError):
            _print_error(result.message)
            status = 1
        else:
            print(name, flush=True)
    return status


# ========================================================================== run and create


def _start_failure_status(exc: errors.TugError) -> int:
    """docker's statuses for a failed start: 127 not found, 126 not executable, 125 otherwise."""
    text = exc.message.lower()
    if "executable file not found" in text or "no such file or directory" in text:
        return 127
    if "permission denied" in text or "is a directory" in text:
        return 126
    return 125


def _start_failed(client: Client, cid: str, exc: errors.TugError, auto_remove: bool) -> int:
    _print_error(exc.message)
    if auto_remove:
        try:
            client.call("container.delete", {"id": cid, "force": True})
        except errors.TugError:
            pass  # best effort: tugd may have removed it already
    return _start_failure_status(exc)


def _cmd_create(args: argparse.Namespace, client: Client) -> int:
    created = client.call("container.create", create_params(args))
    print(created["id"])
    return 0


def _cmd_run(args: argparse.Namespace, client: Client) -> int:
    created = client.call("container.create", create_params(args))
    cid = str(created["id"])
    if args.detach:
        try:
            client.call("container.start", {"id": cid})
        except Disconnected:
            raise
        except errors.TugError as exc:
            return _start_failed(client, cid, exc, args.rm)
        print(cid)
        return 0
    if args.tty or args.interactive:
        from . import attach, tty  # run -i / -t: the container's terminal or stdin is ours

        return attach.attach(
            client,
            cid,
            tty=args.tty,
            stdin=args.interactive,
            detach_keys=tty.parse_detach_keys(args.detach_keys),
            start=True,
            auto_remove=args.rm,
            on_start_error=lambda exc: _start_failed(client, cid, exc, args.rm),
        )
    return _run_foreground(client, cid, auto_remove=args.rm)


def _drain(fd: int) -> bytes:
    out = b""
    while True:
        try:
            data = os.read(fd, 512)
        except BlockingIOError:
            return out
        if not data:
            return out
        out += data


def _ignore_signal(signum: int, frame: object) -> None:
    """Only there so that the signal reaches the wakeup fd instead of killing us."""


def _run_foreground(client: Client, cid: str, *, auto_remove: bool) -> int:
    """Stream the container's output, forward signals to it, and return its exit status.

    ``logs {follow}`` and ``wait`` are sent before ``start`` on the same connection: tugd accepts
    them in order once registered, so nothing that ``start`` causes can be missed. Signals reach
    the loop through a ``set_wakeup_fd`` pipe; the handler itself writes nothing to the socket.
    """
    decoder = LogDecoder()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    old_wakeup = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    old_handlers = {s: signal.signal(s, _ignore_signal) for s in FORWARDED_SIGNALS}
    try:
        logs_id = client.send("container.logs", {"id": cid, "follow": True})
        condition = "removed" if auto_remove else "next-exit"
        wait_id = client.send("container.wait", {"id": cid, "condition": condition})
        start_id = client.send("container.start", {"id": cid})
        started = False
        held_signals: list[int] = []  # signals that came before start had answered
        interrupts = 0
        logs_done = False
        waited: dict[str, Any] | None = None
        while not (logs_done and waited is not None):
            msg = client.next_message(wake_r)
            if msg is None:
                for signum in _drain(wake_r):
                    if signum == signal.SIGINT:
                        interrupts += 1
                        if interrupts >= FORCE_DETACH_INTERRUPTS:
                            _print_error(f"detached from container {cid[:12]}; it keeps running")
                            return 130
                    if started:
                        _forward(client, cid, signum)
                    else:
                        held_signals.append(signum)
                continue
            if not is_response(msg):
                data = _log_data(msg, logs_id)
                if data:
                    _write_output(decoder.feed(data))
                continue
            rid = msg.get("id")
            if rid == start_id:
                try:
                    response_result(msg)
                except errors.TugError as exc:
                    return _start_failed(client, cid, exc, auto_remove)
                started = True
                for signum in held_signals:
                    _forward(client, cid, signum)
                held_signals.clear()
            elif rid == logs_id:
                logs_done = True
                try:
                    response_result(msg)
                except errors.TugError as exc:
                    _print_error(f"logs: {exc.message}")
            elif rid == wait_id:
                result = response_result(msg)  # an error here is the run's error (125)
                waited = result if isinstance(result, dict) else {}
            # else: the answer to a forwarded kill; a container that has exited meanwhile is fine
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)
        signal.set_wakeup_fd(old_wakeup)
        os.close(wake_r)
        os.close(wake_w)
    code = waited.get("exit_code")
    if not isinstance(code, int):
        _print_error(
            f"the exit status of container {cid[:12]} is not known (state {waited.get('state', 'unknown')})"
        )
        return 125
    return code


def _forward(client: Client, cid: str, signum: int) -> None:
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = str(signum)
    client.send("container.kill", {"id": cid, "signal": name})


# ============================================================================ other commands


def _cmd_start(args: argparse.Namespace, client: Client) -> int:
    return _report(
        args.containers, _call_many(client, "container.start", [{"id": c} for c in args.containers])
    )


def _cmd_stop(args: argparse.Namespace, client: Client) -> int:
    params: list[dict[str, Any]] = []
    for c in args.containers:
        p: dict[str, Any] = {"id": c}
        if args.time is not None:
            p["timeout"] = args.time
        params.append(p)
    return _report(args.containers, _call_many(client, "container.stop", params))


def _cmd_kill(args: argparse.Namespace, client: Client) -> int:
    sig: str | int = int(args.signal) if args.signal.isdigit() else args.signal
    return _report(
        args.containers,
        _call_many(client, "container.kill", [{"id": c, "signal": sig} for c in args.containers]),
    )


def _cmd_rm(args: argparse.Namespace, client: Client) -> int:
    return _report(
        args.containers,
        _call_many(client, "container.delete", [{"id": c, "force": args.force} for c in args.containers]),
    )


def _cmd_wait(args: argparse.Namespace, client: Client) -> int:
    status = 0
    for c in args.containers:
        try:
            result = client.call("container.wait", {"id": c, "condition": "not-running"})
            if result.get("state") == "created":  # docker waits for a created container to run
                result = client.call("container.wait", {"id": c, "condition": "next-exit"})
        except Disconnected:
            raise
        except errors.TugError as exc:
            _print_error(exc.message)
            status = 1
            continue
        code = result.get("exit_code")
        if isinstance(code, int):
            print(code, flush=True)
        else:
            _print_error(f"the exit status of {c} is not known (state {result.get('state')})")
            status = 1
    return status


def _cmd_ps(args: argparse.Namespace, client: Client) -> int:
    items = client.call("container.list", {"all": args.all})
    if args.format == "json":
        for item in items:
            print(_json_line(item))
        return 0
    if args.quiet:
        for item in items:
            print(item["id"] if args.no_trunc else item["id"][:12])
        return 0
    now = time.time_ns()
    rows = []
    for item in items:
        command = item.get("command") or ""
        if isinstance(command, list):
            command = " ".join(command)
        if not args.no_trunc:
            command = _ellipsis(str(command), 20)
        rows.append(
            [
                item["id"] if args.no_trunc else item["id"][:12],
                str(item.get("image", "")),
                json.dumps(command, ensure_ascii=False),
                _ago(item.get("created_at"), now),
                container_status(item, now),
                str(item.get("name", "")),
            ]
        )
    print(_table(["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "NAMES"], rows))
    return 0


_TEMPLATE_RE = r"\{\{\s*(json\s+)?\.([\w.]*)\s*\}\}"


def render_template(template: str, obj: Any) -> str:
    """A small subset of docker's ``--format``: ``{{.a.b}}`` and ``{{json .a}}`` (keys match
    exactly, else case-insensitively, so ``{{.State}}`` finds ``state``)."""

    def lookup(m: re.Match[str]) -> str:
        value = obj
        for key in filter(None, m.group(2).split(".")):
            if not isinstance(value, dict):
                value = None
                break
            if key in value:
                value = value[key]
            else:
                folded = {k.lower().replace("_", ""): v for k, v in value.items()}
                value = folded.get(key.lower().replace("_", ""))
        if m.group(1) or isinstance(value, dict | list):
            return json.dumps(value, ensure_ascii=False)
        if value is None:
            return "<no value>"
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)

    return re.sub(_TEMPLATE_RE, lookup, template)


def _cmd_inspect(args: argparse.Namespace, client: Client) -> int:
    status = 0
    for ref in args.objects:
        try:
            obj = _inspect_one(client, ref, args.type)
        except Disconnected:
            raise
        except errors.TugError as exc:
            _print_error(exc.message)
            status = 1
            continue
        if args.format:
            print(render_template(args.format, obj))
        else:
            print(json.dumps(obj, indent=2, ensure_ascii=False))
    return status


def _inspect_one(client: Client, ref: str, kind: str | None) -> Any:
    if kind == "image":
        return client.call("image.inspect", {"ref": ref})
    try:
        return client.call("container.inspect", {"id": ref})
    except errors.NotFound:
        if kind == "container":
            raise
    try:
        return client.call("image.inspect", {"ref": ref})
    except errors.NotFound:
        raise errors.NotFound(f"no such container or image: {ref}") from None


def _cmd_logs(args: argparse.Namespace, client: Client) -> int:
    params: dict[str, Any] = {"id": args.container, "follow": args.follow}
    if args.tail is not None:
        params["tail"] = args.tail
    if args.since is not None:
        params["since"] = args.since
    decoder = LogDecoder(timestamps=args.timestamps)
    req_id = client.send("container.logs", params)
    while True:
        msg = client.next_message()
        assert msg is not None
        if is_response(msg):
            if msg.get("id") == req_id:
                response_result(msg)
                return 0
            continue
        data = _log_data(msg, req_id)
        if data:
            _write_output(decoder.feed(data))


def _tail_arg(text: str) -> int | None:
    if text == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid --tail {text!r}: want N or 'all'") from None
    return max(value, 0)


def _since_arg(text: str) -> str:
    try:
        return parse_since(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _time_arg(option: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            return parse_time_ns(text, option=option)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def event_filters(items: Sequence[str]) -> dict[str, list[str]]:
    """``--filter key=value`` options as ``events.subscribe`` wants them: values of one key are
    alternatives (``{"container": ["a", "b"]}``). Raises InvalidArgument."""
    filters: dict[str, list[str]] = {}
    for f in items:
        key, sep, value = f.partition("=")
        if not sep or not key or not value:
            raise errors.InvalidArgument(f"invalid filter {f!r}: want key=value")
        filters.setdefault(key, []).append(value)
    return filters


def _cmd_events(args: argparse.Namespace, client: Client) -> int:
    subscribe: dict[str, Any] = {"filters": event_filters(args.filter)}
    if args.since is not None:
        subscribe["since"] = args.since
    if args.until is not None:
        subscribe["until"] = args.until
    req_id = client.send("events.subscribe", subscribe)
    try:
        while True:
            msg = client.next_message()
            assert msg is not None
            if is_response(msg):
                if msg.get("id") == req_id:
                    response_result(msg)
                    return 0
                continue
            params = msg.get("params")
            if msg.get("method") != "event" or not isinstance(params, dict):
                continue
            if params.get("request") != req_id:
                continue
            event = {k: v for k, v in params.items() if k != "request"}
            print(_json_line(event) if args.format == "json" else format_event(event), flush=True)
    except KeyboardInterrupt:
        return 0


def format_event(event: dict[str, Any]) -> str:
    """One event as docker prints it: ``TIME type action id (key=value, ...)``."""
    attrs: dict[str, Any] = {}
    for key in ("image", "name"):
        if event.get(key):
            attrs[key] = event[key]
    extra = event.get("attributes")
    if isinstance(extra, dict):
        attrs.update({k: v for k, v in extra.items() if v is not None})
    text = " ".join(str(event.get(k, "")) for k in ("time", "type", "action", "id"))
    if attrs:
        parts = []
        for key in sorted(attrs):
            value = attrs[key]
            shown = ("true" if value else "false") if isinstance(value, bool) else str(value)
            parts.append(f"{key}={shown}")
        text += " (" + ", ".join(parts) + ")"
    return text


def _cmd_info(args: argparse.Namespace, client: Client) -> int:
    info = client.call("system.info")
    if args.format == "json":
        print(json.dumps(info, indent=2, ensure_ascii=False))
    else:
        _print_tree(info, "")
    return 0


def _reclaimable(part: dict[str, Any]) -> str:
    size, reclaimable = int(part.get("size") or 0), int(part.get("reclaimable") or 0)
    percent = f" ({reclaimable * 100 // size}%)" if size else ""
    return human_size(reclaimable) + percent


def _cmd_df(args: argparse.Namespace, client: Client) -> int:
    usage = client.call("system.df")
    if args.format == "json":
        print(json.dumps(usage, indent=2, ensure_ascii=False))
        return 0
    rows = []
    for title, key in (("Images", "images"), ("Containers", "containers"), ("Logs", "logs")):
        part = usage.get(key) or {}
        rows.append(
            [
                title,
                str(part.get("count", 0)),
                str(part.get("active", 0)),
                human_size(int(part.get("size") or 0)),
                _reclaimable(part),
            ]
        )
    print(_table(["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"], rows))
    if args.verbose:
        print("\nImages space usage:\n")
        print(
            _table(
                ["REPOSITORY:TAG", "IMAGE ID", "SIZE", "SHARED SIZE", "CONTAINERS"],
                [
                    [
                        ", ".join(img.get("repo_tags") or []) or "<none>",
                        _short_id(img.get("id")),
                        human_size(int(img.get("size") or 0)),
                        human_size(int(img.get("shared_size") or 0)),
                        str(img.get("containers", 0)),
                    ]
                    for img in usage["images"].get("items", [])
                ],
            )
        )
        print("\nContainers space usage:\n")
        print(
            _table(
                ["CONTAINER ID", "IMAGE", "STATE", "SIZE", "LOGS", "NAMES"],
                [
                    [
                        _short_id(c.get("id")),
                        str(c.get("image", "")),
                        str(c.get("state", "")),
                        human_size(int(c.get("size") or 0)),
                        human_size(int(c.get("log_size") or 0)),
                        str(c.get("name", "")),
                    ]
                    for c in usage["containers"].get("items", [])
                ],
            )
        )
    return 0


def _confirm(question: str) -> bool | None:
    """Ask on the terminal; None when there is no terminal to ask on."""
    if not sys.stdin.isatty():
        return None
    print(question, end=" ", flush=True)
    try:
        answer = sys.stdin.readline()
    except KeyboardInterrupt:
        print()
        return False
    return answer.strip().lower() in ("y", "yes")


def _cmd_prune(args: argparse.Namespace, client: Client) -> int:
    if not args.force:
        images = (
            "all images without at least one container associated to them"
            if args.all
            else ("all dangling images (images without a name)")
        )
        warning = (
            "WARNING! This will remove:\n  - all stopped containers\n  - "
            f"{images}\nAre you sure you want to continue? [y/N]"
        )
        answer = _confirm(warning)
        if answer is None:
            _print_error("refusing to prune without confirmation: stdin is not a terminal (use -f)")
            return 1
        if not answer:
            return 0
    result = client.call("system.prune", {"all": args.all})
    if args.format == "json":
        print(json.dumps(result, indent=2, ensure_ascii=False))
        return 0
    if result.get("containers_deleted"):
        print("Deleted Containers:")
        for cid in result["containers_deleted"]:
            print(cid)
        print()
    if result.get("images_untagged") or result.get("images_deleted"):
        print("Deleted Images:")
        for name in result.get("images_untagged") or []:
            print(f"untagged: {name}")
        for image_id in result.get("images_deleted") or []:
            print(f"deleted: {image_id}")
        print()
    print(f"Total reclaimed space: {human_size(int(result.get('space_reclaimed') or 0))}")
    return 0


def _print_tree(obj: Any, indent: str) -> None:
    if not isinstance(obj, dict):
        print(f"{indent}{obj}")
        return
    for key, value in obj.items():
        if isinstance(value, dict):
            print(f"{indent}{key}:")
            _print_tree(value, indent + "  ")
        else:
            shown = json.dumps(value) if value is None or isinstance(value, bool | list) else value
            print(f"{indent}{key}: {shown}")


# ============================================================================ image commands


def parse_change(change: str, config: dict[str, Any]) -> None:
    """Apply one ``--change`` instruction (CMD, ENTRYPOINT, ENV, WORKDIR, USER) to an image
    config. Raises :class:`errors.InvalidArgument`."""
    word, _, rest = change.strip().partition(" ")
    instr, rest = word.upper(), rest.strip()
    if instr in ("CMD", "ENTRYPOINT"):
        key = "Cmd" if instr == "CMD" else "Entrypoint"
        value: Any = None
        if rest.startswith("["):
            try:
                value = json.loads(rest)
            except ValueError:
                value = None
            if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                value = None
        config[key] = value if value is not None else ["/bin/sh", "-c", rest]
    elif instr == "ENV":
        import shlex

        env = config.setdefault("Env", [])
        words = shlex.split(rest)
        if words and "=" in words[0]:
            for w in words:
                if "=" not in w or w.startswith("="):
                    raise errors.InvalidArgument(f"invalid --change {change!r}: {w!r} is not K=V")
                env.append(w)
        elif len(words) >= 2:
            env.append(f"{words[0]}={' '.join(words[1:])}")
        else:
            raise errors.InvalidArgument(f"invalid --change {change!r}: want ENV K=V")
    elif instr in ("WORKDIR", "USER"):
        if not rest:
            raise errors.InvalidArgument(f"invalid --change {change!r}: {instr} needs a value")
        config["WorkingDir" if instr == "WORKDIR" else "User"] = rest
    else:
        raise errors.InvalidArgument(
            f"invalid --change {change!r}: supported are CMD, ENTRYPOINT, ENV, WORKDIR and USER"
        )


def _cmd_import(args: argparse.Namespace, client: Client) -> int:
    source = args.file
    if source == "-" or "://" in source:
        raise errors.InvalidArgument("import reads a rootfs tar from a file path on this host")
    params: dict[str, Any] = {"path": os.path.abspath(source), "ref": args.ref}
    config: dict[str, Any] = {}
    for change in args.change:
        parse_change(change, config)
    if config:
        params["config"] = config
    result = client.call("image.import", params)
    print(result["id"])
    return 0


def _split_tag(name: str) -> tuple[str, str]:
    repo, sep, tag = name.rpartition(":")
    if not sep or "/" in tag:
        return name, "latest"
    return repo, tag


def _cmd_images(args: argparse.Namespace, client: Client) -> int:
    items = client.call("image.list")
    if args.repository:
        want = _split_tag(args.repository) if ":" in args.repository else (args.repository, None)
        kept = []
        for item in items:
            tags = [_split_tag(t) for t in item.get("repo_tags") or []]
            if any(r == want[0] and (want[1] is None or t == want[1]) for r, t in tags):
                kept.append(item)
        items = kept
    if args.format == "json":
        for item in items:
            print(_json_line(item))
        return 0
    items = sorted(items, key=lambda i: str(i.get("created") or ""), reverse=True)
    if args.quiet:
        seen: set[str] = set()
        for item in items:
            shown = item["id"] if args.no_trunc else _short_id(item["id"])
            if shown not in seen:
                seen.add(shown)
                print(shown)
        return 0
    now = time.time_ns()
    rows: list[list[str]] = []
    for item in items:
        shown = item["id"] if args.no_trunc else _short_id(item["id"])
        created = _ago(item.get("created"), now)
        size = human_size(float(item.get("size") or 0))
        tags = [_split_tag(t) for t in item.get("repo_tags") or []] or [("<none>", "<none>")]
        rows.extend([repo, tag, shown, created, size] for repo, tag in tags)
    print(_table(["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"], rows))
    return 0


def _cmd_rmi(args: argparse.Namespace, client: Client) -> int:
    params = [{"ref": r, "force": args.force} for r in args.images]
    results = _call_many(client, "image.remove", params)
    status = 0
    for ref, result in zip(args.images, results, strict=True):
        if isinstance(result, errors.TugError):
            _print_error(result.message)
            status = 1
            continue
        removed = result.get("removed") if isinstance(result, dict) else result
        if not isinstance(removed, list):
            removed = [ref]
        for item in removed:
            word = "Deleted" if str(item).startswith("sha256:") else "Untagged"
            print(f"{word}: {item}", flush=True)
    return status


# ================================================================================== parser


def _add_images_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("repository", nargs="?", help="only images of this repository[:tag]")
    p.add_argument("-q", "--quiet", action="store_true", help="only image ids")
    p.add_argument("--no-trunc", action="store_true", help="full image ids")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=_cmd_images)


def _add_rmi_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--force", action="store_true", help="remove even if containers use it")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.set_defaults(func=_cmd_rmi)


def _add_import_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-c",
        "--change",
        action="append",
        default=[],
        help="CMD, ENTRYPOINT, ENV, WORKDIR or USER instruction for the image config",
    )
    p.add_argument("file", help="rootfs tar (optionally gzipped) on this host")
    p.add_argument("ref", metavar="NAME[:TAG]", help="the image's name")
    p.set_defaults(func=_cmd_import)


def _add_inspect_args(p: argparse.ArgumentParser, kind: str | None) -> None:
    p.add_argument("-f", "--format", help="a template such as '{{.state}}' or '{{json .config}}'")
    if kind is None:
        p.add_argument("--type", choices=("container", "image"), help="only this kind of object")
    p.add_argument("objects", nargs="+", metavar="NAME|ID")
    p.set_defaults(func=_cmd_inspect, type=kind)


def _add_info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(func=_cmd_info)


def _no_translation() -> None:
    """argparse asks gettext for every string it shows; we ship no translations, and gettext's
    search for catalogues on disk cost about 8 ms of every ``tug`` run (measured with cProfile)."""
    argparse._ = lambda message: message  # type: ignore[attr-defined]
    argparse.ngettext = lambda singular, plural, n: singular if n == 1 else plural  # type: ignore[attr-defined]


class _Skipped:
    """Stands in for the parser of a command this run does not use: building every subparser
    costs more than the rest of a short ``tug`` command (measured: ~10 ms)."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: self


# The commands that other modules of this package define, by module. Only the module of the
# command being run is imported: importing all of them cost every `tug` command several ms
# (-X importtime; the pull module alone ~3 ms). tests/test_cli_unit.py checks this table
# against each module's own COMMANDS.
COMMAND_MODULES: dict[str, tuple[str, ...]] = {
    "verbs": ("pause", "unpause", "top", "stats", "update", "restart", "rename", "cp"),
    "exec": ("exec",),
    "attach": ("attach",),
    "network": ("network",),
    "pull": ("pull", "push", "login", "logout"),
    "images": ("save", "load", "tag"),
    "build": ("build",),
}


def _command_in(argv: Sequence[str]) -> str | None:
    """The command word of ``argv`` (after the global options), if there is one."""
    it = iter(argv)
    for word in it:
        if word == "--socket":
            next(it, None)
        elif word.startswith("--socket="):
            continue
        elif word.startswith("-"):
            return None  # --help, or an option we do not know: build everything
        else:
            return word
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``tug`` argument parser (each command sets ``func`` and ``error_status``). Given the
    arguments, only the command they name is built in full."""
    _no_translation()
    parser = _Parser(prog="tug", description="Run and manage containers with tugd.")
    parser.add_argument(
        "--socket",
        metavar="PATH",
        help=f"tugd's socket (default ${SOCKET_ENV}, else {DEFAULT_SOCKET})",
    )
    parser.set_defaults(func=None, error_status=1)
    sub = parser.add_subparsers(dest="command_name", metavar="COMMAND", parser_class=_Parser)

    wanted = _command_in(argv) if argv is not None else None
    known = {
        "run",
        "create",
        "start",
        "stop",
        "kill",
        "rm",
        "wait",
        "ps",
        "inspect",
        "logs",
        "import",
        "images",
        "rmi",
        "image",
        "events",
        "info",
        "system",
    }
    # Only the module of the command being run is imported (see COMMAND_MODULES).
    modules = [m for m, cmds in COMMAND_MODULES.items() if wanted is not None and wanted in cmds]
    if wanted == "image":
        modules.append("images")  # image save|load|tag
    if wanted not in known and not modules:
        wanted = None
    if wanted is None:
        modules = list(COMMAND_MODULES)
    loaded = {m: importlib.import_module(f"{__package__}.{m}") for m in modules}

    def add(name: str, help_: str, **kw: Any) -> argparse.ArgumentParser:
        if wanted is not None and name != wanted:
            return _Skipped()  # type: ignore[return-value]
        p: argparse.ArgumentParser = sub.add_parser(name, help=help_, **kw)
        return p

    p = add("run", "create and start a container", add_help=False, exit_status=125)
    p.add_argument("-d", "--detach", action="store_true", help="print the id and do not wait")
    _add_create_options(p)
    p.set_defaults(func=_cmd_run, error_status=125)

    p = add("create", "create a container", add_help=False, exit_status=125)
    _add_create_options(p)
    p.set_defaults(func=_cmd_create, error_status=125)

    p = add("start", "start containers")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")
    p.set_defaults(func=_cmd_start)

    p = add("stop", "stop containers (stop signal, then SIGKILL after a timeout)")
    p.add_argument(
        "-t",
        "--time",
        "--timeout",
        type=int,
        metavar="SECONDS",
        help="seconds before SIGKILL (default: the container's stop timeout)",
    )
    p.add_argument("containers", nargs="+", metavar="CONTAINER")
    p.set_defaults(func=_cmd_stop)

    p = add("kill", "send a signal to containers")
    p.add_argument("-s", "--signal", default="SIGKILL", help="signal name or number (SIGKILL)")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")
    p.set_defaults(func=_cmd_kill)

    p = add("rm", "remove containers")
    p.add_argument("-f", "--force", action="store_true", help="kill a running container first")
    p.add_argument("-v", "--volumes", action="store_true", help="accepted for docker compatibility")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")
    p.set_defaults(func=_cmd_rm)

    p = add("wait", "wait for containers to stop and print their exit codes")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")
    p.set_defaults(func=_cmd_wait)

    p = add("ps", "list containers")
    p.add_argument("-a", "--all", action="store_true", help="all containers, not only running")
    p.add_argument("-q", "--quiet", action="store_true", help="only ids")
    p.add_argument("--no-trunc", action="store_true", help="do not truncate ids and commands")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=_cmd_ps)

    _add_inspect_args(add("inspect", "show a container or an image as JSON"), None)

    p = add("logs", "show a container's output")
    p.add_argument("-f", "--follow", action="store_true", help="follow until the container exits")
    p.add_argument("-n", "--tail", type=_tail_arg, metavar="N|all", help="only the last N lines")
    p.add_argument(
        "--since",
        type=_since_arg,
        metavar="TIME",
        help="RFC 3339 time, duration (10m) or unix timestamp",
    )
    p.add_argument("-t", "--timestamps", action="store_true", help="show timestamps")
    p.add_argument("container", metavar="CONTAINER")
    p.set_defaults(func=_cmd_logs)

    _add_import_args(add("import", "import a rootfs tarball as an image"))
    _add_images_args(add("images", "list images"))
    _add_rmi_args(add("rmi", "remove images"))

    p = add("image", "manage images")
    image_sub = p.add_subparsers(dest="image_command", metavar="COMMAND", required=True, parser_class=_Parser)
    _add_images_args(image_sub.add_parser("ls", aliases=["list"], help="list images"))
    _add_rmi_args(image_sub.add_parser("rm", aliases=["remove"], help="remove images"))
    _add_inspect_args(image_sub.add_parser("inspect", help="show an image as JSON"), "image")
    _add_import_args(image_sub.add_parser("import", help="import a rootfs tarball"))
    if "images" in loaded:
        loaded["images"].add_image_commands(image_sub)

    p = add("events", "stream events (past ones with --since/--until, then live ones)")
    p.add_argument(
        "-f",
        "--filter",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="type=container|image|network, container=NAME|ID, image=REF, event=ACTION (repeatable)",
    )
    time_help = "RFC 3339 time, duration before now (10m) or unix timestamp"
    p.add_argument("--since", type=_time_arg("--since"), metavar="TIME", help=f"from this time: {time_help}")
    p.add_argument(
        "--until", type=_time_arg("--until"), metavar="TIME", help=f"stop at this time: {time_help}"
    )
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(func=_cmd_events)

    _add_info_args(add("info", "show system information"))
    p = add("system", "manage tugd")
    system_sub = p.add_subparsers(
        dest="system_command", metavar="COMMAND", required=True, parser_class=_Parser
    )
    _add_info_args(system_sub.add_parser("info", help="show system information"))
    p = system_sub.add_parser("df", help="show disk usage")
    p.add_argument("-v", "--verbose", action="store_true", help="each image and container")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=_cmd_df)
    p = system_sub.add_parser("prune", help="remove stopped containers and unused images")
    p.add_argument("-a", "--all", action="store_true", help="every unused image, not only unnamed ones")
    p.add_argument("-f", "--force", action="store_true", help="do not ask for confirmation")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(func=_cmd_prune)
    p = system_sub.add_parser("reset", help="remove tugd's bridges, nft rules and namespaces (no containers)")
    p.set_defaults(
        func=lambda a, c: print("\n".join(c.call("system.reset")["removed"]) or "nothing to remove") or 0
    )
    for module in loaded.values():
        module.add_commands(add)
    return parser


def socket_path(args: argparse.Namespace) -> str:
    """``--socket``, else ``$TUGBOAT_SOCKET``, else the default socket."""
    return str(args.socket or os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET)


def main(argv: list[str] | None = None) -> int:
    """Run one ``tug`` command; returns the exit status."""
    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser(argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    handler: Handler | None = args.func
    if handler is None:
        parser.print_help()
        return 0
    try:
        with Client(socket_path(args)) as client:
            return handler(args, client)
    except errors.TugError as exc:
        _print_error(exc.message)
        return int(args.error_status)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (``tug logs | head``): exit as docker would on SIGPIPE, quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 141


def entry() -> NoReturn:
    """The ``tug`` console script: :func:`main`, then ``os._exit`` once stdout and stderr are
    flushed. A CLI run is one short process: tearing the interpreter down (module dicts, the
    garbage collector's last pass) costs about 4 ms here, 10 % of ``tug info``, and frees nothing
    that the kernel does not free anyway. Nothing registers ``atexit`` work in the CLI."""
    code = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BrokenPipeError:
            code = code or 141
        except (OSError, ValueError):
            code = code or 1
    os._exit(code & 0xFF if code >= 0 else 1)


if __name__ == "__main__":
    entry()
