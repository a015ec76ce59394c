"""``tug exec``: run a command in a running container, through tugd's ``container.exec``.

Imported by :func:`supervisor.cli.main.build_parser` only when ``exec`` is named; like the rest
of the CLI it imports nothing asynchronous. ``tug exec`` exits with the exec's exit status (126
when the command cannot be executed, 127 when it is not found, as docker).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from collections.abc import Callable
from typing import Any

from tugwire import errors, frames
from tugwire.syncclient import Client

from .logs import write_output
from .options import env_items
from .stdin import StdinPump
from .tty import DEFAULT_DETACH_KEYS, parse_detach_keys, raw_mode, window_size

COMMANDS = ("exec",)


def run_exec(
    client: Client, params: dict[str, Any], *, stdin_fd: int | None, detach_keys: bytes | None = None
) -> int:
    """Run one exec, copying its output to ours (and ``stdin_fd`` to its stdin); its exit status,
    or 0 once the detach keys are typed (the exec runs on)."""
    pump = StdinPump(detach_keys=detach_keys)
    tty = bool(params.get("tty"))
    old_wakeup = signal.set_wakeup_fd(pump.wake_w) if tty else -1
    old_handler = signal.signal(signal.SIGWINCH, lambda signum, frame: None) if tty else None
    try:
        return _loop(client, pump, params, stdin_fd, tty)
    finally:
        if tty:
            signal.set_wakeup_fd(old_wakeup)
            signal.signal(signal.SIGWINCH, old_handler)
        pump.close()


def _loop(client: Client, pump: StdinPump, params: dict[str, Any], stdin_fd: int | None, tty: bool) -> int:
    run = client.raw_stream("container.exec", params, wakeup_fd=pump.wake_r)
    pump.raw = run  # our input and resizes go as frames on the same stream
    with contextlib.closing(run):
        for item in run:
            if not item:  # a signal (SIGWINCH) or the detach keys
                woken = pump.woken()
                if pump.detached:
                    return 0
                if tty and bytes([signal.SIGWINCH]) in woken:
                    pump.resize(sys.stdout.fileno())
                continue
            kind, data = item
            if kind in (frames.STDOUT, frames.STDERR):
                write_output(kind, data)
            elif kind == frames.CONTROL and frames.started_of(data) is not None:
                pump.start(stdin_fd)
                if tty:
                    pump.resize(sys.stdout.fileno())  # a resize between the request and the start
    result = run.result or {}
    if result.get("error"):
        sys.stderr.write(f"tug: {result['error']}\n")
    return int(result.get("exit_code") or 0)


def _cmd_exec(args: argparse.Namespace, client: Client) -> int:
    if not args.cmd:
        raise errors.InvalidArgument("exec needs a command: tug exec CONTAINER COMMAND [ARG...]")
    params: dict[str, Any] = {
        "id": args.container,
        "cmd": args.cmd,
        "env": env_items(args.env),
        "stdin": bool(args.interactive and not args.detach),
        "detach": args.detach,
    }
    if args.user:
        params["user"] = args.user
    if args.workdir:
        params["workdir"] = args.workdir
    if args.detach:
        client.call("container.exec", params)
        return 0
    stdin_fd = sys.stdin.fileno() if args.interactive else None
    if not args.tty:
        return run_exec(client, params, stdin_fd=stdin_fd)
    keys = parse_detach_keys(args.detach_keys)
    rows, cols = window_size(sys.stdout.fileno())
    params.update(tty=True, rows=rows, cols=cols)
    with raw_mode(sys.stdin.fileno()) if args.interactive else contextlib.nullcontext():
        return run_exec(client, params, stdin_fd=stdin_fd, detach_keys=keys)


def add_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Add ``exec`` through ``build_parser``'s ``add``."""
    p = add("exec", "run a command in a running container")
    p.add_argument("-d", "--detach", action="store_true", help="run it in the background")
    p.add_argument("-i", "--interactive", action="store_true", help="send our stdin to it")
    p.add_argument("-t", "--tty", action="store_true", help="give it a terminal")
    p.add_argument(
        "--detach-keys",
        default=DEFAULT_DETACH_KEYS,
        metavar="KEYS",
        help=f"the keys that detach from a terminal ({DEFAULT_DETACH_KEYS})",
    )
    p.add_argument("-u", "--user", metavar="USER", help="uid[:gid] or name[:group]")
    p.add_argument("-w", "--workdir", metavar="DIR", help="working directory (absolute)")
    p.add_argument(
        "-e", "--env", action="append", default=[], metavar="KEY=VALUE", help="set an environment variable"
    )
    p.add_argument("container", metavar="CONTAINER")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="COMMAND")
    p.set_defaults(func=_cmd_exec)
