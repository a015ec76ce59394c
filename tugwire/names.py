"""Validation of every name that may reach a path: container ids and names, image references."""

from __future__ import annotations

import re

from .errors import InvalidArgument

NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}")
ID_RE = re.compile(r"[0-9a-f]{64}")
# A local image reference: [registry/]repo[:tag], lower-case path components as docker's grammar.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_DOMAIN = rf"(?:{_LABEL}(?:\.{_LABEL})*(?::[0-9]+)?/)?"
REF_RE = re.compile(rf"({_DOMAIN}{_COMPONENT}(?:/{_COMPONENT})*)(?::([\w][\w.-]{{0,127}}))?")


def check_name(name: str) -> str:
    """A container name: ``[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}``, so never a path."""
    if not isinstance(name, str) or NAME_RE.fullmatch(name) is None:
        raise InvalidArgument(
            f"invalid container name {name!r}: must match [a-zA-Z0-9][a-zA-Z0-9_.-]{{0,127}}",
            field="name",
        )
    return name


def is_id(value: str) -> bool:
    return ID_RE.fullmatch(value) is not None


def parse_ref(ref: str) -> tuple[str, str]:
    """Split an image reference into (repository, tag), the tag defaulting to ``latest``."""
    if not isinstance(ref, str) or len(ref) > 255:
        raise InvalidArgument(f"invalid image reference {ref!r}", field="image")
    m = REF_RE.fullmatch(ref)
    if m is None:
        raise InvalidArgument(
            f"invalid image reference {ref!r}: want [registry/]name[:tag] in lower case",
            field="image",
        )
    return m.group(1), m.group(2) or "latest"
