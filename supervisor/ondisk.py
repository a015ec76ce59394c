"""What the store holds, also on disk: one small JSON file per container, image, network and pod.

The SQLite file is fast to query but it is one file: a few bad sectors or a lost ``-wal`` and it
is gone. Most of what it describes is on disk already (container bundles and logs, the shims' exit
records, the content store); what only the database held (a container's settings, state, exit code
and restart count; an image's names and tags; a network's definition and each container's address
on it; a pod's record and its address) is written here too, so that ``tugd --rebuild-store``
(supervisor/rebuild.py) can make the database again and lose nothing a user named or ran. The
event history is not kept here: a rebuild loses it.

    <root>/containers/<id>/record.json   the container's row and its endpoints (addresses)
    <root>/meta/images/<hex>.json        an image: manifest digest, size, created, names, repo digests
    <root>/meta/networks/<id>.json       a network's row
    <root>/meta/pods/<id>.json           a pod's row and its endpoint (its address on the pod network)

How the files follow the database without a hook in every writer: the store's connection gets
temporary triggers (they live in this connection only, never in the file) that call
:meth:`Mirror.dirty` with the key of each row a statement changes, and count the change in the
store's ``store_generation`` (in the same transaction); when the connection leaves a
transaction (autocommit statements, ``COMMIT``, ``ROLLBACK``), :meth:`Mirror.flush` writes the
*current* rows of those keys (or removes the file of a row that is gone). A rolled back change thus
writes the old row again: the files never hold what the database did not commit. Each file is
written atomically (temp file, rename). A file that cannot be written (a full disk) stays dirty and
is written again at the next flush; :meth:`Mirror.behind` counts them (``tug system info``).

Each file carries the store's generation when it was written (``gen``). A file whose generation is
above the store's was written after changes the store no longer has (its WAL lost, a torn
write): supervisor/storecheck.py refuses to start on it. A file whose row is gone and whose
generation the store has passed is a removal whose file tugd did not get to delete (killed in
between): it is removed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from tugwire import fsutil, names

log = logging.getLogger("tugboat.ondisk")

VERSION = 1
RECORD = "record.json"
CONTAINER, IMAGE, NETWORK, POD = "c", "i", "n", "p"

# (table, key kind, the column that names the key), for the triggers.
_WATCHED = [
    ("containers", CONTAINER, "id"),
    ("endpoints", CONTAINER, "container_id"),
    ("images", IMAGE, "id"),
    ("image_names", IMAGE, "image_id"),
    ("image_repo_digests", IMAGE, "image_id"),
    ("networks", NETWORK, "id"),
    ("pods", POD, "id"),
    ("endpoints", POD, "container_id"),  # a pod's address: its endpoint is keyed by the pod's id
]


def _write(path: str, obj: dict[str, Any], durable: bool) -> None:
    data = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    fsutil.write_atomic(path, data, mode=0o600, durable=durable)  # no temp file left on a failure


def generation_of(obj: dict[str, Any] | None) -> int | None:
    """The store generation a record was written at (None: unreadable)."""
    gen = obj.get("gen") if obj else None
    return gen if isinstance(gen, int) else None


def _payload(obj: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if obj is None else {k: v for k, v in obj.items() if k != "gen"}


def _read(path: str) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as f:
            obj = json.loads(f.read())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) and obj.get("version") == VERSION else None


def _tables(db: sqlite3.Connection) -> set[str]:
    return {r[0] for r in sqlite3.Connection.execute(db, "SELECT name FROM sqlite_master WHERE type='table'")}


@dataclass
class Layout:
    """Where the files are, under the data root."""

    root: str

    @property
    def containers_dir(self) -> str:
        return os.path.join(self.root, "containers")

    @property
    def images_dir(self) -> str:
        return os.path.join(self.root, "meta", "images")

    @property
    def networks_dir(self) -> str:
        return os.path.join(self.root, "meta", "networks")

    @property
    def pods_dir(self) -> str:
        return os.path.join(self.root, "meta", "pods")

    def container(self, cid: str) -> str:
        return os.path.join(self.containers_dir, cid, RECORD)

    def image(self, image_id: str) -> str:
        return os.path.join(self.images_dir, (image_id.partition(":")[2] or image_id) + ".json")

    def network(self, nid: str) -> str:
        return os.path.join(self.networks_dir, nid + ".json")

    def pod(self, pid: str) -> str:
        return os.path.join(self.pods_dir, pid + ".json")

    # ------------------------------------------------------------------ reading it back

    def container_ids(self) -> list[str]:
        """Ids of the containers whose directory holds a record (not those being removed)."""
        found = fsutil.listdir(self.containers_dir)
        return [e for e in found if names.is_id(e) and os.path.exists(self.container(e))]

    def image_ids(self) -> list[str]:
        found = fsutil.listdir(self.images_dir)
        return ["sha256:" + e[:-5] for e in found if e.endswith(".json") and not e.startswith(".")]

    def network_ids(self) -> list[str]:
        return [e[:-5] for e in fsutil.listdir(self.networks_dir, hidden=False) if e.endswith(".json")]

    def pod_ids(self) -> list[str]:
        return [e[:-5] for e in fsutil.listdir(self.pods_dir, hidden=False) if e.endswith(".json")]

    def pods(self) -> Iterator[tuple[str, dict[str, Any] | None]]:
        for pid in self.pod_ids():
            yield pid, _read(self.pod(pid))

    def containers(self) -> Iterator[tuple[str, dict[str, Any] | None]]:
        for cid in self.container_ids():
            yield cid, _read(self.container(cid))

    def images(self) -> Iterator[tuple[str, dict[str, Any] | None]]:
        for image_id in self.image_ids():
            yield image_id, _read(self.image(image_id))

    def networks(self) -> Iterator[tuple[str, dict[str, Any] | None]]:
        for nid in self.network_ids():
            yield nid, _read(self.network(nid))

    def records(self) -> Iterator[tuple[str, str, str, dict[str, Any] | None]]:
        """Every record on disk: (kind, key, path, content or None if unreadable)."""
        for cid, obj in self.containers():
            yield CONTAINER, cid, self.container(cid), obj
        for image_id, obj in self.images():
            yield IMAGE, image_id, self.image(image_id), obj
        for nid, obj in self.networks():
            yield NETWORK, nid, self.network(nid), obj
        for pid, obj in self.pods():
            yield POD, pid, self.pod(pid), obj


@dataclass
class Mirror:
    """Keeps the files of :class:`Layout` equal to the store's committed rows."""

    layout: Layout
    _dirty: set[tuple[str, str]] = field(default_factory=set)
    _failed: set[tuple[str, str]] = field(default_factory=set)
    last_error: str = ""

    @classmethod
    def for_root(cls, root: str) -> Mirror:
        return cls(Layout(root))

    def connection_class(self) -> type[sqlite3.Connection]:
        """A :class:`sqlite3.Connection` that flushes this mirror whenever it leaves a
        transaction (every statement in autocommit, and ``COMMIT``/``ROLLBACK``)."""
        mirror = self

        class MirroredConnection(sqlite3.Connection):
            def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
                cur = super().execute(sql, parameters)
                if mirror._dirty and not self.in_transaction:
                    mirror.flush(self)
                return cur

        return MirroredConnection

    def dirty(self, kind: str, key: str | None) -> None:
        """Called by the triggers for every row a statement inserts, updates or deletes."""
        if key:
            self._dirty.add((kind, key))

    def behind(self) -> int:
        """How many files could not be written (they are tried again at every flush)."""
        return len(self._failed)

    def attach(self, db: sqlite3.Connection) -> None:
        """Install the triggers on ``db`` (the tables must exist: after the network store made
        its own) and bring every file up to date with the database."""
        db.create_function("tug_dirty", 2, self.dirty, deterministic=False)
        # An INSERT OR REPLACE deletes the row it replaces: its DELETE triggers must fire too
        # (an image name that moves to another image dirties both).
        sqlite3.Connection.execute(db, "PRAGMA recursive_triggers=ON")
        present = _tables(db)
        for table, kind, col in _WATCHED:
            if table not in present:
                continue
            for event, row in (("INSERT", "NEW"), ("UPDATE", "NEW"), ("DELETE", "OLD")):
                extra = f" SELECT tug_dirty('{kind}', OLD.{col});" if event == "UPDATE" else ""
                sqlite3.Connection.execute(
                    db,
                    f"CREATE TEMP TRIGGER IF NOT EXISTS tug_mirror_{table}_{kind}_{event.lower()} "
                    f"AFTER {event} ON main.{table} BEGIN "
                    f"SELECT tug_dirty('{kind}', {row}.{col});{extra} "
                    "UPDATE store_generation SET n = n + 1; END",
                )
        self.sync(db)

    def sync(self, db: sqlite3.Connection) -> int:
        """Write every file that differs from its row (the first start after an upgrade writes
        them all); returns how many were written."""
        keys: set[tuple[str, str]] = set()
        present = _tables(db)
        for r in sqlite3.Connection.execute(db, "SELECT id FROM containers"):
            keys.add((CONTAINER, r[0]))
        for r in sqlite3.Connection.execute(db, "SELECT id FROM images"):
            keys.add((IMAGE, r[0]))
        if "networks" in present:
            for r in sqlite3.Connection.execute(db, "SELECT id FROM networks"):
                keys.add((NETWORK, r[0]))
        if "pods" in present:
            for r in sqlite3.Connection.execute(db, "SELECT id FROM pods"):
                keys.add((POD, r[0]))
        written = 0
        for kind, key in sorted(keys):
            path, obj = self._current(db, present, kind, key)
            if obj is not None and _payload(_read(path)) != obj:
                self._dirty.add((kind, key))
                written += 1
        if written:
            # Rows written without the triggers (before them: the built-in networks of a new
            # store, or every row at the first start with records) get a generation of their own,
            # above 0: a store emptied later is then seen to be older than them.
            sqlite3.Connection.execute(db, "UPDATE store_generation SET n = n + 1")
        self.flush(db)
        return written

    def flush(self, db: sqlite3.Connection) -> None:
        """Write the current row of every dirty key (or remove the file of a row that is gone).
        Never raises: a file that cannot be written is logged, counted and tried again later
        (the database, the truth, has committed already)."""
        pending = self._dirty | self._failed
        self._dirty = set()
        failed: set[tuple[str, str]] = set()
        errors: list[str] = []
        tables = _tables(db)
        gen = int(sqlite3.Connection.execute(db, "SELECT n FROM store_generation").fetchone()[0])
        for kind, key in sorted(pending):
            try:
                path, obj = self._current(db, tables, kind, key)
                if obj is None:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
                    continue
                directory = os.path.dirname(path)
                if kind == CONTAINER:
                    if not os.path.isdir(directory):
                        continue  # its bundle is being removed (or never was): nothing to describe
                    # Not fsynced: a container's record changes at every start and exit; the
                    # rename is atomic across a crash of tugd, and ext4 flushes the data of a
                    # file renamed over another before the rename (auto_da_alloc).
                    _write(path, {**obj, "gen": gen}, durable=False)
                else:
                    os.makedirs(directory, mode=0o700, exist_ok=True)
                    _write(path, {**obj, "gen": gen}, durable=True)
            except (OSError, sqlite3.Error) as exc:
                failed.add((kind, key))
                errors.append(f"{kind}:{key[:19]}: {exc}")
        if failed and failed != self._failed:
            log.warning(
                "could not write %d store records to disk (tried again later): %s", len(failed), errors[0]
            )
        self._failed = failed
        self.last_error = errors[0] if errors else ""

    def _current(
        self, db: sqlite3.Connection, tables: set[str], kind: str, key: str
    ) -> tuple[str, dict[str, Any] | None]:
        """The file of a key and what it must hold (None: the row is gone)."""
        q = sqlite3.Connection.execute
        if kind == CONTAINER:
            path = self.layout.container(key)
            row = q(db, "SELECT * FROM containers WHERE id=?", (key,)).fetchone()
            if row is None:
                return path, None
            rec = dict(row)
            rec["config"] = json.loads(rec["config"])
            rec["oom_killed"] = bool(rec["oom_killed"])
            eps = self._endpoints(db, tables, key)
            return path, {"version": VERSION, "container": rec, "endpoints": eps}
        if kind == IMAGE:
            path = self.layout.image(key)
            row = q(db, "SELECT id, digest, size, created FROM images WHERE id=?", (key,)).fetchone()
            if row is None:
                return path, None
            img = dict(row)
            for column, table in (("names", "image_names"), ("repo_digests", "image_repo_digests")):
                rows = q(db, f"SELECT name FROM {table} WHERE image_id=? ORDER BY name", (key,))
                img[column] = [r[0] for r in rows]
            return path, {"version": VERSION, "image": img}
        if kind == POD:
            path = self.layout.pod(key)
            row = q(db, "SELECT * FROM pods WHERE id=?", (key,)).fetchone() if "pods" in tables else None
            if row is None:
                return path, None
            pod = dict(row)
            pod["config"] = json.loads(pod["config"])
            return path, {"version": VERSION, "pod": pod, "endpoints": self._endpoints(db, tables, key)}
        path = self.layout.network(key)
        row = q(db, "SELECT * FROM networks WHERE id=?", (key,)).fetchone()
        if row is None:
            return path, None
        net = dict(row)
        net["labels"] = json.loads(net["labels"])
        net["internal"] = bool(net["internal"])
        return path, {"version": VERSION, "network": net}

    @staticmethod
    def _endpoints(db: sqlite3.Connection, tables: set[str], owner: str) -> list[dict[str, Any]]:
        """The endpoints (addresses) of a container or a pod."""
        eps: list[dict[str, Any]] = []
        if "endpoints" in tables:
            q = sqlite3.Connection.execute
            for e in q(db, "SELECT * FROM endpoints WHERE container_id=? ORDER BY idx", (owner,)):
                ep = dict(e)
                ep["aliases"] = json.loads(ep["aliases"])
                eps.append(ep)
        return eps
