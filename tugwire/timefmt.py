"""Time on the wire: RFC 3339 timestamps and Go-style durations, the one home for every side.

tugd, the shim and the CLI all write times as ``2026-01-02T03:04:05.123456789Z`` (UTC,
nanoseconds, fixed width, so that they compare as strings) and read them back here. Pure and
cheap to import: ``time`` and ``re`` only (no ``datetime``, no ``typing`` at run time), since the
shim and the CLI import it on every start. Patterns are strings, compiled (and cached) by ``re`` on
first use.
"""

from __future__ import annotations

import re
import time

NS = 1_000_000_000  # nanoseconds in a second

_RFC3339_RE = (
    r"(\d{4})-(\d{2})-(\d{2})"
    r"(?:[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?)?"
    r"(Z|z|[+-]\d{2}(?::?\d{2})?)?"
)
_DAYS_IN_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)

_DURATION_PART = r"(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|μs|ms|s|m|h)"
_DURATION_RE = rf"[+-]?(?:{_DURATION_PART})+|[+-]?0"
_DURATION_PART_RE = r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)"
_DURATION_UNITS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "μs": 1_000,
    "ms": 1_000_000,
    "s": NS,
    "m": 60 * NS,
    "h": 3600 * NS,
}


def rfc3339(ns: int | None = None) -> str:
    """``2026-01-02T03:04:05.123456789Z`` for ``ns`` nanoseconds since the epoch (now if None):
    UTC, nanoseconds, fixed width."""
    if ns is None:
        ns = time.time_ns()
    sec, frac = divmod(ns, NS)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{frac:09d}Z"


def rfc3339_bytes(ns: int | None = None) -> bytes:
    """:func:`rfc3339` as bytes (the CRI log's record timestamp, formatted once per chunk)."""
    if ns is None:
        ns = time.time_ns()
    sec, frac = divmod(ns, NS)
    return b"%s.%09dZ" % (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)).encode(), frac)


def days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm)."""
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def parse_rfc3339(text: str, *, local_if_naive: bool = False) -> int:
    """Nanoseconds since the epoch of an RFC 3339 time (``2026-01-02T03:04:05Z``, a fraction of
    up to 9 digits, ``+02:00``; ``T``, ``t`` or a space between date and time). A time without a
    zone is UTC, or local time with ``local_if_naive`` (as docker's CLI). A date alone means its
    midnight. Raises ValueError."""
    m = re.fullmatch(_RFC3339_RE, text.strip())
    if m is None:
        raise ValueError(f"invalid time {text!r}")
    year, month, day = int(m.group(1)), int(m.group(2)), int(m.group(3))
    hour, minute, sec = (int(g) if g else 0 for g in m.group(4, 5, 6))
    frac = int((m.group(7) or "")[:9].ljust(9, "0"))
    leap = month == 2 and day == 29 and (year % 4 != 0 or (year % 100 == 0 and year % 400 != 0))
    if not (1 <= month <= 12 and 1 <= day <= _DAYS_IN_MONTH[month - 1]) or leap:
        raise ValueError(f"invalid date in {text!r}")
    if hour > 23 or minute > 59 or sec > 60:
        raise ValueError(f"invalid time of day in {text!r}")
    zone = m.group(8)
    if zone is None and local_if_naive:
        secs = int(time.mktime((year, month, day, hour, minute, sec, 0, 0, -1)))
        return secs * NS + frac
    offset = 0
    if zone and zone not in "Zz":
        digits = zone[1:].replace(":", "")
        offset = int(digits[:2]) * 3600 + int(digits[2:4] or 0) * 60
        if zone[0] == "-":
            offset = -offset
    secs = days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + sec - offset
    return secs * NS + frac


def epoch_seconds(value: str | None) -> float | None:
    """Seconds since the epoch of an RFC 3339 time as tugd stores them, or None when ``value`` is
    empty or not such a time."""
    if not value:
        return None
    try:
        return parse_rfc3339(value) / NS
    except ValueError:
        return None


def is_duration(text: str) -> bool:
    """Whether ``text`` is a Go-style duration that :func:`parse_duration` reads."""
    return re.fullmatch(_DURATION_RE, text.strip()) is not None


def parse_duration(text: str) -> int:
    """Nanoseconds of a Go-style duration (``10s``, ``5m``, ``1h30m``, ``1.5h``, ``300ms``, a sign,
    ``0``). Raises ValueError."""
    text = text.strip()
    if re.fullmatch(_DURATION_RE, text) is None:
        raise ValueError(f"invalid duration {text!r}")
    sign = -1 if text.startswith("-") else 1
    total = 0.0
    for number, unit in re.findall(_DURATION_PART_RE, text):
        total += float(number) * _DURATION_UNITS[unit]
    return sign * round(total)


def human_duration(seconds: float) -> str:
    """How long, as docker says it (go-units ``HumanDuration``): ``5 seconds``, ``About a minute``;
    shared by ``tug ps`` and the Docker API's ``Status``, so that both say the same."""
    secs = int(seconds)
    if secs < 1:
        return "Less than a second"
    if secs == 1:
        return "1 second"
    if secs < 60:
        return f"{secs} seconds"
    minutes = secs // 60
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(seconds / 3600 + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds / 3600) // 24 // 365} years"
