"""tugd's start-up checks, and every start-up failure said in one line.

A start of tugd either serves or ends with exit status 2 and one line that names the file, says
what is wrong and the way out (never a traceback): a damaged, truncated, missing or unreadable
``tugboat.db``, a store that lost its recent writes (its ``-wal`` file gone), a full disk, a
read-only root, a state directory another tugd uses.

The store is checked cheaply at every start, before anything is recovered or cleaned up:
SQLite's ``PRAGMA quick_check`` (it reads every page once: 2-18 ms for 2.2 MB, 170-360 ms at the
events table's 30 MB cap, on the loaded test machine), then the records on disk
(supervisor/ondisk.py) against the store: a record written at a generation above the store's
means the store went back in time (a lost WAL, a torn write), and starting would make tugd clean
up the bundles and blobs the store no longer knows. In each case the line offers
``--rebuild-store``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from tugwire.errors import TugError

from . import ondisk
from .store import Store

if TYPE_CHECKING:
    from .config import Config

log = logging.getLogger("tugboat")

REBUILD = "start once with --rebuild-store to rebuild it from what is on disk"


class StartupError(Exception):
    """tugd cannot start: the message is the one line it prints (exit status 2)."""


def describe_sqlite_error(path: str, exc: sqlite3.Error) -> str:
    """One line for an error SQLite gave opening or checking the store."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    detail = str(exc) or type(exc).__name__
    root = os.path.dirname(path)
    damaged = "malformed" in detail or "not a database" in detail
    if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB) or damaged:
        return f"{path} is damaged ({detail}); {REBUILD}"
    if code == sqlite3.SQLITE_FULL:
        return f"{path} cannot be written: the disk is full ({detail}); free space where {root}"
    if code == sqlite3.SQLITE_READONLY:
        return (
            f"{path} cannot be written ({detail}); remount {root} read-write (or give another --root), "
            "and check the file's owner and mode"
        )
    if code == sqlite3.SQLITE_BUSY:
        return f"{path} is locked by another process ({detail}); stop whatever holds it (another tugd?)"
    if code == sqlite3.SQLITE_IOERR:
        return f"{path} cannot be read: a disk I/O error ({detail}); check the disk (dmesg), then {REBUILD}"
    if code in (sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM, sqlite3.SQLITE_AUTH):
        return f"{path} cannot be opened ({detail}); check the owner and mode of it and of {root}"
    return f"{path} cannot be used ({detail}); if it is damaged, {REBUILD}"


def describe_os_error(cfg: Config, exc: OSError) -> str:
    """One line for a file system error at start."""
    name = exc.filename if isinstance(exc.filename, str) else ""
    where = name or cfg.root
    what = exc.strerror or str(exc)
    under = cfg.state if name.startswith(cfg.state) else cfg.root
    flag = "--state" if under == cfg.state else "--root"
    if exc.errno == errno.EROFS:
        return f"{where}: {under} is on a read-only file system; remount it read-write or give another {flag}"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{where}: no space left on the file system of {under}; free some space and start tugd again"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"{where}: permission denied; tugd runs as root: check the owner and mode of {under}"
    return f"{where}: {what}; check {under} (tugd's {flag})"


@contextlib.contextmanager
def startup_errors(cfg: Config) -> Iterator[None]:
    """Turn a file system or SQLite error of the start into a :class:`StartupError`."""
    try:
        yield
    except StartupError:
        raise
    except OSError as exc:
        raise StartupError(describe_os_error(cfg, exc)) from exc
    except sqlite3.Error as exc:
        raise StartupError(describe_sqlite_error(cfg.db_path, exc)) from exc
    except TugError:
        raise  # a setting only the store can check (--default-network): said by __main__
    except UnicodeDecodeError as exc:  # a ValueError: first
        raise StartupError(f"{cfg.db_path} is damaged (a record does not decode: {exc}); {REBUILD}") from exc
    except json.JSONDecodeError as exc:
        raise StartupError(f"{cfg.db_path} is damaged (a record is not JSON: {exc}); {REBUILD}") from exc
    except Exception as exc:
        log.debug("start failed", exc_info=True)
        raise StartupError(
            f"cannot start: {type(exc).__name__}: {exc} (a bug: --log-level debug shows where)"
        ) from exc


KINDS = {ondisk.CONTAINER: "container", ondisk.IMAGE: "image", ondisk.NETWORK: "network", ondisk.POD: "pod"}


def _found(counts: dict[str, int]) -> str:
    parts = [f"{n} {what}{'' if n == 1 else 's'}" for what, n in counts.items() if n]
    return ", ".join(parts)


def on_disk(layout: ondisk.Layout) -> dict[str, set[str]]:
    """The keys of the records on disk: container, image, network and pod ids."""
    return {
        "container": set(layout.container_ids()),
        "image": set(layout.image_ids()),
        "network": set(layout.network_ids()),
        "pod": set(layout.pod_ids()),
    }


def open_store(cfg: Config) -> Store:
    """Open and check the store (see the module's doc); raises :class:`StartupError`."""
    path = cfg.db_path
    layout = ondisk.Layout(cfg.root)
    disk = on_disk(layout)
    if not os.path.exists(path):
        counts = {w: len(keys) for w, keys in disk.items()}
        if any(counts.values()):
            raise StartupError(f"{path} is missing but {cfg.root} holds {_found(counts)}; {REBUILD}")
    elif not os.access(path, os.R_OK | os.W_OK):
        raise StartupError(
            f"{path} cannot be opened (permission denied); check its owner and mode (tugd runs as root)"
        )
    t0 = time.monotonic()
    store: Store | None = None
    try:
        store = Store(path, ondisk.Mirror(layout))
        result = store.quick_check()
        if result != "ok":
            raise StartupError(f"{path} is damaged ({result}); {REBUILD}")
        known = {
            "container": {r[0] for r in sqlite3.Connection.execute(store.db, "SELECT id FROM containers")},
            "image": {r[0] for r in sqlite3.Connection.execute(store.db, "SELECT id FROM images")},
            "network": set(),
            "pod": set(),
        }
        tables = {r[0] for r in sqlite3.Connection.execute(store.db, "SELECT name FROM sqlite_master")}
        if "networks" in tables:
            known["network"] = {r[0] for r in sqlite3.Connection.execute(store.db, "SELECT id FROM networks")}
        if "pods" in tables:
            known["pod"] = {r[0] for r in sqlite3.Connection.execute(store.db, "SELECT id FROM pods")}
    except sqlite3.Error as exc:
        if store is not None:
            store.close()
        raise StartupError(describe_sqlite_error(path, exc)) from exc
    except BaseException:
        if store is not None:
            store.close()
        raise
    # Records written after the store's last change (it went back in time), or unreadable ones
    # the store does not know: refuse. Records of rows the store removed: leftovers.
    generation = store.generation()
    newer = dict.fromkeys(disk, 0)
    leftovers: list[str] = []
    for kind, key, record, obj in layout.records():
        what = {
            ondisk.CONTAINER: "container",
            ondisk.IMAGE: "image",
            ondisk.NETWORK: "network",
            ondisk.POD: "pod",
        }[kind]
        gen = ondisk.generation_of(obj)
        if (key not in known[what]) if gen is None else (gen > generation):
            newer[what] += 1
        elif key not in known[what]:
            leftovers.append(record)
    if any(newer.values()):
        store.close()
        raise StartupError(
            f"{path} is older than what is on disk ({_found(newer)} changed after its last write: "
            f"a lost -wal file or a torn write?); {REBUILD}"
        )
    for record in leftovers:  # tugd was killed between a removal and the removal of its record
        with contextlib.suppress(FileNotFoundError):
            os.unlink(record)
    store.check_result = "ok"
    store.check_ms = (time.monotonic() - t0) * 1000
    return store
