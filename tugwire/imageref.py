"""Image references: ``[registry/]repo[:tag][@sha256:...]`` with docker's short-name rules.

``busybox`` is ``docker.io/library/busybox:latest``; ``me/app`` is ``docker.io/me/app:latest``;
``localhost:5000/x/y:t`` and ``quay.io/a/b`` keep their registry. A first component is a registry
when it holds a ``.`` or a ``:`` or is ``localhost`` (docker's rule). Names are kept in the
metadata store in docker's *familiar* form (``busybox:latest``, ``me/app:v1``,
``localhost:5000/x/y:t``), which is what ``docker images`` shows and what ``repositories.json``
holds, so that ``busybox`` and ``docker.io/library/busybox`` name the same image.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tugwire.errors import InvalidArgument

DEFAULT_REGISTRY = "docker.io"
_LEGACY_REGISTRY = "index.docker.io"
_OFFICIAL = "library/"

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_LABEL = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_RE = re.compile(rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?")
_TAG_RE = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True)
class Reference:
    """A parsed, normalised reference. ``tag`` is None only when a digest is given."""

    domain: str
    path: str
    tag: str | None
    digest: str | None

    @property
    def repository(self) -> str:
        """``docker.io/library/busybox``: the full repository name, as a registry client needs."""
        return f"{self.domain}/{self.path}"

    @property
    def familiar_repository(self) -> str:
        """``busybox``, ``me/app``, ``localhost:5000/x/y``: the short form docker shows."""
        if self.domain != DEFAULT_REGISTRY:
            return self.repository
        if self.path.startswith(_OFFICIAL) and "/" not in self.path[len(_OFFICIAL) :]:
            return self.path[len(_OFFICIAL) :]
        first = self.path.split("/", 1)[0]
        if "." in first or first == "localhost":
            # ``docker.io/my.org/app``: without the registry, ``my.org`` would read as one
            # (docker's own FamiliarName has this ambiguity; found by a property test)
            return self.repository
        return self.path

    @property
    def object(self) -> str:
        """What to ask the registry for: the digest if given, else the tag."""
        return self.digest or self.tag or "latest"

    def string(self) -> str:
        """The full normalised form: ``docker.io/library/busybox:latest``."""
        return self.repository + self._suffix()

    def familiar(self) -> str:
        """The short form, the key names are stored under: ``busybox:latest``."""
        return self.familiar_repository + self._suffix()

    def tag_name(self) -> str | None:
        """``busybox:latest`` (familiar), or None for a digest-only reference."""
        return f"{self.familiar_repository}:{self.tag}" if self.tag else None

    def digest_name(self, digest: str | None = None) -> str | None:
        """``busybox@sha256:...`` (familiar) for this reference's digest, or the one given."""
        d = digest or self.digest
        return f"{self.familiar_repository}@{d}" if d else None

    def _suffix(self) -> str:
        out = f":{self.tag}" if self.tag else ""
        return out + (f"@{self.digest}" if self.digest else "")

    def __str__(self) -> str:
        return self.string()


def _bad(ref: object, why: str) -> InvalidArgument:
    return InvalidArgument(f"invalid image reference {ref!r}: {why}", field="image")


def parse(ref: str, *, default_tag: str | None = "latest") -> Reference:
    """Parse and normalise ``ref``. A reference with neither tag nor digest gets
    ``default_tag``. Raises InvalidArgument for anything docker would not accept."""
    if not isinstance(ref, str) or not ref:
        raise _bad(ref, "an image reference is required")
    if len(ref) > 255 + 72:
        raise _bad(ref[:40] + "...", "too long")
    rest, _, digest = ref.partition("@")
    if digest and _DIGEST_RE.fullmatch(digest) is None:
        raise _bad(ref, "a digest is sha256: and 64 lower-case hex digits")
    # A tag is after the last ':' that comes after the last '/' (a ':' before it is a port).
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    tag: str | None = None
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
        if _TAG_RE.fullmatch(tag) is None:
            raise _bad(ref, "a tag is up to 128 of [A-Za-z0-9_.-], not starting with . or -")
    first, sep, remainder = rest.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        domain, path = first, remainder
        if _DOMAIN_RE.fullmatch(domain) is None:
            raise _bad(ref, f"bad registry {domain!r}")
    else:
        domain, path = DEFAULT_REGISTRY, rest
    if domain == _LEGACY_REGISTRY:
        domain = DEFAULT_REGISTRY
    if domain == DEFAULT_REGISTRY and "/" not in path:
        path = _OFFICIAL + path
    if _PATH_RE.fullmatch(path) is None:
        raise _bad(ref, "want [registry/]name[:tag][@sha256:digest], the name in lower case")
    if len(domain) + 1 + len(path) > 255:
        raise _bad(ref[:40] + "...", "the repository name is longer than 255 characters")
    if tag is None and not digest:
        tag = default_tag
    return Reference(domain, path, tag, digest or None)


def normalize(ref: str) -> str:
    """``busybox`` -> ``docker.io/library/busybox:latest``."""
    return parse(ref).string()


def familiar(ref: str) -> str:
    """``docker.io/library/busybox`` -> ``busybox:latest``: the key under which names are stored."""
    return parse(ref).familiar()


def is_digest(value: str) -> bool:
    return _DIGEST_RE.fullmatch(value) is not None
