"""``tug pod ls|inspect|stop|rm``: the pods of tugd (made by the CRI's RunPodSandbox, through
tug-cri; docs/api.md, "Pods"). Imported by :func:`supervisor.cli.main.build_parser` only when
``pod`` is named."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from tugwire.syncclient import Client

from .format import ago, json_line, report, table
from .options import Parser

COMMANDS = ("pod",)


def _cmd_ls(args: argparse.Namespace, client: Client) -> int:
    filters: dict[str, Any] = {}
    labels = {}
    for item in args.label:
        key, _, value = item.partition("=")
        labels[key] = value
    if labels:
        filters["labels"] = labels
    if args.state:
        filters["state"] = args.state
    pods = client.call("pod.list", {"filters": filters})
    if args.quiet:
        for p in pods:
            print(p["id"] if args.no_trunc else p["id"][:12])
        return 0
    if args.format == "json":
        for p in pods:
            print(json_line(p))
        return 0
    now = time.time_ns()
    rows = [
        [
            p["id"] if args.no_trunc else p["id"][:12],
            p["name"],
            p["namespace"],
            p["state"].upper(),
            p["network"]["ip"] or ("host" if p["network"]["host"] else ""),
            str(len(p["containers"])),
            ago(p["created_ns"], now),
        ]
        for p in pods
    ]
    print(table(["POD ID", "NAME", "NAMESPACE", "STATE", "IP", "CONTAINERS", "CREATED"], rows))
    return 0


def _cmd_inspect(args: argparse.Namespace, client: Client) -> int:
    results = client.call_many("pod.inspect", [{"id": p} for p in args.pods])
    print(json.dumps([r for r in results if not isinstance(r, Exception)], indent=4))
    status = 0
    for r in results:
        if isinstance(r, Exception):
            print(f"tug: Error: {r}", file=sys.stderr)
            status = 1
    return status


def _cmd_stop(args: argparse.Namespace, client: Client) -> int:
    params = [{"id": p, **({"timeout": args.time} if args.time is not None else {})} for p in args.pods]
    return report(args.pods, client.call_many("pod.stop", params))


def _cmd_rm(args: argparse.Namespace, client: Client) -> int:
    return report(args.pods, client.call_many("pod.remove", [{"id": p} for p in args.pods]))


def add_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    p = add("pod", "manage pods (the CRI's sandboxes)")
    sub = p.add_subparsers(dest="pod_command", metavar="COMMAND", required=True, parser_class=Parser)

    c = sub.add_parser("ls", aliases=["list"], help="list pods")
    c.add_argument("-q", "--quiet", action="store_true", help="only ids")
    c.add_argument("--no-trunc", action="store_true", help="full ids")
    c.add_argument(
        "--format", default="table", choices=("table", "json"), help="table or json (tugd's records)"
    )
    c.add_argument("--label", action="append", default=[], metavar="K=V", help="pods with this label")
    c.add_argument("--state", choices=("ready", "notready"), help="pods in this state")
    c.set_defaults(func=_cmd_ls)

    c = sub.add_parser("inspect", help="show pods as JSON")
    c.add_argument("pods", nargs="+", metavar="POD")
    c.set_defaults(func=_cmd_inspect)

    c = sub.add_parser("stop", help="stop pods: their containers, their network")
    c.add_argument("-t", "--time", type=int, help="seconds each container gets to stop")
    c.add_argument("pods", nargs="+", metavar="POD")
    c.set_defaults(func=_cmd_stop)

    c = sub.add_parser("rm", aliases=["remove"], help="remove pods and their containers")
    c.add_argument("pods", nargs="+", metavar="POD")
    c.set_defaults(func=_cmd_rm)
