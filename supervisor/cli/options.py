"""The CLI's argument parsing pieces shared by several commands: the parser class, and the types
of option values (sizes, CPUs, durations, times, environment items).

Imports nothing heavy: argparse is imported by every ``tug`` run anyway.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time

from tugwire import errors
from tugwire.timefmt import NS, is_duration, parse_duration, parse_rfc3339, rfc3339

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any, NoReturn


class Formatter(argparse.HelpFormatter):
    """argparse's formatter, minus its ``import shutil`` for the terminal's width: argparse
    makes a formatter for every ``add_argument`` (to check the metavar), and shutil drags in
    bz2, lzma and fnmatch, 2-3 ms of every ``tug`` command for a width that only ``--help``
    and usage errors print. Same rule as ``shutil.get_terminal_size``: ``$COLUMNS``, else
    the terminal of stdout, else 80."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:  # fmt: skip
        if width is None:
            width = terminal_columns() - 2
        super().__init__(prog, indent_increment, max_help_position, width)


def terminal_columns() -> int:
    """``$COLUMNS``, else the width of the terminal of stdout, else 80."""
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno() if sys.__stdout__ else 1).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors exit with ``exit_status`` (125 for run/create)."""

    def __init__(self, *args: Any, exit_status: int = 2, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", Formatter)
        super().__init__(*args, **kwargs)
        self.exit_status = exit_status

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(self.exit_status, f"{self.prog}: error: {message}\n")


# Patterns are strings, compiled (and cached) by `re` on first use: compiling them at import cost
# ~0.8 ms of every `tug` command, most of which never parse a size or a time.
_SIZE_RE = r"(\d+(?:\.\d+)?) ?([kKmMgGtTpP])?[iI]?[bB]?"
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
_UNIX_RE = r"(\d+)(?:\.(\d{1,9}))?"


def parse_size(text: str) -> int:
    """A size in bytes from ``64m``, ``1.5g``, ``512k``, ``100b`` or ``4096`` (1024-based, as
    docker's ``RAMInBytes``). Raises ValueError."""
    m = re.fullmatch(_SIZE_RE, text.strip())
    if m is None:
        raise ValueError(f"invalid size {text!r}: want a number and an optional b, k, m or g")
    unit = (m.group(2) or "").lower()
    return int(float(m.group(1)) * _SIZE_UNITS[unit])


def size_arg(text: str) -> int:
    """argparse type: :func:`parse_size`."""
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cpus_arg(text: str) -> float:
    """argparse type: a positive number of CPUs."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number of CPUs {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"invalid number of CPUs {text!r}: must be positive")
    return value


def duration_seconds(text: str) -> float:
    """argparse type: ``30s``, ``1m30s``, ``500ms`` or a plain number of seconds."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return parse_duration(text) / NS
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def parse_time_ns(value: str, now_ns: int | None = None, option: str = "--since") -> int:
    """Nanoseconds since the epoch of a time given on the command line: an RFC 3339 time (local
    time without a zone, as docker), a duration before now (``10s``, ``5m``, ``2h``) or a unix
    timestamp (``1700000000[.123]``). Raises ValueError."""
    value = value.strip()
    if now_ns is None:
        now_ns = time.time_ns()
    if is_duration(value):
        ns = now_ns - parse_duration(value)
    elif (m := re.fullmatch(_UNIX_RE, value)) is not None:
        ns = int(m.group(1)) * NS + int((m.group(2) or "").ljust(9, "0"))
    else:
        try:
            ns = parse_rfc3339(value, local_if_naive=True)
        except ValueError:
            raise ValueError(
                f"invalid {option} {value!r}: want an RFC 3339 time (2026-01-02T03:04:05Z), "
                "a duration (10s, 5m, 2h) or a unix timestamp"
            ) from None
    return max(ns, 0)


def parse_since(value: str, now_ns: int | None = None) -> str:
    """The ``since`` of ``container.logs``: a fixed-width UTC ``YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ``
    from an RFC 3339 time, a duration before now (``10s``, ``5m``, ``2h``) or a unix timestamp
    (``1700000000[.123]``). Raises ValueError."""
    return rfc3339(parse_time_ns(value, now_ns))


def time_arg(option: str) -> Callable[[str], int]:
    """argparse type for ``option``: :func:`parse_time_ns`."""

    def parse(text: str) -> int:
        try:
            return parse_time_ns(text, option=option)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def env_items(items: Iterable[str]) -> list[str]:
    """``K=V`` as given; ``K`` alone takes this process's value, or is dropped (as docker)."""
    out = []
    for item in items:
        if "=" in item:
            if item.startswith("="):
                raise errors.InvalidArgument(f"invalid environment variable {item!r}", field="env")
            out.append(item)
        elif item and item in os.environ:
            out.append(f"{item}={os.environ[item]}")
    return out
