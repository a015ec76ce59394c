"""``docker diff``: what a container changed in its root filesystem, read from its overlay's upper
directory against the image's layers (docker's overlay2 way).

Each entry of the upper directory is a change: a whiteout (a 0/0 character device) is a
deletion (``D``), an entry the layers below also have is a change (``C``), any other an addition
(``A``); a directory copied up but the same as below (size, mode and mtime) is not a change, as
docker skips it. The runtime's own mount points (``/proc``, ``/sys``, ``/dev``, ``/etc/hosts``,
...) are left out, and ``/etc`` is changed only if something else in it is: docker makes them
in an init layer below the container's.
"""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass

MODIFIED, ADDED, DELETED = 0, 1, 2  # docker's change kinds
KIND_LETTERS = {MODIFIED: "C", ADDED: "A", DELETED: "D"}

# Made by the runtime, not by the container: docker's init layer holds them.
RUNTIME_PATHS = frozenset(
    {"/proc", "/sys", "/dev", "/etc/hosts", "/etc/hostname", "/etc/resolv.conf", "/etc/mtab", "/.dockerenv"}
)


@dataclass(frozen=True)
class Change:
    path: str  # absolute, in the container
    kind: int  # MODIFIED, ADDED or DELETED


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def lower_stat(lowers: list[str], rel: str) -> os.stat_result | None:
    """The entry ``rel`` as the layers below show it (top first), without following links on
    the way; None if it is absent or whited out."""
    parts = rel.split("/")
    for lower in lowers:
        path = lower
        for i, part in enumerate(parts):
            path = os.path.join(path, part)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                break
            if _is_whiteout(st):
                return None
            if i == len(parts) - 1:
                return st
            if not stat.S_ISDIR(st.st_mode):
                return None
            with contextlib.suppress(OSError):
                if os.getxattr(path, "trusted.overlay.opaque") == b"y":
                    try:
                        return os.lstat(os.path.join(path, *parts[i + 1 :]))
                    except FileNotFoundError:
                        return None
    return None


def _same_dir(a: os.stat_result, b: os.stat_result) -> bool:
    return (
        stat.S_ISDIR(a.st_mode)
        and stat.S_ISDIR(b.st_mode)
        and a.st_mode == b.st_mode
        and a.st_size == b.st_size
        and a.st_mtime_ns // 1000 == b.st_mtime_ns // 1000  # docker compares at microseconds
    )


def changes(upper: str, lowers: list[str]) -> list[Change]:
    """The changes of the overlay whose upper directory is ``upper`` over ``lowers`` (top
    first), sorted by path as docker lists them."""
    out: list[Change] = []
    for dirpath, dirnames, filenames in os.walk(upper):
        rel_dir = os.path.relpath(dirpath, upper)
        keep = []
        for name in dirnames + filenames:
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            path = "/" + rel
            if path in RUNTIME_PATHS or path.startswith("/dev/"):
                continue
            keep.append(name)
            st = os.lstat(os.path.join(dirpath, name))
            if _is_whiteout(st):
                out.append(Change(path, DELETED))
                continue
            below = lower_stat(lowers, rel)
            if below is None:
                out.append(Change(path, ADDED))
            elif not _same_dir(st, below):
                out.append(Change(path, MODIFIED))
        dirnames[:] = [d for d in dirnames if d in keep]
    out.sort(key=lambda c: c.path)
    # A directory that holds a runtime mount point (/etc: hosts, ...) changed because of it:
    # a change only if something in it changed too.
    explained = {os.path.dirname(p) for p in RUNTIME_PATHS}
    return [
        c
        for c in out
        if not (c.kind == MODIFIED and c.path in explained)
        or any(o.path.startswith(c.path + "/") for o in out)
    ]
