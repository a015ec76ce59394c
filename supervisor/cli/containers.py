"""``tug run``, ``create``, ``start``, ``stop``, ``kill``, ``rm``, ``wait`` and ``ps``.

Exit statuses follow docker: 125 when ``run``/``create`` fail before the container runs (126
when its command cannot be executed, 127 when it is not found), the container's own exit status
for a foreground ``run``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time

from tugwire import errors
from tugwire.syncclient import Client, Disconnected, is_response, response_result
from tugwire.timefmt import NS

from .create import add_create_options, create_params
from .format import ago, ellipsis, human_duration, json_line, print_error, report, table, time_ns_of
from .logs import LogDecoder, log_data, write_output

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

COMMANDS = ("run", "create", "start", "stop", "kill", "rm", "wait", "ps")

# Signals a foreground ``run`` forwards to its container (docker's sig-proxy does the same).
FORWARDED_SIGNALS = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)
FORCE_DETACH_INTERRUPTS = 3  # the third Ctrl-C leaves a container that ignores SIGINT running


def container_status(summary: dict[str, Any], now_ns: int | None = None) -> str:
    """The STATUS column of ``ps``: ``Up 3 seconds``, ``Exited (3) 2 seconds ago``, ``Created``."""
    if now_ns is None:
        now_ns = time.time_ns()
    state = summary.get("state")
    if state in ("running", "paused"):
        started = time_ns_of(summary.get("started_at"))
        up = "Up" if started is None else "Up " + human_duration(max(now_ns - started, 0) / NS)
        if state == "paused":
            return up + " (Paused)"
        health = summary.get("health")
        if health == "starting":
            return up + " (health: starting)"
        return f"{up} ({health})" if health else up
    if state == "exited":
        code = summary.get("exit_code")
        word = "Restarting" if summary.get("restarting") else "Exited"
        text = f"{word} ({code if code is not None else '?'})"
        since = ago(summary.get("finished_at"), now_ns)
        return f"{text} {since}" if since else text
    if state == "created":
        return "Created"
    if state == "unknown":
        return "Unknown"
    return str(state or "Unknown").capitalize()


# ========================================================================== run and create


def _start_failure_status(exc: errors.TugError) -> int:
    """docker's statuses for a failed start: 127 not found, 126 not executable, 125 otherwise."""
    text = exc.message.lower()
    if "executable file not found" in text or "no such file or directory" in text:
        return 127
    if "permission denied" in text or "is a directory" in text:
        return 126
    return 125


def _start_failed(client: Client, cid: str, exc: errors.TugError, auto_remove: bool) -> int:
    print_error(exc.message)
    if auto_remove:
        try:
            client.call("container.delete", {"id": cid, "force": True})
        except errors.TugError:
            pass  # best effort: tugd may have removed it already
    return _start_failure_status(exc)


def _cmd_create(args: argparse.Namespace, client: Client) -> int:
    created = client.call("container.create", create_params(args))
    print(created["id"])
    return 0


def _cmd_run(args: argparse.Namespace, client: Client) -> int:
    created = client.call("container.create", create_params(args))
    cid = str(created["id"])
    if args.detach:
        try:
            client.call("container.start", {"id": cid})
        except Disconnected:
            raise
        except errors.TugError as exc:
            return _start_failed(client, cid, exc, args.rm)
        print(cid)
        return 0
    if args.tty or args.interactive:
        from . import attach, tty  # run -i / -t: the container's terminal or stdin is ours

        return attach.attach(
            client,
            cid,
            tty=args.tty,
            stdin=args.interactive,
            detach_keys=tty.parse_detach_keys(args.detach_keys),
            start=True,
            auto_remove=args.rm,
            on_start_error=lambda exc: _start_failed(client, cid, exc, args.rm),
        )
    return _run_foreground(client, cid, auto_remove=args.rm)


def _drain(fd: int) -> bytes:
    out = b""
    while True:
        try:
            data = os.read(fd, 512)
        except BlockingIOError:
            return out
        if not data:
            return out
        out += data


def _ignore_signal(signum: int, frame: object) -> None:
    """Only there so that the signal reaches the wakeup fd instead of killing us."""


def _run_foreground(client: Client, cid: str, *, auto_remove: bool) -> int:
    """Stream the container's output, forward signals to it, and return its exit status.

    ``logs {follow}`` and ``wait`` are sent before ``start`` on the same connection: tugd accepts
    them in order once registered, so nothing that ``start`` causes can be missed. Signals reach
    the loop through a ``set_wakeup_fd`` pipe; the handler itself writes nothing to the socket.
    """
    decoder = LogDecoder()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    old_wakeup = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    old_handlers = {s: signal.signal(s, _ignore_signal) for s in FORWARDED_SIGNALS}
    try:
        logs_id = client.send("container.logs", {"id": cid, "follow": True})
        condition = "removed" if auto_remove else "next-exit"
        wait_id = client.send("container.wait", {"id": cid, "condition": condition})
        start_id = client.send("container.start", {"id": cid})
        started = False
        held_signals: list[int] = []  # signals that came before start had answered
        interrupts = 0
        logs_done = False
        waited: dict[str, Any] | None = None
        while not (logs_done and waited is not None):
            msg = client.next_message(wake_r)
            if msg is None:
                for signum in _drain(wake_r):
                    if signum == signal.SIGINT:
                        interrupts += 1
                        if interrupts >= FORCE_DETACH_INTERRUPTS:
                            print_error(f"detached from container {cid[:12]}; it keeps running")
                            return 130
                    if started:
                        _forward(client, cid, signum)
                    else:
                        held_signals.append(signum)
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
                    return _start_failed(client, cid, exc, auto_remove)
                started = True
                for signum in held_signals:
                    _forward(client, cid, signum)
                held_signals.clear()
            elif rid == logs_id:
                logs_done = True
                try:
                    response_result(msg)
                except errors.TugError as exc:
                    print_error(f"logs: {exc.message}")
            elif rid == wait_id:
                result = response_result(msg)  # an error here is the run's error (125)
                waited = result if isinstance(result, dict) else {}
            # else: the answer to a forwarded kill; a container that has exited meanwhile is fine
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)
        signal.set_wakeup_fd(old_wakeup)
        os.close(wake_r)
        os.close(wake_w)
    code = waited.get("exit_code")
    if not isinstance(code, int):
        print_error(
            f"the exit status of container {cid[:12]} is not known (state {waited.get('state', 'unknown')})"
        )
        return 125
    return code


def _forward(client: Client, cid: str, signum: int) -> None:
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = str(signum)
    client.send("container.kill", {"id": cid, "signal": name})


# ============================================================================ other commands


def _cmd_start(args: argparse.Namespace, client: Client) -> int:
    return report(args.containers, client.call_many("container.start", [{"id": c} for c in args.containers]))


def _cmd_stop(args: argparse.Namespace, client: Client) -> int:
    params: list[dict[str, Any]] = []
    for c in args.containers:
        p: dict[str, Any] = {"id": c}
        if args.time is not None:
            p["timeout"] = args.time
        params.append(p)
    return report(args.containers, client.call_many("container.stop", params))


def _cmd_kill(args: argparse.Namespace, client: Client) -> int:
    sig: str | int = int(args.signal) if args.signal.isdigit() else args.signal
    return report(
        args.containers,
        client.call_many("container.kill", [{"id": c, "signal": sig} for c in args.containers]),
    )


def _cmd_rm(args: argparse.Namespace, client: Client) -> int:
    return report(
        args.containers,
        client.call_many("container.delete", [{"id": c, "force": args.force} for c in args.containers]),
    )


def _cmd_wait(args: argparse.Namespace, client: Client) -> int:
    status = 0
    for c in args.containers:
        try:
            result = client.call("container.wait", {"id": c, "condition": "not-running"})
            if result.get("state") == "created":  # docker waits for a created container to run
                result = client.call("container.wait", {"id": c, "condition": "next-exit"})
        except Disconnected:
            raise
        except errors.TugError as exc:
            print_error(exc.message)
            status = 1
            continue
        code = result.get("exit_code")
        if isinstance(code, int):
            print(code, flush=True)
        else:
            print_error(f"the exit status of {c} is not known (state {result.get('state')})")
            status = 1
    return status


def _cmd_ps(args: argparse.Namespace, client: Client) -> int:
    items = client.call("container.list", {"all": args.all})
    if args.format == "json":
        for item in items:
            print(json_line(item))
        return 0
    if args.quiet:
        for item in items:
            print(item["id"] if args.no_trunc else item["id"][:12])
        return 0
    now = time.time_ns()
    rows = []
    for item in items:
        command = item.get("command") or ""
        if isinstance(command, list):
            command = " ".join(command)
        if not args.no_trunc:
            command = ellipsis(str(command), 20)
        rows.append(
            [
                item["id"] if args.no_trunc else item["id"][:12],
                str(item.get("image", "")),
                json.dumps(command, ensure_ascii=False),
                ago(item.get("created_at"), now),
                container_status(item, now),
                str(item.get("name", "")),
            ]
        )
    print(table(["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "NAMES"], rows))
    return 0


def add_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Add run, create, start, stop, kill, rm, wait and ps through ``build_parser``'s ``add``."""
    p = add("run", "create and start a container", add_help=False, exit_status=125)
    p.add_argument("-d", "--detach", action="store_true", help="print the id and do not wait")
    add_create_options(p)
    p.set_defaults(func=_cmd_run, error_status=125)

    p = add("create", "create a container", add_help=False, exit_status=125)
    add_create_options(p)
    p.set_defaults(func=_cmd_create, error_status=125)

    p = add("start", "start containers")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")
    p.set_defaults(func=_cmd_start)

    p = add("stop", "stop containers (stop signal, then SIGKILL after a timeout)")
    p.add_argument(
        "-t",
        "--time",
        "--timeout",
        type=int,
        metavar="SECONDS",
        help="seconds before SIGKILL (default: the container's stop timeout)",
    )
    p.add_argument("containers", nargs="+", metavar="CONTAINER")
    p.set_defaults(func=_cmd_stop)

    p = add("kill", "send a signal to containers")
    p.add_argument("-s", "--signal", default="SIGKILL", help="signal name or number (SIGKILL)")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")
    p.set_defaults(func=_cmd_kill)

    p = add("rm", "remove containers")
    p.add_argument("-f", "--force", action="store_true", help="kill a running container first")
    p.add_argument("-v", "--volumes", action="store_true", help="accepted for docker compatibility")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")
    p.set_defaults(func=_cmd_rm)

    p = add("wait", "wait for containers to stop and print their exit codes")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")
    p.set_defaults(func=_cmd_wait)

    p = add("ps", "list containers")
    p.add_argument("-a", "--all", action="store_true", help="all containers, not only running")
    p.add_argument("-q", "--quiet", action="store_true", help="only ids")
    p.add_argument("--no-trunc", action="store_true", help="do not truncate ids and commands")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=_cmd_ps)
