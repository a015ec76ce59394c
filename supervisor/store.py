"""The metadata store: SQLite (stdlib ``sqlite3``) in WAL mode, one file under the data root.

Disk is the truth; memory is a cache. Calls are short (well under a millisecond) and run on the
event loop's thread: measured, they cost less than a hop to a worker thread would.
``synchronous=NORMAL`` in WAL mode survives a crash of tugd (the case that matters here: ``kill
-9``); only a power loss may take the last transactions.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from tugwire.errors import AlreadyExists

from .records import ContainerSettings, RunState, State

if TYPE_CHECKING:
    from .ondisk import Mirror

SCHEMA = """
CREATE TABLE IF NOT EXISTS containers (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    image TEXT NOT NULL,
    image_id TEXT NOT NULL,
    created_at TEXT NOT NULL,
    config TEXT NOT NULL,
    state TEXT NOT NULL,
    pid INTEGER NOT NULL DEFAULT 0,
    exit_code INTEGER,
    exit_signal TEXT,
    oom_killed INTEGER NOT NULL DEFAULT 0,
    started_at TEXT,
    finished_at TEXT,
    reason TEXT NOT NULL DEFAULT '',
    shim_pid INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS images (
    id TEXT PRIMARY KEY,
    digest TEXT NOT NULL,
    manifest TEXT NOT NULL,
    config TEXT NOT NULL,
    size INTEGER NOT NULL,
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS image_names (
    name TEXT PRIMARY KEY,
    image_id TEXT NOT NULL REFERENCES images(id)
);
CREATE TABLE IF NOT EXISTS image_repo_digests (
    name TEXT PRIMARY KEY,
    image_id TEXT NOT NULL REFERENCES images(id)
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    time_ns INTEGER NOT NULL,
    type TEXT NOT NULL,
    action TEXT NOT NULL,
    id TEXT NOT NULL,
    name TEXT NOT NULL,
    image TEXT NOT NULL,
    attributes TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_time ON events (time_ns);
CREATE TABLE IF NOT EXISTS store_generation (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    n INTEGER NOT NULL
);
INSERT OR IGNORE INTO store_generation (id, n) VALUES (0, 0);
"""

# What the events table keeps: every event of the last day, and always at least the last
# EVENTS_KEEP (so a quiet host still has history), but never more than EVENTS_CAP rows (so a host
# that churns containers cannot grow the database without bound).
EVENTS_KEEP = 10_000
EVENTS_MAX_AGE_NS = 24 * 3600 * 1_000_000_000
EVENTS_CAP = 200_000  # about 30 MB


# A container's runtime state that is stored inside its ``config`` JSON (where it always was, so
# that the database, the records on disk and ``tugd --rebuild-store`` read it as before), but is
# not a setting of the user's: each is a field of its RunState.
RUNTIME_KEYS = ("restart_count", "stopped_by_user", "log_dropped_bytes")


@dataclass
class ContainerRecord:
    """A container as the store keeps it: who it is (id, name, image, created_at), the user's
    ``settings`` (typed and frozen: they change only as a whole), and apart from them its
    runtime state ``run``, which the lifecycle changes."""

    id: str
    name: str
    image: str
    image_id: str
    created_at: str
    settings: ContainerSettings
    run: RunState

    def stored_config(self) -> dict[str, Any]:
        """The ``config`` column (and what ``container.inspect`` shows as ``config``): the
        settings, with the runtime values that are not at their defaults."""
        out = self.settings.to_json()
        for key in RUNTIME_KEYS:
            value = getattr(self.run, key)
            if value:
                out[key] = value
        return out

    def row(self) -> dict[str, Any]:
        d: dict[str, Any] = {name: getattr(self, name) for name in _IDENTITY}
        d.update((name, getattr(self.run, name)) for name in _RUN_COLUMNS)
        d["config"] = json.dumps(self.stored_config())
        d["state"] = str(self.run.state)
        d["oom_killed"] = int(self.run.oom_killed)
        return d

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> ContainerRecord:
        """A record from its row, as any tugd wrote it (the runtime keys inside ``config``)."""
        d = dict(row)
        d["config"] = json.loads(d["config"])
        return cls.from_json(d)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ContainerRecord:
        """A record from its row with ``config`` decoded (as the records on disk hold it; see
        supervisor/ondisk.py): TypeError, ValueError or KeyError if it is not one."""
        config = dict(d["config"])
        get = d.get
        run = RunState(
            state=State(d["state"]),
            pid=get("pid", 0),
            exit_code=get("exit_code"),
            exit_signal=get("exit_signal"),
            oom_killed=bool(get("oom_killed")),
            started_at=get("started_at"),
            finished_at=get("finished_at"),
            reason=get("reason", ""),
            shim_pid=get("shim_pid", 0),
            restart_count=int(config.pop("restart_count", None) or 0),
            stopped_by_user=bool(config.pop("stopped_by_user", None) or False),
            log_dropped_bytes=int(config.pop("log_dropped_bytes", None) or 0),
        )
        return cls(
            d["id"],
            d["name"],
            d["image"],
            d["image_id"],
            d["created_at"],
            ContainerSettings.from_json(config),
            run,
        )


_IDENTITY = ("id", "name", "image", "image_id", "created_at")
_RUN_COLUMNS = tuple(f.name for f in fields(RunState) if f.name not in RUNTIME_KEYS)


@dataclass(frozen=True)
class EventRow:
    """One stored event, as :meth:`Store.events_after` returns it."""

    seq: int
    time_ns: int
    type: str
    action: str
    id: str
    name: str
    image: str
    attributes: dict[str, Any]


@dataclass
class ImageRecord:
    id: str  # sha256:<config digest>
    digest: str  # sha256:<manifest digest>
    manifest: dict[str, Any]
    config: dict[str, Any]
    size: int
    created: str
    names: list[str] = field(default_factory=list)
    repo_digests: list[str] = field(default_factory=list)


_CONTAINER_COLS = [*_IDENTITY, *_RUN_COLUMNS, "config"]


class Store:
    """The metadata store. With a ``mirror`` (supervisor/ondisk.py), every committed change of a
    container, image or network is also written to a file beside what it describes, so that
    ``tugd --rebuild-store`` can make the database again from disk (docs/design.md, "Store and
    rebuild"). Opening checks nothing: supervisor/storecheck.py opens and checks it at start."""

    def __init__(self, path: str, mirror: Mirror | None = None) -> None:
        self.path = path
        self.mirror = mirror
        self.check_result = "not checked"  # set by storecheck.open_store at start
        self.check_ms = 0.0
        self.rebuilt = False  # made again by --rebuild-store at this start
        self.rebuilt_from = ""  # the damaged file it set aside ("" if there was none)
        if mirror is not None:
            self.db = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, factory=mirror.connection_class()
            )
        else:
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.executescript(SCHEMA)

    def generation(self) -> int:
        """How many changes of mirrored rows the store has committed (supervisor/ondisk.py): each
        record on disk carries the generation it was written at, so a store that went back in
        time (a lost WAL) is seen at start."""
        return int(self.db.execute("SELECT n FROM store_generation").fetchone()[0])

    def set_generation(self, n: int) -> None:
        self.db.execute("UPDATE store_generation SET n=?", (n,))

    def quick_check(self) -> str:
        """SQLite's ``PRAGMA quick_check`` (every page and index walked, rows not matched to
        their index entries: linear in the file's size; measured on the loaded 2-core test
        machine, 2-18 ms for 2.2 MB, 170-360 ms for 29 MB, the events table's cap): "ok", or
        the first problem it found."""
        rows = self.db.execute("PRAGMA quick_check(1)").fetchall()
        # The walk filled the connection's page cache (up to cache_size, 2 MB by default) with
        # pages tugd may never read again: let them go (read again from the OS's cache if needed).
        self.db.execute("PRAGMA shrink_memory")
        if not rows:
            return "ok"
        # One line: SQLite's report may span several ("*** in database main ***\nPage 5: ...").
        text = " ".join(str(rows[0][0]).replace("*** in database main ***", "").split())
        return text if len(text) <= 160 else text[:157] + "..."

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # ----------------------------------------------------------------------------- containers

    def insert_container(self, rec: ContainerRecord) -> None:
        """Record a new container; :class:`AlreadyExists` if its name (or id) is taken."""
        row = rec.row()
        cols = ",".join(_CONTAINER_COLS)
        marks = ",".join(f":{c}" for c in _CONTAINER_COLS)
        try:
            self.db.execute(f"INSERT INTO containers ({cols}) VALUES ({marks})", row)
        except sqlite3.IntegrityError:
            raise AlreadyExists(f"the container name {rec.name!r} is already in use", field="name") from None

    def update_container(self, rec: ContainerRecord) -> None:
        """Write back a container; :class:`AlreadyExists` if it was renamed to a name taken."""
        row = rec.row()
        sets = ",".join(f"{c}=:{c}" for c in _CONTAINER_COLS if c != "id")
        try:
            self.db.execute(f"UPDATE containers SET {sets} WHERE id=:id", row)
        except sqlite3.IntegrityError:
            raise AlreadyExists(f"the container name {rec.name!r} is already in use", field="name") from None

    def delete_container(self, cid: str) -> None:
        self.db.execute("DELETE FROM containers WHERE id=?", (cid,))

    def get_container(self, cid: str) -> ContainerRecord | None:
        row = self.db.execute("SELECT * FROM containers WHERE id=?", (cid,)).fetchone()
        return ContainerRecord.from_row(row) if row else None

    def find_containers(self, ref: str) -> list[ContainerRecord]:
        """By exact name, exact id, or id prefix (in that order of preference)."""
        rows = self.db.execute("SELECT * FROM containers WHERE name=? OR id=?", (ref, ref)).fetchall()
        if not rows and ref and all(c in "0123456789abcdef" for c in ref):
            rows = self.db.execute(
                "SELECT * FROM containers WHERE id >= ? AND id < ?", (ref, ref + "g")
            ).fetchall()
        return [ContainerRecord.from_row(r) for r in rows]

    def list_containers(self) -> list[ContainerRecord]:
        rows = self.db.execute("SELECT * FROM containers ORDER BY created_at DESC, id").fetchall()
        return [ContainerRecord.from_row(r) for r in rows]

    def container_counts(self) -> dict[str, int]:
        """Containers per state, counted by SQLite: ``system.info`` is called often (health
        probes, dashboards) and must not decode every record's config to count them."""
        return {r[0]: r[1] for r in self.db.execute("SELECT state, COUNT(*) FROM containers GROUP BY state")}

    def image_count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM images").fetchone()[0])

    def name_taken(self, name: str) -> bool:
        return self.db.execute("SELECT 1 FROM containers WHERE name=?", (name,)).fetchone() is not None

    def containers_using_image(self, image_id: str) -> list[str]:
        """The containers of ``image_id``, and those with it as an image volume (its id in their
        settings: a full digest, found nowhere else)."""
        rows = self.db.execute(
            "SELECT name FROM containers WHERE image_id=? OR instr(config, ?) > 0", (image_id, image_id)
        )
        return [r[0] for r in rows]

    # --------------------------------------------------------------------------------- images

    def put_image(self, rec: ImageRecord) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO images (id, digest, manifest, config, size, created) "
            "VALUES (?,?,?,?,?,?)",
            (rec.id, rec.digest, json.dumps(rec.manifest), json.dumps(rec.config), rec.size, rec.created),
        )

    def set_name(self, name: str, image_id: str) -> str | None:
        """Point ``name`` at ``image_id``; returns the image it pointed at before."""
        row = self.db.execute("SELECT image_id FROM image_names WHERE name=?", (name,)).fetchone()
        self.db.execute("INSERT OR REPLACE INTO image_names (name, image_id) VALUES (?,?)", (name, image_id))
        return row[0] if row else None

    def remove_name(self, name: str) -> None:
        self.db.execute("DELETE FROM image_names WHERE name=?", (name,))

    def resolve_name(self, name: str) -> str | None:
        row = self.db.execute("SELECT image_id FROM image_names WHERE name=?", (name,)).fetchone()
        return row[0] if row else None

    def get_image(self, image_id: str) -> ImageRecord | None:
        row = self.db.execute("SELECT * FROM images WHERE id=?", (image_id,)).fetchone()
        if row is None:
            return None
        names = [
            r[0]
            for r in self.db.execute(
                "SELECT name FROM image_names WHERE image_id=? ORDER BY name", (image_id,)
            )
        ]
        return ImageRecord(
            id=row["id"],
            digest=row["digest"],
            manifest=json.loads(row["manifest"]),
            config=json.loads(row["config"]),
            size=row["size"],
            created=row["created"],
            names=names,
        )

    def find_images_by_prefix(self, prefix: str) -> list[str]:
        rows = self.db.execute(
            "SELECT id FROM images WHERE id >= ? AND id < ?", (prefix, prefix + "g")
        ).fetchall()
        return [r[0] for r in rows]

    def list_images(self) -> list[ImageRecord]:
        ids = [r[0] for r in self.db.execute("SELECT id FROM images ORDER BY created DESC")]
        return [img for i in ids if (img := self.get_image(i)) is not None]

    def image_names(self, image_id: str) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT name FROM image_names WHERE image_id=?", (image_id,))]

    def delete_image(self, image_id: str) -> None:
        self.db.execute("DELETE FROM image_names WHERE image_id=?", (image_id,))
        self.db.execute("DELETE FROM image_repo_digests WHERE image_id=?", (image_id,))
        self.db.execute("DELETE FROM images WHERE id=?", (image_id,))

    def set_repo_digest(self, name: str, image_id: str) -> None:
        """Record ``repo@sha256:...`` (the digest a registry knows the image by) for an image."""
        self.db.execute(
            "INSERT OR REPLACE INTO image_repo_digests (name, image_id) VALUES (?,?)", (name, image_id)
        )

    def repo_digests(self, image_id: str) -> list[str]:
        rows = self.db.execute(
            "SELECT name FROM image_repo_digests WHERE image_id=? ORDER BY name", (image_id,)
        )
        return [r[0] for r in rows]

    def resolve_repo_digest(self, name: str) -> str | None:
        row = self.db.execute("SELECT image_id FROM image_repo_digests WHERE name=?", (name,)).fetchone()
        return row[0] if row else None

    def all_layer_digests(self) -> set[str]:
        out: set[str] = set()
        for (manifest,) in self.db.execute("SELECT manifest FROM images"):
            m = json.loads(manifest)
            out.update(layer["digest"] for layer in m.get("layers", []))
            out.add(m["config"]["digest"])
        return out

    # --------------------------------------------------------------------------------- events

    def append_event(
        self,
        time_ns: int,
        type_: str,
        action: str,
        id_: str,
        name: str,
        image: str,
        attributes: dict[str, Any],
    ) -> int:
        """Store one event (one INSERT in autocommit: no fsync with WAL and synchronous=NORMAL);
        returns its sequence number, which orders every event."""
        cur = self.db.execute(
            "INSERT INTO events (time_ns, type, action, id, name, image, attributes) VALUES (?,?,?,?,?,?,?)",
            (time_ns, type_, action, id_, name, image, json.dumps(attributes, separators=(",", ":"))),
        )
        return int(cur.lastrowid or 0)

    def events_after(
        self, seq: int, *, since_ns: int = 0, until_ns: int | None = None, limit: int = 1000
    ) -> list[EventRow]:
        """Up to ``limit`` stored events with a sequence number above ``seq`` and a time within
        [since_ns, until_ns], in sequence order."""
        sql = "SELECT * FROM events WHERE seq > ? AND time_ns >= ?"
        args: list[Any] = [seq, since_ns]
        if until_ns is not None:
            sql += " AND time_ns <= ?"
            args.append(until_ns)
        sql += " ORDER BY seq LIMIT ?"
        args.append(limit)
        return [
            EventRow(
                seq=r["seq"],
                time_ns=r["time_ns"],
                type=r["type"],
                action=r["action"],
                id=r["id"],
                name=r["name"],
                image=r["image"],
                attributes=json.loads(r["attributes"]),
            )
            for r in self.db.execute(sql, args)
        ]

    def first_event_seq_since(self, since_ns: int) -> int | None:
        """The sequence number of the first stored event at or after ``since_ns`` (by the time
        index, so that a replay from a recent time does not walk the whole table)."""
        row = self.db.execute("SELECT min(seq) FROM events WHERE time_ns >= ?", (since_ns,)).fetchone()
        return None if row[0] is None else int(row[0])

    def last_event_seq(self) -> int:
        row = self.db.execute("SELECT max(seq) FROM events").fetchone()
        return int(row[0] or 0)

    def prune_events(
        self,
        now_ns: int,
        *,
        keep: int = EVENTS_KEEP,
        max_age_ns: int = EVENTS_MAX_AGE_NS,
        cap: int = EVENTS_CAP,
    ) -> int:
        """Delete the events that are neither among the last ``keep`` nor younger than
        ``max_age_ns``, and any beyond the last ``cap``; returns how many went."""
        last = self.last_event_seq()
        cur = self.db.execute(
            "DELETE FROM events WHERE (seq <= ? AND time_ns < ?) OR seq <= ?",
            (last - keep, now_ns - max_age_ns, last - cap),
        )
        return cur.rowcount

    def count_events(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM events").fetchone()[0])

    def count_images(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM images").fetchone()[0])

    def container_states(self) -> dict[str, int]:
        """How many containers are in each state (cheap: no configs are read)."""
        rows = self.db.execute("SELECT state, count(*) FROM containers GROUP BY state")
        return {r[0]: int(r[1]) for r in rows}
