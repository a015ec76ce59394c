"""``tug network create|ls|rm|inspect|connect|disconnect|prune``.

Imported by :func:`supervisor.cli.main.build_parser` only when ``network`` is named; it talks
JSON-RPC like the rest of the CLI and never imports pyroute2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from tugwire import dockerfilters
from tugwire.syncclient import Client

from .format import json_line, report, table
from .options import Parser

COMMANDS = ("network",)


def _cmd_create(args: argparse.Namespace, client: Client) -> int:
    params: dict[str, Any] = {"name": args.name, "driver": args.driver}
    for key in ("subnet", "gateway"):  # repeatable: an IPv6 value is the dual stack's (subnet6)
        for value in getattr(args, key):
            params[key + "6" if ":" in value else key] = value
    for key in ("ip_range", "mtu"):
        if getattr(args, key) is not None:
            params[key] = getattr(args, key)
    for key in ("internal", "ipv6"):
        if getattr(args, key):
            params[key] = True
    labels = {}
    for item in args.label:
        key, _, value = item.partition("=")
        labels[key] = value
    if labels:
        params["labels"] = labels
    print(client.call("network.create", params)["id"])
    return 0


def _cmd_ls(args: argparse.Namespace, client: Client) -> int:
    nets = client.call("network.list", {})
    filters = dockerfilters.check(dockerfilters.parse_cli(args.filter), dockerfilters.NETWORK_KEYS)
    template = args.format not in ("table", "json")
    if filters or template:
        from tugwire import dockershapes

        shaped = [(n, dockershapes.network(n)) for n in nets]
        shaped = [(n, s) for n, s in shaped if dockerfilters.match_network(s, filters)]
        nets = [n for n, _ in shaped]
        if template and not args.quiet:
            from . import dockerrows

            shaped.sort(key=lambda pair: str(pair[1]["Name"]))  # docker's network ls: by name
            docker_rows = [dockerrows.network_row(s, trunc=not args.no_trunc) for _, s in shaped]
            sys.stdout.write(dockerrows.render(args.format, docker_rows, dockerrows.NETWORK_HEADER))
            return 0
    if args.quiet:
        for n in nets:
            print(n["id"] if args.no_trunc else n["id"][:12])
        return 0
    if args.format == "json":
        for n in nets:
            print(json_line(n))
        return 0
    rows = [
        [
            n["id"] if args.no_trunc else n["id"][:12],
            n["name"],
            n["driver"],
            n["subnet"],
            str(len(n["containers"])),
        ]
        for n in nets
    ]
    print(table(["NETWORK ID", "NAME", "DRIVER", "SUBNET", "CONTAINERS"], rows))
    return 0


def _cmd_inspect(args: argparse.Namespace, client: Client) -> int:
    results = client.call_many("network.inspect", [{"id": n} for n in args.networks])
    found = [r for r in results if not isinstance(r, Exception)]
    print(json.dumps(found, indent=4))
    status = 0
    for r in results:
        if isinstance(r, Exception):
            print(f"tug: Error: {r}", file=sys.stderr)
            status = 1
    return status


def _cmd_rm(args: argparse.Namespace, client: Client) -> int:
    return report(args.networks, client.call_many("network.delete", [{"id": n} for n in args.networks]))


def _cmd_connect(args: argparse.Namespace, client: Client) -> int:
    params: dict[str, Any] = {"network": args.network, "container": args.container}
    if args.ip is not None:
        params["ip"] = args.ip
    if args.alias:
        params["aliases"] = list(args.alias)
    client.call("network.connect", params)
    return 0


def _cmd_disconnect(args: argparse.Namespace, client: Client) -> int:
    client.call("network.disconnect", {"network": args.network, "container": args.container})
    return 0


def _cmd_prune(args: argparse.Namespace, client: Client) -> int:
    removed = client.call("network.prune", {})["removed"]
    if removed:
        print("Deleted Networks:")
        for name in removed:
            print(name)
    return 0


def add_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    p = add("network", "manage networks")
    sub = p.add_subparsers(dest="network_command", metavar="COMMAND", required=True, parser_class=Parser)

    c = sub.add_parser("create", help="create a bridge network")
    c.add_argument("-d", "--driver", default="bridge", help="bridge (the only driver)")
    c.add_argument(
        "--subnet",
        action="append",
        default=[],
        metavar="CIDR",
        help="e.g. 10.10.0.0/24 (default: a free /16 of 172.18-31); again with an IPv6 one: dual stack",
    )
    c.add_argument(
        "--gateway",
        action="append",
        default=[],
        metavar="IP",
        help="the bridge's address (default: the first)",
    )
    c.add_argument("--ipv6", action="store_true", help="dual stack (needs an IPv6 --subnet)")
    c.add_argument("--ip-range", metavar="CIDR", help="allocate container addresses from this part only")
    c.add_argument("--mtu", type=int, help="the MTU of the bridge and veths (default 1500)")
    c.add_argument("--internal", action="store_true", help="no traffic in or out of the network")
    c.add_argument("--label", action="append", default=[], metavar="K=V")
    c.add_argument("name", metavar="NAME")
    c.set_defaults(func=_cmd_create)

    c = sub.add_parser("ls", aliases=["list"], help="list networks")
    c.add_argument("-q", "--quiet", action="store_true", help="only ids")
    c.add_argument("--no-trunc", action="store_true", help="full ids")
    c.add_argument("--format", default="table", help="table, json (tugd's records), or a Go template")
    c.add_argument(
        "-f",
        "--filter",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="name, id, label, driver, dangling, type, scope (repeatable)",
    )
    c.set_defaults(func=_cmd_ls)

    c = sub.add_parser("inspect", help="show networks as JSON")
    c.add_argument("networks", nargs="+", metavar="NETWORK")
    c.set_defaults(func=_cmd_inspect)

    c = sub.add_parser("rm", aliases=["remove"], help="remove networks no container uses")
    c.add_argument("networks", nargs="+", metavar="NETWORK")
    c.set_defaults(func=_cmd_rm)

    c = sub.add_parser("connect", help="connect a container to a network")
    c.add_argument("--ip", metavar="ADDRESS", help="a fixed address")
    c.add_argument("--alias", action="append", default=[], metavar="NAME", help="another name on the network")
    c.add_argument("network", metavar="NETWORK")
    c.add_argument("container", metavar="CONTAINER")
    c.set_defaults(func=_cmd_connect)

    c = sub.add_parser("disconnect", help="disconnect a container from a network")
    c.add_argument("-f", "--force", action="store_true", help="accepted for docker compatibility")
    c.add_argument("network", metavar="NETWORK")
    c.add_argument("container", metavar="CONTAINER")
    c.set_defaults(func=_cmd_disconnect)

    c = sub.add_parser("prune", help="remove every network no container uses")
    c.add_argument("-f", "--force", action="store_true", help="do not ask for confirmation")
    c.set_defaults(func=_cmd_prune)
