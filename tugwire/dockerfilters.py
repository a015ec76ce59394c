"""Docker's list filters (``ps -f status=exited``, ``/containers/json?filters=``), one copy.

Pure functions of tugd's container summaries (``container.list``), shared by tugd (which filters
``container.list`` with them) and anything else that must match as docker does. Docker's rules:
values of one key are OR'ed, different keys AND'ed; ``name`` is a regular expression searched in
the name (so a substring matches); ``id`` is a prefix; ``label`` is ``KEY`` or ``KEY=VALUE``, and
several labels must all match (docker's ``MatchKVList``); an unknown key is an error.
"""

from __future__ import annotations

import re

from .dockershapes import docker_state
from .errors import InvalidArgument

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

CONTAINER_KEYS = (
    "ancestor",
    "before",
    "exited",
    "health",
    "id",
    "label",
    "name",
    "network",
    "since",
    "status",
)
STATUSES = ("created", "restarting", "running", "removing", "paused", "exited", "dead")
HEALTH = ("starting", "healthy", "unhealthy", "none")


def parse_cli(items: list[str]) -> dict[str, list[str]]:
    """``-f key=value`` options (repeated) as docker's filter map; a bad one is InvalidArgument."""
    out: dict[str, list[str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidArgument(f"bad format of filter (expected name=value): {item}", field="filters")
        out.setdefault(key.strip().lower(), []).append(value)
    return out


def check(filters: Any, keys: tuple[str, ...]) -> dict[str, list[str]]:
    """``filters`` checked: a map of known keys to lists of strings, regexes that compile."""
    if filters is None:
        return {}
    if not isinstance(filters, dict):
        raise InvalidArgument("filters must map names to lists of strings", field="filters")
    out: dict[str, list[str]] = {}
    for key, values in filters.items():
        if isinstance(values, str):
            values = [values]
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise InvalidArgument(f"filter {key!r} must be a list of strings", field="filters")
        if key not in keys:
            raise InvalidArgument(f"invalid filter '{key}'", field="filters")
        if key == "name":
            for v in values:
                try:
                    re.compile(v)
                except re.error as exc:
                    raise InvalidArgument(f"invalid filter name={v}: {exc}", field="filters") from None
        if key == "status":
            for v in values:
                if v not in STATUSES:
                    raise InvalidArgument(
                        f"invalid filter 'status={v}': want one of {', '.join(STATUSES)}", field="filters"
                    )
        if key == "health":
            for v in values:
                if v not in HEALTH:
                    raise InvalidArgument(
                        f"invalid filter 'health={v}': want one of {', '.join(HEALTH)}", field="filters"
                    )
        if key == "exited":
            for v in values:
                if not v.lstrip("-").isdigit():
                    raise InvalidArgument(f"invalid filter 'exited={v}': want an integer", field="filters")
        out[key] = list(values)
    return out


def match_labels(labels: dict[str, str], wanted: list[str]) -> bool:
    """Every ``KEY`` or ``KEY=VALUE`` of ``wanted`` is among ``labels``."""
    for item in wanted:
        key, sep, value = item.partition("=")
        if key not in labels or (sep and labels[key] != value):
            return False
    return True


def container_status(c: dict[str, Any]) -> str:
    """The ``status`` a filter sees: docker's state, ``restarting`` while a restart is pending."""
    if c.get("restarting") and c.get("state") not in ("running", "paused"):
        return "restarting"
    return docker_state(c.get("state"))


def match_container(
    c: dict[str, Any], filters: dict[str, list[str]], created_of: Callable[[str], str | None]
) -> bool:
    """Whether summary ``c`` passes ``filters`` (checked); ``created_of(ref)`` is the creation
    time of the container ``ref`` names (for ``before``/``since``), None if there is none."""
    for key, values in filters.items():
        if not values:
            continue
        if key == "label":
            ok = match_labels(c.get("labels") or {}, values)
        elif key == "name":
            ok = any(re.search(v, c["name"]) or re.search(v, "/" + c["name"]) for v in values)
        elif key == "id":
            ok = any(c["id"].startswith(v) for v in values)
        elif key == "status":
            ok = container_status(c) in values
        elif key == "exited":
            ok = c.get("state") == "exited" and any(str(c.get("exit_code")) == str(int(v)) for v in values)
        elif key == "ancestor":
            ok = any(_is_image(c, v) for v in values)
        elif key == "network":
            nets = c.get("network_names") or []
            ok = any(v in nets or any(i.startswith(v) for i in c.get("network_ids") or []) for v in values)
        elif key == "health":
            ok = (c.get("health") or "none") in values
        elif key in ("before", "since"):
            ok = True
            for v in values:
                when = created_of(v)
                if when is None:
                    raise InvalidArgument(f"no such container: {v}", field="filters")
                mine = c.get("created_at") or ""
                ok = ok and (mine < when if key == "before" else mine > when)
        else:
            raise InvalidArgument(f"invalid filter '{key}'", field="filters")
        if not ok:
            return False
    return True


def _is_image(c: dict[str, Any], ref: str) -> bool:
    image = str(c.get("image") or "")
    image_id = str(c.get("image_id") or "")
    if ref in (image, image.removesuffix(":latest")):
        return True
    bare = ref.removeprefix("sha256:")
    return len(bare) >= 4 and image_id.removeprefix("sha256:").startswith(bare)


IMAGE_KEYS = ("before", "dangling", "label", "reference", "since")


def check_images(filters: Any) -> dict[str, list[str]]:
    """Image ``filters`` checked (``dangling`` is ``true`` or ``false``)."""
    out = check(filters, IMAGE_KEYS)
    for v in out.get("dangling", []):
        if v.lower() not in ("true", "false", "1", "0"):
            raise InvalidArgument(f"invalid filter 'dangling={v}': want true or false", field="filters")
    return out


def filter_image(
    img: dict[str, Any], filters: dict[str, list[str]], created_of: Callable[[str], str | None]
) -> dict[str, Any] | None:
    """Image ``img`` (``image.list``'s entry) as it passes ``filters`` (checked), None if it
    does not; a ``reference`` filter keeps only the names that match (as dockerd lists them)."""
    import fnmatch

    tags = list(img.get("repo_tags") or [])
    for key, values in filters.items():
        if not values:
            continue
        if key == "dangling":
            if any(v.lower() in ("true", "1") for v in values) == bool(tags):
                return None
        elif key == "label":
            if not match_labels((img.get("config") or {}).get("Labels") or {}, values):
                return None
        elif key == "reference":
            tags = [
                t
                for t in tags
                if any(fnmatch.fnmatch(t, v) or fnmatch.fnmatch(t.rsplit(":", 1)[0], v) for v in values)
            ]
            if not tags:
                return None
        elif key in ("before", "since"):
            mine = str(img.get("created") or "")
            for v in values:
                when = created_of(v)
                if when is None:
                    raise InvalidArgument(f"no such image: {v}", field="filters")
                if not (mine < when if key == "before" else mine > when):
                    return None
        else:
            raise InvalidArgument(f"invalid filter '{key}'", field="filters")
    return {**img, "repo_tags": tags} if tags != list(img.get("repo_tags") or []) else img


NETWORK_KEYS = ("dangling", "driver", "id", "label", "name", "scope", "type")


def match_network(net: dict[str, Any], filters: dict[str, list[str]]) -> bool:
    """Whether network ``net`` (docker's shape) passes ``filters`` (checked with NETWORK_KEYS):
    ``name`` and ``id`` are substrings and prefixes as docker matches them, ``dangling`` is a
    network without containers, ``type`` is ``builtin`` or ``custom``."""
    builtin = net.get("Name") in ("bridge", "host", "none")
    for key, values in filters.items():
        if not values:
            continue
        if key == "name":
            ok = any(v in net.get("Name", "") for v in values)
        elif key == "id":
            ok = any(net.get("Id", "").startswith(v) for v in values)
        elif key == "driver":
            ok = net.get("Driver") in values
        elif key == "label":
            ok = match_labels(net.get("Labels") or {}, values)
        elif key == "scope":
            ok = "local" in values
        elif key == "type":
            ok = ("builtin" if builtin else "custom") in values
        elif key == "dangling":
            want = any(v.lower() in ("true", "1") for v in values)
            ok = (not net.get("Containers") and not builtin) == want
        else:
            raise InvalidArgument(f"invalid filter '{key}'", field="filters")
        if not ok:
            return False
    return True
