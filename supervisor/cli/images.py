"""``tug save``, ``tug load``, ``tug tag`` and ``tug image prune|save|load|tag``.

Archive paths are resolved here to absolute paths: tugd reads and writes them on its own host.
Like the rest of the CLI this module imports nothing asynchronous.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from tugwire import errors
from tugwire.syncclient import Client

from .main import _json_line

COMMANDS = ("save", "load", "tag")


def _cmd_save(args: argparse.Namespace, client: Client) -> int:
    if not args.output:
        raise errors.InvalidArgument("tug save writes to a file: give -o FILE")
    fmt = {"docker": "docker-archive", "oci": "oci-archive"}.get(args.format, args.format)
    client.call("image.save", {"path": os.path.abspath(args.output), "refs": args.images, "format": fmt})
    return 0


def _cmd_load(args: argparse.Namespace, client: Client) -> int:
    if not args.input:
        raise errors.InvalidArgument("tug load reads a file: give -i FILE")
    params: dict[str, Any] = {"path": os.path.abspath(args.input)}
    if args.platform:
        params["platform"] = args.platform
    result = client.call("image.load", params)
    for item in result["images"]:
        if args.quiet:
            continue
        if item["repo_tags"]:
            for tag in item["repo_tags"]:
                print(f"Loaded image: {tag}")
        else:
            print(f"Loaded image ID: {item['id']}")
    return 0


def _cmd_tag(args: argparse.Namespace, client: Client) -> int:
    client.call("image.tag", {"source": args.source, "target": args.target})
    return 0


def _cmd_prune(args: argparse.Namespace, client: Client) -> int:
    result = client.call("image.prune", {"all": args.all})
    if args.format == "json":
        print(_json_line(result))
        return 0
    if result["untagged"] or result["deleted"]:
        print("Deleted Images:")
        for name in result["untagged"]:
            print(f"untagged: {name}")
        for image_id in result["deleted"]:
            print(f"deleted: {image_id}")
        print()
    print(f"Total reclaimed space: {result['space_reclaimed']} B", file=sys.stdout)
    return 0


def _save_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", metavar="FILE", help="the archive to write (on tugd's host)")
    p.add_argument(
        "--format",
        choices=("docker-archive", "oci-archive", "docker", "oci"),
        default="docker-archive",
        help="docker-archive (as docker save, the default) or oci-archive",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.set_defaults(func=_cmd_save)


def _load_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-i", "--input", metavar="FILE", help="the archive to read (on tugd's host)")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing")
    p.add_argument("--platform", help="os/arch[/variant] to load from a multi-platform archive")
    p.set_defaults(func=_cmd_load)


def _tag_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="SOURCE_IMAGE")
    p.add_argument("target", metavar="TARGET_IMAGE[:TAG]")
    p.set_defaults(func=_cmd_tag)


def add_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Add ``save``, ``load`` and ``tag`` through ``build_parser``'s ``add``."""
    _save_args(add("save", "save images to an archive (docker-archive or OCI)"))
    _load_args(add("load", "load images from an archive"))
    _tag_args(add("tag", "give an image another name"))


def add_image_commands(image_sub: Any) -> None:
    """Add ``prune``, ``save``, ``load`` and ``tag`` under ``tug image``."""
    p = image_sub.add_parser("prune", help="remove unused images and free their data")
    p.add_argument("-a", "--all", action="store_true", help="every image no container uses")
    p.add_argument("-f", "--force", action="store_true", help="do not ask for confirmation")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(func=_cmd_prune)
    _save_args(image_sub.add_parser("save", help="save images to an archive"))
    _load_args(image_sub.add_parser("load", help="load images from an archive"))
    _tag_args(image_sub.add_parser("tag", help="give an image another name"))
