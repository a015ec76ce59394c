"""``tug pause``, ``unpause``, ``top``, ``stats``, ``update``, ``restart``, ``rename`` and ``cp``.

Imported by :func:`supervisor.cli.main.build_parser` only when one of these commands is named;
like the rest of the CLI it imports nothing asynchronous.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from tugwire import errors
from tugwire.syncclient import Client

from .format import json_line, report, table
from .options import cpus_arg, size_arg

COMMANDS = ("pause", "unpause", "top", "stats", "update", "restart", "rename", "cp")
STATS_INTERVAL = 0.5  # between the two samples of ``--no-stream``
STATS_REFRESH = 1.0


def _cmd_pause(args: argparse.Namespace, client: Client) -> int:
    params = [{"id": c} for c in args.containers]
    return report(args.containers, client.call_many("container.pause", params))


def _cmd_unpause(args: argparse.Namespace, client: Client) -> int:
    params = [{"id": c} for c in args.containers]
    return report(args.containers, client.call_many("container.unpause", params))


def _cmd_restart(args: argparse.Namespace, client: Client) -> int:
    params: list[dict[str, Any]] = []
    for c in args.containers:
        p: dict[str, Any] = {"id": c}
        if args.time is not None:
            p["timeout"] = args.time
        params.append(p)
    return report(args.containers, client.call_many("container.restart", params))


def _cmd_rename(args: argparse.Namespace, client: Client) -> int:
    client.call("container.rename", {"id": args.container, "name": args.new_name})
    return 0


def _cmd_top(args: argparse.Namespace, client: Client) -> int:
    result = client.call("container.top", {"id": args.container})
    print(table(result["titles"], result["processes"]))
    return 0


def _cmd_update(args: argparse.Namespace, client: Client) -> int:
    base: dict[str, Any] = {}
    for key in ("memory", "cpus", "pids_limit"):
        value = getattr(args, key)
        if value is not None:
            base[key] = value
    if not base:
        raise errors.InvalidArgument("give at least one of --memory, --cpus, --pids-limit")
    params = [{"id": c, **base} for c in args.containers]
    return report(args.containers, client.call_many("container.update", params))


# ----------------------------------------------------------------------------------- stats


def binary_size(size: float) -> str:
    """As docker's stats: ``1.5MiB``, ``64MiB``, ``512KiB``, ``0B``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            text = f"{size:.4g}" if unit != "B" else f"{int(size)}"
            return f"{text}{unit}"
        size /= 1024
    return f"{size}TiB"  # not reached


def cpu_percent(before: dict[str, Any] | None, after: dict[str, Any]) -> float | None:
    """CPU use between two samples of one container, in percent of one CPU (100% = one core
    busy, as ``docker stats``); None without two readings."""
    if before is None:
        return None
    c0, c1 = before.get("cpu_seconds"), after.get("cpu_seconds")
    t0, t1 = before.get("read_at"), after.get("read_at")
    if c0 is None or c1 is None or t0 is None or t1 is None or t1 <= t0:
        return None
    return max(float(c1) - float(c0), 0.0) / (float(t1) - float(t0)) * 100.0


def stats_rows(before: dict[str, dict[str, Any]], after: list[dict[str, Any]]) -> list[list[str]]:
    """The rows of ``tug stats`` from the previous samples (by id) and the new ones."""
    rows = []
    for s in after:
        pct = cpu_percent(before.get(s["id"]), s) if s.get("running") else 0.0
        usage = s.get("memory_usage") if s.get("running") else 0
        limit = s.get("memory_limit")
        if limit is None:
            limit = _host_memory()
        mem_pct = (usage or 0) / limit * 100 if limit else 0.0
        rows.append(
            [
                s["id"][:12],
                s.get("name", ""),
                "--" if pct is None else f"{pct:.2f}%",
                f"{binary_size(usage or 0)} / {binary_size(limit or 0)}",
                f"{mem_pct:.2f}%",
                str(s.get("pids") or 0),
            ]
        )
    return rows


def _host_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


STATS_HEADERS = ["CONTAINER ID", "NAME", "CPU %", "MEM USAGE / LIMIT", "MEM %", "PIDS"]


def _sample(client: Client, args: argparse.Namespace) -> list[dict[str, Any]]:
    if not args.containers:
        result: list[dict[str, Any]] = client.call("container.stats", {"all": args.all})
        return result
    out: list[dict[str, Any]] = []
    for c in args.containers:
        out.extend(client.call("container.stats", {"id": c}))
    return out


def _cmd_stats(args: argparse.Namespace, client: Client) -> int:
    first = {s["id"]: s for s in _sample(client, args)}
    time.sleep(STATS_INTERVAL)
    while True:
        samples = _sample(client, args)
        if args.format == "json":
            for s in samples:
                pct = cpu_percent(first.get(s["id"]), s)
                print(json_line({**s, "cpu_percent": pct}), flush=True)
        else:
            text = table(STATS_HEADERS, stats_rows(first, samples))
            if not args.no_stream and sys.stdout.isatty():
                sys.stdout.write("\033[2J\033[H")  # clear the screen, as docker does
            print(text, flush=True)
        if args.no_stream:
            return 0
        first = {s["id"]: s for s in samples}
        time.sleep(STATS_REFRESH)


# -------------------------------------------------------------------------------------- cp


def split_cp_arg(arg: str) -> tuple[str | None, str]:
    """``CONTAINER:PATH`` -> (container, path); a host path -> (None, path). A path with a
    ``/`` before its first ``:`` is a host path (as docker: ``./a:b`` is local)."""
    if arg.startswith(("/", ".")):
        return None, arg
    container, sep, path = arg.partition(":")
    if not sep or not container or "/" in container:
        return None, arg
    return container, path


def _host_abs(path: str) -> str:
    absolute = os.path.abspath(path)
    # keep a trailing '/' or '/.': they mean "into this directory" or "its contents"
    if path.endswith("/.") and not absolute.endswith("/."):
        absolute += "/."
    elif path.endswith("/") and not absolute.endswith("/"):
        absolute += "/"
    return absolute


def _cmd_cp(args: argparse.Namespace, client: Client) -> int:
    src_ctr, src = split_cp_arg(args.src)
    dst_ctr, dst = split_cp_arg(args.dst)
    if (src_ctr is None) == (dst_ctr is None):
        raise errors.InvalidArgument(
            "copying between containers or within the host is not supported; name one side as CONTAINER:PATH"
        )
    from . import cp  # tarfile is not cheap to import: only for cp

    if src_ctr is not None:
        if not src.startswith("/"):
            src = "/" + src
        cp.copy_out(client, src_ctr, src, dst if args.dst == "-" else _host_abs(dst))
    else:
        assert dst_ctr is not None
        if not dst.startswith("/"):
            dst = "/" + dst
        cp.copy_in(client, dst_ctr, src if args.src == "-" else _host_abs(src), dst)
    return 0


# ------------------------------------------------------------------------------------ parser


def add_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Add the commands of this module through ``build_parser``'s ``add``."""
    p = add("pause", "pause every process of containers")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")
    p.set_defaults(func=_cmd_pause)

    p = add("unpause", "unpause containers")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")
    p.set_defaults(func=_cmd_unpause)

    p = add("restart", "stop then start containers")
    p.add_argument("-t", "--time", "--timeout", type=int, metavar="SECONDS", help="seconds before SIGKILL")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")
    p.set_defaults(func=_cmd_restart)

    p = add("rename", "rename a container")
    p.add_argument("container", metavar="CONTAINER")
    p.add_argument("new_name", metavar="NEW_NAME")
    p.set_defaults(func=_cmd_rename)

    p = add("top", "show the processes of a container")
    p.add_argument("container", metavar="CONTAINER")
    p.set_defaults(func=_cmd_top)

    p = add("update", "change the limits of containers (kept for their next start)")
    p.add_argument("-m", "--memory", type=size_arg, help="memory limit (e.g. 64m)")
    p.add_argument("--cpus", type=cpus_arg, help="number of CPUs (e.g. 0.5)")
    p.add_argument("--pids-limit", type=int, help="limit on the number of processes")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")
    p.set_defaults(func=_cmd_update)

    p = add("stats", "show containers' CPU, memory and pids (live; --no-stream: once)")
    p.add_argument("-a", "--all", action="store_true", help="every container, not only running ones")
    p.add_argument("--no-stream", action="store_true", help="print one sample and exit")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("containers", nargs="*", metavar="CONTAINER")
    p.set_defaults(func=_cmd_stats)

    p = add("cp", "copy files between a container and the host")
    p.add_argument("src", metavar="SRC", help="CONTAINER:PATH, a host path, or - (a tar on stdin)")
    p.add_argument("dst", metavar="DEST", help="CONTAINER:PATH, a host path, or - (a tar to stdout)")
    p.set_defaults(func=_cmd_cp)
