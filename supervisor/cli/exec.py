"""``tug exec``: run a command in a running container, through tugd's ``container.exec``.

Imported by :func:`supervisor.cli.main.build_parser` only when ``exec`` is named; like the rest
of the CLI it imports nothing asynchronous. ``tug exec`` exits with the exec's exit status (126
when the command cannot be executed, 127 when it is not found, as docker).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from tugwire import errors
from tugwire.syncclient import Client, is_response, response_result

from .options import env_items
from .tty import DEFAULT_DETACH_KEYS, DetachScanner, parse_detach_keys, raw_mode, window_size

COMMANDS = ("exec",)
STDIN_CHUNK = 48 * 1024  # bytes of stdin per notification (64 KiB once in base64)


class _Session:
    """One exec with our stdin: the feeder thread writes stdin to it (and finds the detach keys),
    the main thread reads its output and forwards window sizes. Writes to the connection from the
    two threads go through one lock; a detach wakes the main thread through a pipe."""

    def __init__(self, client: Client, stdin_fd: int | None, detach_keys: bytes | None) -> None:
        self.client = client
        self.stdin_fd = stdin_fd
        self.scanner = DetachScanner(detach_keys) if detach_keys else None
        self.lock = threading.Lock()
        self.wake_r, self.wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.exec_id = ""
        self.detached = False

    def close(self) -> None:
        os.close(self.wake_r)
        os.close(self.wake_w)

    def notify(self, method: str, params: dict[str, Any]) -> None:
        with self.lock:
            self.client.notify(method, params)

    def start_feeding(self, exec_id: str) -> None:
        self.exec_id = exec_id
        if self.stdin_fd is not None:
            threading.Thread(target=self._feed, args=(self.stdin_fd,), daemon=True).start()

    def _feed(self, fd: int) -> None:
        """Send ``fd`` to the exec's stdin until EOF, then close it (its own thread, so that
        output keeps being read while stdin is written: a full pipe both ways would deadlock)."""
        try:
            while True:
                data = os.read(fd, STDIN_CHUNK)
                if not data:
                    break
                detach = False
                if self.scanner is not None:
                    data, detach = self.scanner.feed(data)
                if data:
                    text = base64.b64encode(data).decode()
                    self.notify("container.exec.stdin", {"exec_id": self.exec_id, "data": text})
                if detach:
                    self.detached = True
                    os.write(self.wake_w, b"d")
                    return
            self.notify("container.exec.close_stdin", {"exec_id": self.exec_id})
        except (OSError, errors.TugError):
            pass  # the exec or the connection has ended: the main thread reports it

    def resize(self, fd: int) -> None:
        if self.exec_id:
            rows, cols = window_size(fd)
            self.notify("container.exec.resize", {"exec_id": self.exec_id, "rows": rows, "cols": cols})


def run_exec(
    client: Client, params: dict[str, Any], *, stdin_fd: int | None, detach_keys: bytes | None = None
) -> int:
    """Run one exec, copying its output to ours (and ``stdin_fd`` to its stdin); its exit status,
    or 0 once the detach keys are typed (the exec runs on)."""
    session = _Session(client, stdin_fd, detach_keys)
    tty = bool(params.get("tty"))
    old_wakeup = signal.set_wakeup_fd(session.wake_w) if tty else -1
    old_handler = signal.signal(signal.SIGWINCH, lambda signum, frame: None) if tty else None
    try:
        return _loop(client, session, params, tty)
    finally:
        if tty:
            signal.set_wakeup_fd(old_wakeup)
            signal.signal(signal.SIGWINCH, old_handler)
        session.close()


def _loop(client: Client, session: _Session, params: dict[str, Any], tty: bool) -> int:
    req_id = client.send("container.exec", params)
    outs = {"stdout": sys.stdout.buffer, "stderr": sys.stderr.buffer}
    while True:
        msg = client.next_message(session.wake_r)
        if msg is None:  # a signal (SIGWINCH) or the detach keys
            try:
                woken = os.read(session.wake_r, 256)
            except BlockingIOError:
                woken = b""
            if session.detached:
                return 0
            if tty and bytes([signal.SIGWINCH]) in woken:
                session.resize(sys.stdout.fileno())
            continue
        if is_response(msg):
            if msg.get("id") != req_id:
                continue
            result = response_result(msg)
            if result.get("error"):
                sys.stderr.write(f"tug: {result['error']}\n")
            return int(result.get("exit_code") or 0)
        p = msg.get("params")
        if not isinstance(p, dict) or p.get("request") != req_id:
            continue
        if msg.get("method") == "container.exec.started":
            session.start_feeding(str(p["exec_id"]))
            if tty:
                session.resize(sys.stdout.fileno())  # a resize between the request and the start
        elif msg.get("method") == "container.exec.output":
            out = outs.get(str(p.get("stream")))
            if out is None:
                continue
            try:
                data = binascii.a2b_base64(p.get("data") or "")
            except (binascii.Error, TypeError, ValueError) as exc:
                raise errors.Internal(f"malformed exec output from tugd: {exc}") from exc
            out.write(data)
            out.flush()


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
