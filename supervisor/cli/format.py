"""How the CLI shows things: errors, docker's tables, sizes, durations and ages, JSON lines, and
the report of a command applied to several objects.

Shared by every command module; imports nothing heavy (no typing at run time, no datetime).
"""

from __future__ import annotations

import json
import sys

from tugwire import errors
from tugwire.timefmt import NS, parse_rfc3339
from tugwire.timefmt import human_duration as human_duration  # the CLI's formats, with the rest

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from typing import Any


def print_error(message: str) -> None:
    """``tug: Error: <message>`` on stderr, after whatever stdout holds."""
    sys.stdout.flush()
    print(f"tug: Error: {message}", file=sys.stderr, flush=True)


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Columns as docker's tabwriter lays them out (min width 10, padding 3)."""
    rows = [list(headers), *(list(r) for r in rows)]
    widths = [max(10, max(len(r[i]) for r in rows) + 3) for i in range(len(headers) - 1)]
    lines = []
    for r in rows:
        cells = [cell.ljust(w) for cell, w in zip(r, widths, strict=False)]
        lines.append(("".join(cells) + r[-1]).rstrip())
    return "\n".join(lines)


def ellipsis(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, the last one an ellipsis if it was cut."""
    return text if len(text) <= width else text[: width - 1] + "…"


def short_id(value: Any) -> str:
    """The first 12 hex digits of an id, without its ``sha256:`` prefix."""
    return str(value or "").split(":", 1)[-1][:12]


def json_line(obj: Any) -> str:
    """``obj`` as compact JSON on one line (non-ASCII kept)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def report(names: list[str], results: list[Any]) -> int:
    """Print each name whose call succeeded and each error (results as from
    :meth:`Client.call_many`); 1 if any failed."""
    status = 0
    for name, result in zip(names, results, strict=True):
        if isinstance(result, errors.TugError):
            print_error(result.message)
            status = 1
        else:
            print(name, flush=True)
    return status


def time_ns_of(value: Any) -> int | None:
    """Nanoseconds since the epoch of a timestamp from tugd (RFC 3339 in UTC, or a number of
    seconds), or None when absent or unreadable."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return int(value * NS) if value < 1e12 else int(value)
    if isinstance(value, str) and value:
        try:
            ns = parse_rfc3339(value, local_if_naive=False)
        except ValueError:
            return None
        return ns if ns > 0 else None  # Go's zero time, "0001-01-01T00:00:00Z", means never
    return None


def human_size(size: float, precision: int = 3) -> str:
    """A byte count, docker style (go-units ``HumanSizeWithPrecision``, 1000-based): ``4.26MB``."""
    units = ("B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB")
    i = 0
    while size >= 1000 and i < len(units) - 1:
        size /= 1000
        i += 1
    return f"{size:.{precision}g}{units[i]}"


def ago(value: Any, now_ns: int) -> str:
    """``3 minutes ago`` for a timestamp from tugd; empty when it has none."""
    ns = time_ns_of(value)
    if ns is None:
        return ""
    return human_duration(max(now_ns - ns, 0) / NS) + " ago"


def filter_options(items: list[str]) -> dict[str, list[str]]:
    """``-f key=value`` options as docker's filter map (tugd checks the keys); the parser is
    imported only when there are some."""
    if not items:
        return {}
    from tugwire.dockerfilters import parse_cli

    return parse_cli(items)
