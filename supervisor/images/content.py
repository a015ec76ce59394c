"""The content store: blobs named by their digest, verified on write and on read, and the leases
that keep what an ingest in flight holds safe from garbage collection.

Blobs are ``blobs/sha256/<hex>``. A :class:`BlobWriter` writes to a hidden temp file, hashing as
the bytes come, and :meth:`BlobWriter.commit` checks size and digest before the blob gets its
name; a corrupt blob is :class:`CorruptBlob`, never stored, never used.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import time
from collections import Counter
from collections.abc import Iterator
from typing import IO, Any

from tugwire import fsutil, imageref
from tugwire.errors import FailedPrecondition, InvalidArgument, NotFound

CHUNK = 1 << 20


class CorruptBlob(InvalidArgument):
    """A blob whose bytes do not match its digest (or size): never stored, never used."""


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check_digest(digest: object) -> str:
    """``sha256:<64 hex>`` or InvalidArgument (a digest reaches a path)."""
    if not isinstance(digest, str) or not imageref.is_digest(digest):
        raise InvalidArgument(f"invalid digest {digest!r}", field="digest")
    return digest


_tmp_counter = itertools.count()


def tmp_name(directory: str, prefix: str) -> str:
    return os.path.join(directory, f"{prefix}{os.getpid()}-{next(_tmp_counter)}-{time.monotonic_ns()}")


class BlobWriter:
    """One blob on its way into the store (from :meth:`ContentStore.writer`): bytes go to a hidden
    temp file, hashed as they come; :meth:`commit` checks size and digest and only then gives the
    blob its name. A mismatch is :class:`CorruptBlob` and leaves nothing behind."""

    def __init__(self, store: ContentStore, desc: dict[str, Any]) -> None:
        self.digest = check_digest(desc.get("digest"))
        size = desc.get("size")
        self.expected_size: int | None = size if isinstance(size, int) and size >= 0 else None
        self._store = store
        self._hash = hashlib.sha256()
        self.written = 0
        self._tmp = tmp_name(store.dir, ".in-")
        self._file: IO[bytes] | None = open(self._tmp, "wb")  # noqa: SIM115 - closed by commit/abort

    async def write(self, data: bytes) -> None:
        """Append ``data`` (a write to the page cache: no thread hop, measured cheaper)."""
        if self._file is None:
            raise FailedPrecondition(f"blob writer for {self.digest} is closed")
        self.written += len(data)
        if self.expected_size is not None and self.written > self.expected_size:
            self.abort()
            raise CorruptBlob(
                f"blob {self.digest} is larger than its descriptor's {self.expected_size} bytes"
            )
        self._hash.update(data)
        self._file.write(data)

    def commit(self) -> str:
        """Verify and name the blob; returns its digest."""
        if self._file is None:
            raise FailedPrecondition(f"blob writer for {self.digest} is closed")
        try:
            if self.expected_size is not None and self.written != self.expected_size:
                raise CorruptBlob(
                    f"blob {self.digest} has {self.written} bytes, its descriptor says {self.expected_size}"
                )
            got = "sha256:" + self._hash.hexdigest()
            if got != self.digest:
                raise CorruptBlob(f"blob {self.digest} is corrupt: its content hashes to {got}")
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
            os.rename(self._tmp, self._store.path(self.digest))
            return self.digest
        finally:
            self.abort()

    def abort(self) -> None:
        """Drop whatever was written (idempotent)."""
        if self._file is not None:
            with contextlib.suppress(OSError):  # a full disk fails the close's flush too
                self._file.close()
            self._file = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)


class ContentStore:
    """``blobs/sha256/<hex>``: written through a temp file, renamed once the digest is known."""

    def __init__(self, directory: str) -> None:
        self.dir = directory
        os.makedirs(directory, mode=0o700, exist_ok=True)

    def path(self, digest: str) -> str:
        algo, _, hexd = digest.partition(":")
        if algo != "sha256" or len(hexd) != 64 or not all(c in "0123456789abcdef" for c in hexd):
            raise InvalidArgument(f"invalid digest {digest!r}")
        return os.path.join(self.dir, hexd)

    def has(self, digest: str) -> bool:
        return os.path.exists(self.path(digest))

    def writer(self, desc: dict[str, Any]) -> BlobWriter:
        """A writer for the blob ``desc`` names (``digest`` and, if known, ``size``)."""
        return BlobWriter(self, desc)

    def put_bytes(self, data: bytes) -> str:
        digest = sha256_digest(data)
        if not os.path.exists(self.path(digest)):
            tmp = tmp_name(self.dir, ".in-")
            try:
                with open(tmp, "wb") as out:
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
                os.rename(tmp, self.path(digest))
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        return digest

    def put_stream(self, src: IO[bytes]) -> tuple[str, int]:
        """Copy a stream into the store; returns (digest, size)."""
        h = hashlib.sha256()
        tmp = tmp_name(self.dir, ".in-")
        size = 0
        try:
            with open(tmp, "wb") as out:
                while chunk := src.read(CHUNK):
                    h.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            digest = "sha256:" + h.hexdigest()
            os.rename(tmp, self.path(digest))
            fsutil.fsync_dir(self.dir)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return digest, size

    def read_verified(self, digest: str) -> bytes:
        try:
            with open(self.path(digest), "rb") as f:
                data = f.read()
        except FileNotFoundError as exc:
            raise NotFound(f"blob {digest} is missing from the content store") from exc
        if sha256_digest(data) != digest:
            raise CorruptBlob(f"blob {digest} is corrupt (its content does not match its digest)")
        return data

    def verify_file(self, digest: str) -> None:
        h = hashlib.sha256()
        try:
            with open(self.path(digest), "rb") as f:
                while chunk := f.read(CHUNK):
                    h.update(chunk)
        except FileNotFoundError as exc:
            raise NotFound(f"blob {digest} is missing from the content store") from exc
        if "sha256:" + h.hexdigest() != digest:
            raise CorruptBlob(f"blob {digest} is corrupt (its content does not match its digest)")

    def delete(self, digest: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(digest))

    def digests(self) -> list[str]:
        """Every blob in the store (temp files, whose names start with a dot, excluded)."""
        return ["sha256:" + n for n in os.listdir(self.dir) if not n.startswith(".")]


class Lease:
    """The keys (blob digests, chain ids) one ingest holds."""

    def __init__(self, held: Counter[str]) -> None:
        self._held = held
        self.keys: set[str] = set()

    def add(self, key: str) -> None:
        if key not in self.keys:
            self.keys.add(key)
            self._held[key] += 1

    def release(self) -> None:
        for key in self.keys:
            self._held[key] -= 1
            if self._held[key] <= 0:
                del self._held[key]
        self.keys.clear()


class Leases:
    """Blobs and snapshots held by ingests in flight: garbage collection leaves them alone."""

    def __init__(self) -> None:
        self.held: Counter[str] = Counter()
        self.active = 0

    @contextlib.contextmanager
    def hold(self) -> Iterator[Lease]:
        lease = Lease(self.held)
        self.active += 1
        try:
            yield lease
        finally:
            self.active -= 1
            lease.release()

    def __contains__(self, key: object) -> bool:
        return key in self.held
