"""Docker's JSON shapes of tugd's answers, and the checks of docker's request bodies (a field of
the wrong type is a 400 naming it, as Go's JSON decoder refuses it)."""

from __future__ import annotations

from typing import Any

from tugwire.dockershapes import ZERO_TIME as ZERO_TIME
from tugwire.dockershapes import docker_state as docker_state
from tugwire.dockershapes import epoch as epoch
from tugwire.dockershapes import rfc3339_ns as rfc3339_ns

from .http import HttpError

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
