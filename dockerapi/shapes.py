"""Docker's JSON shapes of tugd's answers, and the checks of docker's request bodies (a field of
the wrong type is a 400 naming it, as Go's JSON decoder refuses it)."""

from __future__ import annotations

import calendar
import re
import time
from typing import Any

from .http import HttpError

ZERO_TIME = "0001-01-01T00:00:00Z"


def epoch(value: str | None) -> int:
    """Unix seconds of tugd's RFC 3339 UTC times (0 when absent)."""
    if not value:
        return 0
    found = re.match(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)", value)
    if not found:
        return 0
    y, mo, d, h, mi, s = (int(x) for x in found.groups())
    return calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0))


def rfc3339_ns(ns: int) -> str:
    """``2026-01-02T03:04:05.123456789Z`` of nanoseconds since the epoch (UTC)."""
    sec, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{frac:09d}Z"


def human_duration(seconds: float) -> str:
    """Docker's ``units.HumanDuration`` (``Up 5 seconds``, ``Exited (0) 2 minutes ago``)."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = s // 60
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(s / 3600)
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
    return f"{hours // 24 // 365} years"


def status_text(c: dict[str, Any]) -> str:
    """The ``Status`` column of ``docker ps``."""
    state = c.get("state")
    now = time.time()
    if state in ("running", "paused"):
        up = "Up " + human_duration(now - epoch(c.get("started_at")))
        if state == "paused":
            return up + " (Paused)"
        if c.get("health"):
            return f"{up} ({c['health']})"
        return up
    if c.get("restarting"):
        return f"Restarting ({c.get('exit_code')}) {human_duration(now - epoch(c.get('finished_at')))} ago"
    if state == "exited":
        return f"Exited ({c.get('exit_code')}) {human_duration(now - epoch(c.get('finished_at')))} ago"
    if state == "created":
        return "Created"
    return state or ""


def docker_state(state: str | None) -> str:
    """tugd's state as docker names it (``unknown`` is docker's ``dead``)."""
    return "dead" if state == "unknown" else (state or "")


# ------------------------------------------------------------------------------- body checks


def _where(key: str) -> str:
    return f"json: cannot unmarshal field {key}"


def get_str(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise HttpError(400, f"{_where(key)}: want a string")
    return value


def get_bool(obj: dict[str, Any], key: str) -> bool:
    value = obj.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise HttpError(400, f"{_where(key)}: want a boolean")
    return value


def get_int(obj: dict[str, Any], key: str) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise HttpError(400, f"{_where(key)}: want an integer")
    return value


def get_strs(obj: dict[str, Any], key: str) -> list[str] | None:
    """A list of strings; docker also accepts one string for Cmd/Entrypoint (``strslice``)."""
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise HttpError(400, f"{_where(key)}: want a list of strings")
    return list(value)


def get_obj(obj: dict[str, Any], key: str) -> dict[str, Any]:
    value = obj.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise HttpError(400, f"{_where(key)}: want an object")
    return value


def get_str_map(obj: dict[str, Any], key: str) -> dict[str, str]:
    value = get_obj(obj, key)
    if not all(isinstance(v, str) for v in value.values()):
        raise HttpError(400, f"{_where(key)}: want an object of strings")
    return dict(value)
