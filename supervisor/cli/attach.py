"""``tug attach``, and the foreground of ``tug run -i``/``-t``: a container's output to ours, our
input to its terminal or stdin, our window size to its terminal.

The output is the container's log, followed from now (a raw ``container.logs`` with ``follow``
and ``tail: 0``, docs/api.md "Raw streams"); the input goes as stdin frames on that same stream
through the stdin pump (:mod:`supervisor.cli.stdin`), the terminal's size as control frames at
start and on SIGWINCH. The
detach keys (``ctrl-p ctrl-q``) end ``tug`` with 0 and leave the container running. Blocking,
no async imports, like the rest of the CLI.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from collections.abc import Callable
from typing import Any

from tugwire import errors
from tugwire.syncclient import Client

from .logs import show_until_exit
from .stdin import StdinPump
from .tty import DEFAULT_DETACH_KEYS, parse_detach_keys, raw_mode

COMMANDS = ("attach",)


def attach(
    client: Client,
    cid: str,
    *,
    tty: bool,
    stdin: bool,
    detach_keys: bytes | None,
    start: bool = False,
    auto_remove: bool = False,
    on_start_error: Callable[[errors.TugError], int] | None = None,
) -> int:
    """Attach to container ``cid`` (starting it first with ``start``) until it exits (its exit
    status) or the detach keys are typed (0)."""
    # The detach keys only on a terminal (as docker): a pipe's binary data passes unchanged.
    pump = StdinPump(detach_keys=detach_keys if stdin and tty else None, close_on_eof=not tty)
    old_wakeup = signal.set_wakeup_fd(pump.wake_w, warn_on_full_buffer=False)
    old_winch = signal.signal(signal.SIGWINCH, lambda signum, frame: None)
    terminal = raw_mode(sys.stdin.fileno()) if tty and stdin else contextlib.nullcontext()
    try:
        with terminal:
            return _loop(client, pump, cid, tty, stdin, start, auto_remove, on_start_error)
    finally:
        signal.set_wakeup_fd(old_wakeup)
        signal.signal(signal.SIGWINCH, old_winch)
        pump.close()


def _loop(
    client: Client,
    pump: StdinPump,
    cid: str,
    tty: bool,
    stdin: bool,
    start: bool,
    auto_remove: bool,
    on_start_error: Callable[[errors.TugError], int] | None,
) -> int:
    # A new container's log from its start (it is empty before); a running one's from now on.
    logs_params: dict[str, Any] = {"id": cid, "follow": True}
    if not start:
        logs_params["tail"] = 0
    logs = client.raw_stream("container.logs", logs_params, wakeup_fd=pump.wake_r)
    pump.raw = logs  # our input and resizes go as frames on the same stream
    condition = ("removed" if auto_remove else "next-exit") if start else "not-running"
    wait = client.stream("container.wait", {"id": cid, "condition": condition}, wakeup_fd=pump.wake_r)
    starting = client.stream("container.start", {"id": cid}, wakeup_fd=pump.wake_r) if start else None
    if starting is None:
        _begin(pump, tty, stdin)

    def woken() -> int | None:
        """Handle what woke us (the detach keys, SIGWINCH, start's answer); an exit status
        when the attach ends here."""
        signals = pump.woken()
        if pump.detached:
            return 0
        running = starting is None or starting.done
        if tty and running and bytes([signal.SIGWINCH]) in signals:
            with contextlib.suppress(errors.TugError):
                pump.resize(sys.stdout.fileno())
        if starting is not None and not starting.done and client.answered(starting.id):
            try:
                starting.wait()
            except errors.TugError as exc:
                if on_start_error is None:
                    raise
                return on_start_error(exc)
            _begin(pump, tty, stdin)
        return None

    if (code := show_until_exit(logs, wait, woken)) is not None:
        return code
    code = wait.result.get("exit_code")
    return int(code) if code is not None else 1


def _begin(pump: StdinPump, tty: bool, stdin: bool) -> None:
    """Once the container runs: its terminal gets our size, and our stdin starts to flow."""
    if tty:
        with contextlib.suppress(errors.TugError):
            pump.resize(sys.stdout.fileno())
    pump.start(sys.stdin.fileno() if stdin else None)


def _cmd_attach(args: argparse.Namespace, client: Client) -> int:
    info = client.call("container.inspect", {"id": args.container})
    if info.get("state") != "running":
        raise errors.FailedPrecondition(
            f"cannot attach to container {info.get('name')}: it is {info.get('state')}"
        )
    config = info.get("config") or {}
    stdin = bool(config.get("stdin")) and not args.no_stdin
    return attach(
        client,
        str(info["id"]),
        tty=bool(config.get("tty")),
        stdin=stdin,
        detach_keys=parse_detach_keys(args.detach_keys),
    )


def add_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Add ``attach`` through ``build_parser``'s ``add``."""
    p = add("attach", "attach to a running container's terminal or stdio")
    p.add_argument("--no-stdin", action="store_true", help="do not send our stdin")
    p.add_argument(
        "--detach-keys",
        default=DEFAULT_DETACH_KEYS,
        metavar="KEYS",
        help=f"the keys that detach ({DEFAULT_DETACH_KEYS})",
    )
    p.add_argument("container", metavar="CONTAINER")
    p.set_defaults(func=_cmd_attach)
