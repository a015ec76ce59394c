"""``tug logs``, and what ``run``, ``attach`` and ``logs`` share to show a followed log: the data of
``container.logs.data`` notifications, decoded by :class:`tugwire.crilog.LogDecoder`, to our
stdout and stderr.
"""

from __future__ import annotations

import argparse
import binascii
import sys

from tugwire import errors
from tugwire.crilog import LogDecoder
from tugwire.syncclient import Client, Disconnected, Stream

from .format import print_error
from .options import parse_since

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

COMMANDS = ("logs",)


def write_output(chunks: list[tuple[int, bytes]]) -> None:
    """Write decoded output, each piece to our stdout (fd 1) or stderr (fd 2), flushed."""
    for fd, data in chunks:
        stream = sys.stdout if fd == 1 else sys.stderr
        stream.flush()
        stream.buffer.write(data)
        stream.buffer.flush()


def log_data(msg: dict[str, Any], req_id: int) -> bytes | None:
    """The decoded data of a ``container.logs.data`` notification for ``req_id``, else None."""
    if msg.get("method") != "container.logs.data":
        return None
    params = msg.get("params")
    if not isinstance(params, dict) or params.get("request") != req_id:
        return None
    try:
        return binascii.a2b_base64(params.get("data") or "")
    except (binascii.Error, TypeError, ValueError) as exc:
        raise errors.Internal(f"malformed log data from tugd: {exc}") from exc


def show_until_exit(
    logs: Stream, wait: Stream, decoder: LogDecoder, woken: Callable[[], int | None]
) -> int | None:
    """What ``run`` and ``attach`` do once a container's log and its wait are open: show the
    log until it ends, then wait for the exit; both streams wake us up for ``woken`` (a signal,
    a detach, a start that failed), whose code, if it gives one, ends the loop at once. A log
    that fails is reported and left (the wait still tells the exit); None once both ended."""
    while True:
        try:
            msg = next(logs)
        except StopIteration:
            break
        except Disconnected:
            raise
        except errors.TugError as exc:
            print_error(f"logs: {exc.message}")
            break
        if msg:
            data = log_data(msg, logs.id)
            if data:
                write_output(decoder.feed(data))
        elif (code := woken()) is not None:
            return code
    for _ in wait:  # a request without notifications: each turn is a wakeup
        if (code := woken()) is not None:
            return code
    return None


def _cmd_logs(args: argparse.Namespace, client: Client) -> int:
    params: dict[str, Any] = {"id": args.container, "follow": args.follow}
    if args.tail is not None:
        params["tail"] = args.tail
    if args.since is not None:
        params["since"] = args.since
    decoder = LogDecoder(timestamps=args.timestamps)
    logs = client.stream("container.logs", params)
    for msg in logs:
        data = log_data(msg, logs.id)
        if data:
            write_output(decoder.feed(data))
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
