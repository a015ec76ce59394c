"""``tug inspect``: a container or an image as JSON, or through a ``--format`` template."""

from __future__ import annotations

import argparse
import json
import re

from tugwire import errors
from tugwire.syncclient import Client, Disconnected

from .format import print_error

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

COMMANDS = ("inspect",)


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
            print_error(exc.message)
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


def add_inspect_args(p: argparse.ArgumentParser, kind: str | None) -> None:
    """The arguments of ``inspect`` (``kind`` None: containers and images) and ``image inspect``."""
    p.add_argument("-f", "--format", help="a template such as '{{.state}}' or '{{json .config}}'")
    if kind is None:
        p.add_argument("--type", choices=("container", "image"), help="only this kind of object")
    p.add_argument("objects", nargs="+", metavar="NAME|ID")
    p.set_defaults(func=_cmd_inspect, type=kind)


def add_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Add ``inspect`` through ``build_parser``'s ``add``."""
    add_inspect_args(add("inspect", "show a container or an image as JSON"), None)
