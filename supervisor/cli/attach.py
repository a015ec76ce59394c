"""``tug attach``, and the foreground of ``tug run -i``/``-t``: a container's output to ours, our
input to its terminal or stdin, our window size to its terminal.

The output is the container's log, followed from now (``container.logs`` with ``follow`` and
``tail: 0``); the input goes as ``container.stdin`` notifications from a thread of its own (so
that output keeps flowing while stdin blocks), ``container.resize`` at start and on SIGWINCH. The
detach keys (``ctrl-p ctrl-q``) end ``tug`` with 0 and leave the container running. Blocking,
no async imports, like the rest of the CLI.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from tugwire import errors
from tugwire.syncclient import Client, is_response, response_result

from .format import print_error
from .logs import LogDecoder, log_data, write_output
from .tty import DEFAULT_DETACH_KEYS, DetachScanner, parse_detach_keys, raw_mode, window_size

COMMANDS = ("attach",)
STDIN_CHUNK = 48 * 1024


class _Input:
    """Our stdin to the container, in a thread; writes to the connection go through one lock."""

    def __init__(self, client: Client, cid: str, *, tty: bool, detach_keys: bytes | None) -> None:
        self.client = client
        self.cid = cid
        self.tty = tty
        self.scanner = DetachScanner(detach_keys) if detach_keys else None
        self.lock = threading.Lock()
        self.wake_r, self.wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.detached = False

    def close(self) -> None:
        os.close(self.wake_r)
        os.close(self.wake_w)

    def notify(self, method: str, params: dict[str, Any]) -> None:
        with self.lock:
            self.client.notify(method, {"id": self.cid, **params})

    def start(self, fd: int) -> None:
        threading.Thread(target=self._feed, args=(fd,), daemon=True).start()

    def _feed(self, fd: int) -> None:
        try:
            while True:
                data = os.read(fd, STDIN_CHUNK)
                if not data:
                    break
                detach = False
                if self.scanner is not None:
                    data, detach = self.scanner.feed(data)
                if data:
                    self.notify("container.stdin", {"data": base64.b64encode(data).decode()})
                if detach:
                    self.detached = True
                    os.write(self.wake_w, b"d")
                    return
            if not self.tty:
                self.notify("container.close_stdin", {})
        except (OSError, errors.TugError):
            pass  # the container or the connection has ended: the main thread reports it

    def resize(self) -> None:
        rows, cols = window_size(sys.stdout.fileno())
        self.notify("container.resize", {"rows": rows, "cols": cols})


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
    session = _Input(client, cid, tty=tty, detach_keys=detach_keys if stdin and tty else None)
    old_wakeup = signal.set_wakeup_fd(session.wake_w, warn_on_full_buffer=False)
    old_winch = signal.signal(signal.SIGWINCH, lambda signum, frame: None)
    terminal = raw_mode(sys.stdin.fileno()) if tty and stdin else contextlib.nullcontext()
    try:
        with terminal:
            return _loop(client, session, cid, stdin, start, auto_remove, on_start_error)
    finally:
        signal.set_wakeup_fd(old_wakeup)
        signal.signal(signal.SIGWINCH, old_winch)
        session.close()


def _loop(
    client: Client,
    session: _Input,
    cid: str,
    stdin: bool,
    start: bool,
    auto_remove: bool,
    on_start_error: Callable[[errors.TugError], int] | None,
) -> int:
    decoder = LogDecoder()
    # A new container's log from its start (it is empty before); a running one's from now on.
    logs_params: dict[str, Any] = {"id": cid, "follow": True}
    if not start:
        logs_params["tail"] = 0
    logs_id = client.send("container.logs", logs_params)
    condition = ("removed" if auto_remove else "next-exit") if start else "not-running"
    wait_id = client.send("container.wait", {"id": cid, "condition": condition})
    start_id = client.send("container.start", {"id": cid}) if start else None
    running = start_id is None
    if running:
        _begin(session, stdin)
    logs_done = False
    waited: dict[str, Any] | None = None
    while not (logs_done and waited is not None):
        msg = client.next_message(session.wake_r)
        if msg is None:
            try:
                woken = os.read(session.wake_r, 256)
            except BlockingIOError:
                woken = b""
            if session.detached:
                return 0
            if session.tty and running and bytes([signal.SIGWINCH]) in woken:
                with contextlib.suppress(errors.TugError):
                    session.resize()
            continue
        if not is_response(msg):
            data = log_data(msg, logs_id)
            if data:
                write_output(decoder.feed(data))
            continue
        rid = msg.get("id")
        if rid == start_id:
            try:
                response_result(msg)
            except errors.TugError as exc:
                if on_start_error is None:
                    raise
                return on_start_error(exc)
            running = True
            _begin(session, stdin)
        elif rid == logs_id:
            logs_done = True
            try:
                response_result(msg)
            except errors.TugError as exc:
                print_error(f"logs: {exc.message}")
        elif rid == wait_id:
            waited = response_result(msg)
    code = waited.get("exit_code")
    return int(code) if code is not None else 1


def _begin(session: _Input, stdin: bool) -> None:
    """Once the container runs: its terminal gets our size, and our stdin starts to flow."""
    if session.tty:
        with contextlib.suppress(errors.TugError):
            session.resize()
    if stdin:
        session.start(sys.stdin.fileno())


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
