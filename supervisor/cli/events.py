"""``tug events``: tugd's events, past ones (``--since``/``--until``) then live ones."""

from __future__ import annotations

import argparse

from tugwire import errors
from tugwire.syncclient import Client

from .format import json_line
from .options import time_arg

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

COMMANDS = ("events",)


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
    show: Callable[[dict[str, Any]], str] = format_event
    if args.format == "json":
        show = json_line
    elif args.format != "text":  # a Go template on docker's event shape (docker events --format)
        from tugwire.dockershapes import docker_event

        from .gotemplate import Template

        template = Template(args.format)

        def show(event: dict[str, Any]) -> str:
            return template.render(docker_event(event))

    try:
        for msg in client.stream("events.subscribe", subscribe):
            if msg.get("method") != "event":
                continue
            event = {k: v for k, v in msg["params"].items() if k != "request"}
            print(show(event), flush=True)
    except KeyboardInterrupt:
        return 0
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


def add_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Add ``events`` through ``build_parser``'s ``add``."""
    p = add("events", "stream events (past ones with --since/--until, then live ones)")
    p.add_argument(
        "-f",
        "--filter",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="type, container, image, event, network, label (repeatable)",
    )
    time_help = "RFC 3339 time, duration before now (10m) or unix timestamp"
    p.add_argument("--since", type=time_arg("--since"), metavar="TIME", help=f"from this time: {time_help}")
    p.add_argument(
        "--until", type=time_arg("--until"), metavar="TIME", help=f"stop at this time: {time_help}"
    )
    p.add_argument(
        "--format",
        default="text",
        help="text, json (tugd's events), or a Go template: '{{.Type}} {{.Action}} {{.Actor.ID}}'",
    )
    p.set_defaults(func=_cmd_events)
