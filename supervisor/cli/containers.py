"""``tug start``, ``stop``, ``kill``, ``rm``, ``wait`` and ``ps``."""

from __future__ import annotations

import argparse
import json
import sys
import time

from tugwire import errors
from tugwire.syncclient import Client, Disconnected
from tugwire.timefmt import NS

from .format import (
    ago,
    ellipsis,
    filter_options,
    human_duration,
    human_size,
    json_line,
    print_error,
    report,
    table,
    time_ns_of,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

COMMANDS = ("start", "stop", "kill", "rm", "wait", "ps")


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
        since = ago(summary.get("finished_at"), now_ns)
        return f"{text} {since}" if since else text
    if state == "created":
        return "Created"
    if state == "unknown":
        return "Unknown"
    return str(state or "Unknown").capitalize()


def _cmd_start(args: argparse.Namespace, client: Client) -> int:
    return report(args.containers, client.call_many("container.start", [{"id": c} for c in args.containers]))


def _cmd_stop(args: argparse.Namespace, client: Client) -> int:
    params: list[dict[str, Any]] = []
    for c in args.containers:
        p: dict[str, Any] = {"id": c}
        if args.time is not None:
            p["timeout"] = args.time
        params.append(p)
    return report(args.containers, client.call_many("container.stop", params))


def _cmd_kill(args: argparse.Namespace, client: Client) -> int:
    sig: str | int = int(args.signal) if args.signal.isdigit() else args.signal
    return report(
        args.containers,
        client.call_many("container.kill", [{"id": c, "signal": sig} for c in args.containers]),
    )


def _cmd_rm(args: argparse.Namespace, client: Client) -> int:
    return report(
        args.containers,
        client.call_many("container.delete", [{"id": c, "force": args.force} for c in args.containers]),
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
            print_error(exc.message)
            status = 1
            continue
        code = result.get("exit_code")
        if isinstance(code, int):
            print(code, flush=True)
        else:
            print_error(f"the exit status of {c} is not known (state {result.get('state')})")
            status = 1
    return status


def is_template(fmt: str | None) -> bool:
    """Whether ``--format`` is a Go template (not ``table``, ``json`` or unset)."""
    return fmt not in (None, "", "table", "json")


def _cmd_ps(args: argparse.Namespace, client: Client) -> int:
    last = 1 if args.latest else args.last
    params = {
        "all": args.all or (last is not None and last != -1),
        "filters": filter_options(args.filter),
        "size": args.size,
    }
    items = client.call("container.list", params)  # newest first, filtered by tugd
    if last is not None and last >= 0:
        items = items[:last]
    if is_template(args.format) and not args.quiet:
        from tugwire import dockershapes

        from . import dockerrows

        now = time.time()
        shaped = [
            dockerrows.ps_row(
                dockershapes.container_summary(c), trunc=not args.no_trunc, now=now, size=args.size
            )
            for c in items
        ]
        sys.stdout.write(dockerrows.render(args.format, shaped, dockerrows.PS_HEADER))
        return 0
    if args.format == "json":
        for item in items:
            print(json_line(item))
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
            command = ellipsis(str(command), 20)
        rows.append(
            [
                item["id"] if args.no_trunc else item["id"][:12],
                str(item.get("image", "")),
                json.dumps(command, ensure_ascii=False),
                ago(item.get("created_at"), now),
                container_status(item, now),
                str(item.get("name", "")),
                *([human_size(int(item.get("size_rw") or 0))] if args.size else []),
            ]
        )
    headers = ["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "NAMES"]
    print(table([*headers, *(["SIZE"] if args.size else [])], rows))
    return 0


def add_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Add start, stop, kill, rm, wait and ps through ``build_parser``'s ``add``."""
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
    p.add_argument(
        "--format",
        default="table",
        help="table, json (tugd's records), or a Go template: '{{.Names}}\\t{{.Status}}', 'table {{.ID}}'",
    )
    p.add_argument(
        "-f",
        "--filter",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="id, name, label, status, exited, ancestor, network, health, before, since (repeatable)",
    )
    p.add_argument("-n", "--last", type=int, metavar="N", help="the N last created containers (any state)")
    p.add_argument("-l", "--latest", action="store_true", help="the last created container (any state)")
    p.add_argument("-s", "--size", action="store_true", help="the bytes of each writable layer")
    p.set_defaults(func=_cmd_ps)
