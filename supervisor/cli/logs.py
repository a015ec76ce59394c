"""``tug logs``, and what ``run``, ``attach`` and ``logs`` share to show a followed log: a raw
stream of ``container.logs`` (docs/api.md, "Raw streams"), its stdout and stderr frames written
to our stdout and stderr as they come.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from tugwire import errors
from tugwire.syncclient import Client, Disconnected, RawStream, Stream

from .format import print_error
from .options import parse_since

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

COMMANDS = ("logs",)


def write_output(fd: int, data: bytes) -> None:
    """Write a frame's bytes to our stdout (fd 1) or stderr (fd 2), whole, unbuffered."""
    (sys.stdout if fd == 1 else sys.stderr).flush()
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def show_until_exit(logs: RawStream, wait: Stream, woken: Callable[[], int | None]) -> int | None:
    """What ``run`` and ``attach`` do once a container's log and its wait are open: show the
    log until it ends, then wait for the exit; both streams wake us up for ``woken`` (a signal,
    a detach, a start that failed), whose code, if it gives one, ends the loop at once. A log
    that fails is reported and left (the wait still tells the exit); None once both ended."""
    try:
        while True:
            try:
                item = next(logs)
            except StopIteration:
                break
            except Disconnected:
                raise
            except errors.TugError as exc:
                print_error(f"logs: {exc.message}")
                break
            if item:
                write_output(*item)
            elif (code := woken()) is not None:
                return code
    finally:
        logs.close()
    for _ in wait:  # a request without notifications: each turn is a wakeup
        if (code := woken()) is not None:
            return code
    return None


def _cmd_logs(args: argparse.Namespace, client: Client) -> int:
    params: dict[str, Any] = {"id": args.container, "follow": args.follow, "timestamps": args.timestamps}
    if args.tail is not None:
        params["tail"] = args.tail
    if args.since is not None:
        params["since"] = args.since
    with contextlib.closing(client.raw_stream("container.logs", params)) as logs:
        for fd, data in logs:  # type: ignore[misc]  # no wakeup fd: never ()
            write_output(fd, data)
    return 0


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


def add_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Add ``logs`` through ``build_parser``'s ``add``."""
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
