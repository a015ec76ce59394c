"""``tug inspect``: a container or an image as JSON, or through a ``--format`` template."""

from __future__ import annotations

import argparse
import json

from tugwire import errors
from tugwire.syncclient import Client, Disconnected

from .format import print_error

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

COMMANDS = ("inspect",)


def render_template(template: str, kind: str, obj: Any) -> str:
    """``obj`` (tugd's record of a ``kind``: container or image) in docker's inspect shape,
    through docker's Go template ``template`` (as ``docker inspect -f``)."""
    from tugwire import dockershapes

    from .gotemplate import Template

    shaped = dockershapes.container_inspect(obj) if kind == "container" else dockershapes.image_inspect(obj)
    return Template(template).render(shaped)  # as docker's inspect: no \\t replacing


def _cmd_inspect(args: argparse.Namespace, client: Client) -> int:
    status = 0
    for ref in args.objects:
        try:
            obj = _inspect_one(client, ref, args.type)
        except Disconnected:
            raise
        except errors.TugError as exc:
            print_error(exc.message)
            status = 1
            continue
        if args.format and args.format != "json":
            print(render_template(args.format, *obj))
        elif args.format == "json":
            print(json.dumps(obj[1], ensure_ascii=False))
        else:
            print(json.dumps(obj[1], indent=2, ensure_ascii=False))
    return status


def _inspect_one(client: Client, ref: str, kind: str | None) -> tuple[str, Any]:
    """``(kind, tugd's record)`` of the container or image ``ref`` names."""
    if kind == "image":
        return "image", client.call("image.inspect", {"ref": ref})
    try:
        return "container", client.call("container.inspect", {"id": ref})
    except errors.NotFound:
        if kind == "container":
            raise
    try:
        return "image", client.call("image.inspect", {"ref": ref})
    except errors.NotFound:
        raise errors.NotFound(f"no such container or image: {ref}") from None


def add_inspect_args(p: argparse.ArgumentParser, kind: str | None) -> None:
    """The arguments of ``inspect`` (``kind`` None: containers and images) and ``image inspect``."""
    p.add_argument(
        "-f",
        "--format",
        help="json (tugd's record), or a Go template on docker's shape: '{{.State.ExitCode}}'",
    )
    if kind is None:
        p.add_argument("--type", choices=("container", "image"), help="only this kind of object")
    p.add_argument("objects", nargs="+", metavar="NAME|ID")
    p.set_defaults(func=_cmd_inspect, type=kind)


def add_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Add ``inspect`` through ``build_parser``'s ``add``."""
    add_inspect_args(add("inspect", "show a container or an image as JSON"), None)
