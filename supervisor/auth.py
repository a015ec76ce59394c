"""Registry credentials and transport policy: who we are to a registry, and whether to speak
plain HTTP to it.

Credentials live in ``<root>/auth.json``, in docker's ``config.json`` shape
(``{"auths": {"HOST[:PORT]": {"auth": base64("user:password")}}}``), mode 0600, owned by the
user tugd runs as (root): written atomically (temp file, fsync, rename), never logged, never
returned over the API. A file found with looser permissions is tightened before it is read.

Plain HTTP is used only for registries the operator marks insecure (``tugd --insecure-registry
HOST[:PORT]``) and, as docker does, for loopback registries (``localhost``, ``127.0.0.0/8``,
``::1``), whatever their port. Everything else is HTTPS with certificate verification.

The ``WWW-Authenticate`` challenge parser is here too: it is pure and tested on its own.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import logging
import os
import re
import stat
from dataclasses import dataclass, field

from tugwire import fsutil
from tugwire.errors import InvalidArgument

log = logging.getLogger(__name__)

DOCKER_HUB = "docker.io"
DOCKER_HUB_ENDPOINT = "registry-1.docker.io"
_HOST_RE = re.compile(
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"|\[[0-9a-fA-F:]+\])(?::[0-9]{1,5})?"
)


def check_host(host: str) -> str:
    """A registry host as a user writes it (``HOST[:PORT]``, no scheme, no path); normalised so
    that ``index.docker.io`` and ``https://index.docker.io/v1/`` are docker.io, as docker does."""
    if not isinstance(host, str) or not host:
        raise InvalidArgument("a registry host is required", field="registry")
    h = host.strip()
    for prefix in ("https://", "http://"):
        h = h.removeprefix(prefix)
    h = h.rstrip("/")
    if h.endswith("/v1") or h.endswith("/v2"):
        h = h[:-3]
    if h in ("index.docker.io", DOCKER_HUB_ENDPOINT):
        h = DOCKER_HUB
    if _HOST_RE.fullmatch(h) is None:
        raise InvalidArgument(f"invalid registry host {host!r}: want HOST[:PORT]", field="registry")
    return h.lower()


def check_mirror(url: str) -> str:
    """A registry mirror as ``dockerd --registry-mirror`` takes it: ``http://HOST[:PORT]`` or
    ``https://HOST[:PORT]`` (a trailing ``/`` allowed, no other path); normalised to
    ``SCHEME://host``. A mirror named ``http://`` is spoken to over plain HTTP, as an insecure
    registry is."""
    if not isinstance(url, str) or not url.strip():
        raise InvalidArgument("a registry mirror URL is required", field="registry_mirror")
    u = url.strip()
    scheme, sep, rest = u.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        raise InvalidArgument(
            f"invalid registry mirror {url!r}: want http://HOST[:PORT] or https://HOST[:PORT]",
            field="registry_mirror",
        )
    rest = rest.rstrip("/")
    if "/" in rest or _HOST_RE.fullmatch(rest) is None:
        raise InvalidArgument(
            f"invalid registry mirror {url!r}: want http://HOST[:PORT] or https://HOST[:PORT], no path",
            field="registry_mirror",
        )
    return f"{scheme.lower()}://{rest.lower()}"


def check_mirror_entry(entry: str) -> tuple[str, str]:
    """One ``--registry-mirror`` value: ``URL`` (a mirror of docker.io) or ``REGISTRY=URL`` (a
    mirror of that registry, as containerd's ``hosts.toml``): ``(registry, SCHEME://host)``,
    the registry lower-cased (docker.io's other names are docker.io)."""
    if isinstance(entry, str) and "=" in entry:
        registry, _, url = entry.partition("=")
        registry = registry.strip().lower()
        if registry in ("index.docker.io", DOCKER_HUB_ENDPOINT):
            registry = DOCKER_HUB
        if _HOST_RE.fullmatch(registry) is None:
            raise InvalidArgument(
                f"invalid registry mirror {entry!r}: want REGISTRY=URL, REGISTRY a HOST[:PORT]",
                field="registry_mirror",
            )
        return registry, check_mirror(url)
    return DOCKER_HUB, check_mirror(entry)


def endpoint_host(host: str) -> str:
    """Where a registry's API actually is: docker.io's is registry-1.docker.io."""
    return DOCKER_HUB_ENDPOINT if host == DOCKER_HUB else host


def _split_port(host: str) -> str:
    if host.startswith("["):
        return host[1 : host.index("]")]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def is_loopback(host: str) -> bool:
    """``localhost``, ``127.x.y.z`` or ``[::1]``, with or without a port."""
    name = _split_port(host)
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class TransportPolicy:
    """Which registries get plain HTTP: the configured insecure ones and loopback ones."""

    insecure: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def from_list(cls, hosts: list[str] | tuple[str, ...]) -> TransportPolicy:
        return cls(frozenset(check_host(h) for h in hosts))

    def scheme(self, host: str) -> str:
        """``http`` or ``https`` for ``host`` (as :func:`check_host` returns it)."""
        if host in self.insecure or _split_port(host) in self.insecure or is_loopback(host):
            return "http"
        return "https"


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    def __repr__(self) -> str:  # never show a password, even in a traceback
        return f"Credentials(username={self.username!r}, password=<hidden>)"


class AuthStore:
    """The credentials file. One writer (tugd); every change rewrites it atomically."""

    def __init__(self, path: str) -> None:
        self.path = path

    def _load(self) -> dict[str, dict[str, str]]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return {}
        if stat.S_IMODE(st.st_mode) & 0o077 or st.st_uid != os.geteuid():
            log.warning("%s was readable by others: setting it to 0600, owned by us", self.path)
            os.chown(self.path, os.geteuid(), os.getegid())
            os.chmod(self.path, 0o600)
        try:
            with open(self.path, "rb") as f:
                doc = json.load(f)
        except ValueError:
            log.error("%s is not valid JSON: ignoring it", self.path)
            return {}
        auths = doc.get("auths") if isinstance(doc, dict) else None
        if not isinstance(auths, dict):
            return {}
        return {k: v for k, v in auths.items() if isinstance(k, str) and isinstance(v, dict)}

    def _save(self, auths: dict[str, dict[str, str]]) -> None:
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        data = json.dumps({"auths": auths}, indent=2, sort_keys=True).encode() + b"\n"
        fsutil.write_atomic(self.path, data, mode=0o600)

    def get(self, host: str) -> Credentials | None:
        """The credentials saved for ``host``, if any."""
        entry = self._load().get(host)
        if not entry or not isinstance(entry.get("auth"), str):
            return None
        try:
            user, sep, password = base64.b64decode(entry["auth"], validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return Credentials(user, password) if sep else None

    def set(self, host: str, creds: Credentials) -> None:
        auths = self._load()
        token = base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
        auths[host] = {"auth": token}
        self._save(auths)

    def remove(self, host: str) -> bool:
        """Forget ``host``; returns whether there was anything to forget."""
        auths = self._load()
        if auths.pop(host, None) is None:
            return False
        self._save(auths)
        return True

    def hosts(self) -> list[str]:
        return sorted(self._load())


# ------------------------------------------------------------------------------- challenges


@dataclass(frozen=True)
class Challenge:
    """One challenge of a ``WWW-Authenticate`` header: its scheme (lower case) and parameters
    (names in lower case)."""

    scheme: str
    params: dict[str, str]


_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = r'"(?:[^"\\]|\\.)*"'
_PARAM_RE = re.compile(rf"\s*({_TOKEN})\s*=\s*({_QUOTED}|{_TOKEN})\s*(?:,|$)")
_SCHEME_RE = re.compile(rf"\s*,?\s*({_TOKEN})(?:\s+|$)")


def _unquote(value: str) -> str:
    if value.startswith('"'):
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def parse_challenges(header: str) -> list[Challenge]:
    """Parse a ``WWW-Authenticate`` value (RFC 7235): one or more challenges, each a scheme and
    comma-separated ``name=value`` parameters, values quoted (with backslash escapes) or not.

    ``Bearer realm="https://auth.example/token",service="registry",scope="repository:a:pull"``
    gives ``[Challenge("bearer", {"realm": ..., "service": ..., "scope": ...})]``. Whatever cannot
    be parsed is skipped, never guessed."""
    out: list[Challenge] = []
    pos = 0
    n = len(header)
    while pos < n:
        m = _SCHEME_RE.match(header, pos)
        if m is None:
            break
        scheme = m.group(1).lower()
        pos = m.end()
        params: dict[str, str] = {}
        while pos < n:
            pm = _PARAM_RE.match(header, pos)
            if pm is None:
                break
            params[pm.group(1).lower()] = _unquote(pm.group(2))
            pos = pm.end()
        out.append(Challenge(scheme, params))
        if pos < n and _SCHEME_RE.match(header, pos) is None:
            break
    return out
