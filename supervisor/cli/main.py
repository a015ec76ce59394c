"""``tug``: the command line client of tugd, docker-compatible where that makes sense.

It talks JSON-RPC to tugd over a Unix socket (``--socket``, else ``$TUGBOAT_SOCKET``, else
``/run/tugboat/tugd.sock``) with the blocking :class:`tugwire.syncclient.Client`, and imports
nothing heavy (no anyio, no asyncio, no datetime): a ``tug`` command must start in milliseconds.

This module only parses the command line and dispatches: each command lives in a module of this
package (``run``, ``containers``, ``logs``, ``inspect``, ``images``, ``events``, ``system``, ``verbs``,
``exec``, ``attach``, ``network``, ``pod``, ``pull``, ``build``), and only the module of the command being
run is imported. Shared pieces: ``options`` (the parser class, option types), ``format`` (tables,
sizes, errors), ``create`` (run/create options), ``tty`` (the terminal), ``stdin`` (the stdin pump).

Exit statuses follow docker: 0 on success, 1 for an error, 125 when ``run``/``create`` fail before
the container runs (126 when its command cannot be executed, 127 when it is not found), the
container's own exit status for a foreground ``run``, 2 for a usage error (125 for ``run`` and
``create``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from tugwire import errors
from tugwire.syncclient import Client

from .format import print_error
from .options import Parser

# typing is not imported at run time: it costs ~2 ms of every `tug` command, and with
# `from __future__ import annotations` these names only appear in annotations.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any, NoReturn

    Handler = Callable[[argparse.Namespace, Client], int]

DEFAULT_SOCKET = "/run/tugboat/tugd.sock"
SOCKET_ENV = "TUGBOAT_SOCKET"


def _no_translation() -> None:
    """argparse asks gettext for every string it shows; we ship no translations, and gettext's
    search for catalogues on disk cost about 8 ms of every ``tug`` run (measured with cProfile)."""
    argparse._ = lambda message: message  # type: ignore[attr-defined]
    argparse.ngettext = lambda singular, plural, n: singular if n == 1 else plural  # type: ignore[attr-defined]


class _Skipped:
    """Stands in for the parser of a command this run does not use: building every subparser
    costs more than the rest of a short ``tug`` command (measured: ~10 ms)."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: self


# The commands, by the module of this package that defines them, in the order `tug --help` lists
# them. Only the module of the command being run is imported: importing all of them cost every
# `tug` command several ms (-X importtime; the pull module alone ~3 ms).
# tests/test_cli_unit.py checks this table against each module's own COMMANDS.
COMMAND_MODULES: dict[str, tuple[str, ...]] = {
    "run": ("run", "create"),
    "containers": ("start", "stop", "kill", "rm", "wait", "ps"),
    "inspect": ("inspect",),
    "logs": ("logs",),
    "images": ("import", "images", "rmi", "image", "save", "load", "tag"),
    "events": ("events",),
    "system": ("info", "system"),
    "verbs": ("pause", "unpause", "top", "stats", "update", "restart", "rename", "cp"),
    "exec": ("exec",),
    "attach": ("attach",),
    "network": ("network",),
    "pod": ("pod",),
    "pull": ("pull", "push", "login", "logout"),
    "build": ("build",),
}

# Public names that lived in this module before it was split, and the module that holds each
# now: looked up on first use (PEP 562), so that a `tug` command imports none of them.
_MOVED = {
    "create_params": "create",
    "parse_volume": "create",
    "parse_size": "options",
    "parse_time_ns": "options",
    "parse_since": "options",
    "event_filters": "events",
    "format_event": "events",
    "container_status": "containers",
    "LogDecoder": "logs",
    "render_template": "inspect",
    "parse_change": "images",
    "human_size": "format",
    "human_duration": "format",
    "time_ns_of": "format",
}


def __getattr__(name: str) -> Any:
    """The public names that moved to the command modules, for callers of ``cli.main.X``."""
    module = _MOVED.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__package__}.{module}"), name)


def _command_in(argv: Sequence[str]) -> str | None:
    """The command word of ``argv`` (after the global options), if there is one."""
    it = iter(argv)
    for word in it:
        if word == "--socket":
            next(it, None)
        elif word.startswith("--socket="):
            continue
        elif word.startswith("-"):
            return None  # --help, or an option we do not know: build everything
        else:
            return word
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``tug`` argument parser (each command sets ``func`` and ``error_status``). Given the
    arguments, only the command they name is built in full, and only its module is imported."""
    _no_translation()
    parser = Parser(prog="tug", description="Run and manage containers with tugd.")
    parser.add_argument(
        "--socket",
        metavar="PATH",
        help=f"tugd's socket (default ${SOCKET_ENV}, else {DEFAULT_SOCKET})",
    )
    parser.set_defaults(func=None, error_status=1)
    sub = parser.add_subparsers(dest="command_name", metavar="COMMAND", parser_class=Parser)

    wanted = _command_in(argv) if argv is not None else None
    modules = [m for m, cmds in COMMAND_MODULES.items() if wanted is not None and wanted in cmds]
    if not modules:  # --help, no command or one we do not know: build everything
        wanted = None
        modules = list(COMMAND_MODULES)

    def add(name: str, help_: str, **kw: Any) -> argparse.ArgumentParser:
        if wanted is not None and name != wanted:
            return _Skipped()  # type: ignore[return-value]
        p: argparse.ArgumentParser = sub.add_parser(name, help=help_, **kw)
        return p

    for module in modules:
        importlib.import_module(f"{__package__}.{module}").add_commands(add)
    return parser


def socket_path(args: argparse.Namespace) -> str:
    """``--socket``, else ``$TUGBOAT_SOCKET``, else the default socket."""
    return str(args.socket or os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET)


def main(argv: list[str] | None = None) -> int:
    """Run one ``tug`` command; returns the exit status."""
    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser(argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    handler: Handler | None = args.func
    if handler is None:
        parser.print_help()
        return 0
    try:
        with Client(socket_path(args)) as client:
            return handler(args, client)
    except errors.TugError as exc:
        print_error(exc.message)
        return int(args.error_status)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (``tug logs | head``): exit as docker would on SIGPIPE, quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 141


def entry() -> NoReturn:
    """The ``tug`` console script: :func:`main`, then ``os._exit`` once stdout and stderr are
    flushed. A CLI run is one short process: tearing the interpreter down (module dicts, the
    garbage collector's last pass) costs about 4 ms here, 10 % of ``tug info``, and frees nothing
    that the kernel does not free anyway. Nothing registers ``atexit`` work in the CLI."""
    code = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BrokenPipeError:
            code = code or 141
        except (OSError, ValueError):
            code = code or 1
    os._exit(code & 0xFF if code >= 0 else 1)


if __name__ == "__main__":
    entry()
