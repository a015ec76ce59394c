"""``tug run`` and ``tug create``: a container from an image and options, and a foreground run
(its output to ours, our signals to it, its exit status ours).

Exit statuses follow docker: 125 when ``run``/``create`` fail before the container runs (126
when its command cannot be executed, 127 when it is not found), the container's own exit status
for a foreground ``run``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from tugwire import errors
from tugwire.frames import RAW
from tugwire.syncclient import Client, Disconnected, RawStream

from .create import add_create_options, create_params
from .format import print_error
from .logs import write_output

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

COMMANDS = ("run", "create")

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


def _create(args: argparse.Namespace, client: Client, method: str = "container.create") -> dict[str, Any]:
    """``container.create`` (or ``method`` with the same params), pulling the image first as
    ``--pull`` says: ``always``; on a ``not_found`` of the image for ``missing`` (docker's
    ``Unable to find image ... locally`` on stderr, then the pull's progress, then the create
    again); never for ``never``."""
    params = create_params(args)
    if method == "container.run":
        params["detach"] = True
    if args.pull == "always":
        from .pull import pull_for_create  # only when pulling: the pull module costs every run

        pull_for_create(client, args.image, sys.stderr)
    try:
        created: dict[str, Any] = client.call(method, params)
    except errors.NotFound as exc:
        if args.pull != "missing" or exc.details.get("field") != "image":
            raise
        from .pull import familiar_tagged, pull_for_create

        print(f"Unable to find image '{familiar_tagged(args.image)}' locally", file=sys.stderr, flush=True)
        pull_for_create(client, args.image, sys.stderr)
        created = client.call(method, params)
    return created


def _cmd_create(args: argparse.Namespace, client: Client) -> int:
    created = _create(args, client)
    print(created["id"])
    return 0


def _cmd_run(args: argparse.Namespace, client: Client) -> int:
    if not (args.detach or args.tty or args.interactive):
        return _run_one_call(args, client)
    if args.detach:  # create and start in one call: container.run {detach}
        try:
            created = _create(args, client, "container.run")
        except Disconnected:
            raise
        except errors.TugError as exc:
            if "container_id" not in exc.details:
                raise  # the create's error: 125
            print_error(exc.message)  # the start's: tugd removed an auto-removed container
            return _start_failure_status(exc)
        print(created["id"])
        return 0
    created = _create(args, client)  # run -i / -t: the container's terminal or stdin is ours
    cid = str(created["id"])
    from . import attach, tty

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


def _run_one_call(args: argparse.Namespace, client: Client) -> int:
    """A foreground ``run`` without a terminal or stdin, in one call on this connection:
    ``container.run`` creates, starts and follows, and its ``end`` frame has the exit (the
    create, wait, start and a log connection of their own used to cost two more round trips
    and a connection: docs/benchmarks.md). Signals are forwarded, once the container runs, on
    a connection opened for them; an image that is missing is pulled as ``--pull`` says."""
    params = {**create_params(args), "stream": RAW}
    if args.pull == "always":
        from .pull import pull_for_create

        pull_for_create(client, args.image, sys.stderr)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    old_wakeup = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    old_handlers = {s: signal.signal(s, _ignore_signal) for s in FORWARDED_SIGNALS}
    side: Client | None = None  # for container.kill, once there is something to forward
    held_signals: list[int] = []
    interrupts = 0
    cid = ""

    def woken() -> int | None:
        nonlocal interrupts, side
        for signum in _drain(wake_r):
            if signum == signal.SIGINT:
                interrupts += 1
                if interrupts >= FORCE_DETACH_INTERRUPTS:
                    which = cid[:12] or "(not started yet)"
                    print_error(f"detached from container {which}; it keeps running")
                    return 130
            held_signals.append(signum)
        if cid and held_signals:
            side = side or Client(client.path)
            for signum in held_signals:
                _forward(side, cid, signum)
            held_signals.clear()
        return None

    try:
        pulled = False
        while True:
            opening = client.stream("container.run", params, wakeup_fd=wake_r)
            try:
                for _ in opening:  # no notifications: each turn is a wakeup
                    if (code := woken()) is not None:
                        return code
                break
            except errors.NotFound as exc:
                if pulled or args.pull != "missing" or exc.details.get("field") != "image":
                    raise
                from .pull import familiar_tagged, pull_for_create

                missing = familiar_tagged(args.image)
                print(f"Unable to find image '{missing}' locally", file=sys.stderr, flush=True)
                pull_for_create(client, args.image, sys.stderr)
                pulled = True
            except errors.TugError as exc:
                if "container_id" not in exc.details:
                    raise  # the create's error: 125
                print_error(exc.message)  # the start's: tugd removed an auto-removed container
                return _start_failure_status(exc)
        cid = str(opening.result.get("id", "")) if isinstance(opening.result, dict) else ""
        logs = RawStream(client, None, wake_r)
        try:
            for item in logs:
                if item:
                    write_output(*item)
                elif (code := woken()) is not None:
                    return code
        finally:
            logs.close()
        if (code := woken()) is not None:
            return code
        waited: dict[str, Any] = logs.result if isinstance(logs.result, dict) else {}
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)
        signal.set_wakeup_fd(old_wakeup)
        os.close(wake_r)
        os.close(wake_w)
        if side is not None:
            side.close()
    if waited.get("log_error"):
        print_error(f"logs: {waited['log_error']}")
    code = waited.get("exit_code")
    if not isinstance(code, int):
        print_error(
            f"the exit status of container {cid[:12]} is not known (state {waited.get('state', 'unknown')})"
        )
        return 125
    return code


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


def _forward(client: Client, cid: str, signum: int) -> None:
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = str(signum)
    client.forget(client.send("container.kill", {"id": cid, "signal": name}))  # sent for its effect


def add_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Add ``run`` and ``create`` through ``build_parser``'s ``add``."""
    p = add("run", "create and start a container", add_help=False, exit_status=125)
    p.add_argument("-d", "--detach", action="store_true", help="print the id and do not wait")
    add_create_options(p)
    p.set_defaults(func=_cmd_run, error_status=125)

    p = add("create", "create a container", add_help=False, exit_status=125)
    add_create_options(p)
    p.set_defaults(func=_cmd_create, error_status=125)
