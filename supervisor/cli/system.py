"""``tug info`` and ``tug system info|df|prune``."""

from __future__ import annotations

import argparse
import json
import sys

from tugwire.syncclient import Client

from .format import human_size, print_error, short_id, table
from .options import Parser

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

COMMANDS = ("info", "system")


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
    print(table(["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"], rows))
    if args.verbose:
        print("\nImages space usage:\n")
        print(
            table(
                ["REPOSITORY:TAG", "IMAGE ID", "SIZE", "SHARED SIZE", "CONTAINERS"],
                [
                    [
                        ", ".join(img.get("repo_tags") or []) or "<none>",
                        short_id(img.get("id")),
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
            table(
                ["CONTAINER ID", "IMAGE", "STATE", "SIZE", "LOGS", "NAMES"],
                [
                    [
                        short_id(c.get("id")),
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


def _cmd_reset(args: argparse.Namespace, client: Client) -> int:
    removed = client.call("system.reset")["removed"]
    print("\n".join(removed) if removed else "nothing to remove")
    return 0


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
            print_error("refusing to prune without confirmation: stdin is not a terminal (use -f)")
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


def _add_info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(func=_cmd_info)


def add_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Add ``info`` and ``system`` through ``build_parser``'s ``add``."""
    _add_info_args(add("info", "show system information"))
    p = add("system", "manage tugd")
    system_sub = p.add_subparsers(
        dest="system_command", metavar="COMMAND", required=True, parser_class=Parser
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
    p.set_defaults(func=_cmd_reset)
