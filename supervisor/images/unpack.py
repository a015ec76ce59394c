"""Layer unpacking: a layer blob read, hashed, gunzipped and hashed again in one pass
(:class:`Inflater`), and the tar extractor (:func:`unpack_tar`) that refuses every entry that
would write outside the layer's snapshot, turns whiteouts into what overlayfs reads, and refuses
tar bombs."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import stat
import tarfile
import zlib
from collections.abc import Generator
from typing import IO

from tugwire import fsutil
from tugwire.errors import InvalidArgument

from .content import CHUNK, CorruptBlob

log = logging.getLogger("supervisor.images")

_WHITEOUT = ".wh."
_OPAQUE = ".wh..wh..opq"
# Tar bombs: what one layer may unpack to (its files' bytes, its entries); above, it is refused.
MAX_LAYER_BYTES = 64 << 30
MAX_LAYER_ENTRIES = 2_000_000


class Inflater:
    """A layer blob as the tar parser reads it: read, hashed (the blob digest), gunzipped if it
    is gzip (zlib directly, 1 MiB at a time) and hashed again (the diff id), in one pass.
    Multi-member gzip and zero padding after the last member are read as gzip.GzipFile reads
    them. (Inflating in a thread of its own ahead of the parser was tried and measured slower
    on this 2-core host under load: docs/benchmarks.md.)"""

    def __init__(self, src: IO[bytes], digest: str) -> None:
        self._src = src
        self._digest = digest
        self._raw = hashlib.sha256()
        self._diff = hashlib.sha256()
        self._chunks = self._inflate()
        self._buf = b""
        self._pos = 0
        self._eof = False

    def _inflate(self) -> Generator[bytes, None, None]:
        chunk = self._src.read(CHUNK)
        inflate = zlib.decompressobj(wbits=31) if chunk[:2] == b"\x1f\x8b" else None
        try:
            while chunk:
                self._raw.update(chunk)
                if inflate is None:
                    out = chunk
                else:
                    out = inflate.decompress(chunk)
                    while inflate.eof:
                        rest = inflate.unused_data.lstrip(b"\0")
                        if not rest:
                            break
                        inflate = zlib.decompressobj(wbits=31)  # the next gzip member
                        out += inflate.decompress(rest)
                if out:
                    self._diff.update(out)
                    yield out
                chunk = self._src.read(CHUNK)
        except zlib.error as exc:
            raise CorruptBlob(f"layer {self._digest} is not a valid gzip stream: {exc}") from exc
        if inflate is not None and not inflate.eof:
            raise CorruptBlob(f"layer {self._digest} is a truncated gzip stream")

    def read(self, n: int = -1) -> bytes:
        parts: list[bytes] = []
        want = n
        while want != 0:
            if self._pos >= len(self._buf):
                if self._eof:
                    break
                item = next(self._chunks, None)
                if item is None:
                    self._eof = True
                    break
                self._buf, self._pos = item, 0
            end = len(self._buf) if want < 0 else min(len(self._buf), self._pos + want)
            parts.append(self._buf[self._pos : end])
            if want > 0:
                want -= end - self._pos
            self._pos = end
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def drain(self) -> None:
        while self.read(CHUNK):
            pass

    def close(self) -> None:
        self._chunks.close()

    def raw_digest(self) -> str:
        return "sha256:" + self._raw.hexdigest()

    def diff_digest(self) -> str:
        return "sha256:" + self._diff.hexdigest()


class UnsafeLayer(InvalidArgument):
    pass


def _safe_relpath(name: str) -> str:
    """The member's path relative to the root, or UnsafeLayer for one that would escape it."""
    if name.startswith("/"):
        raise UnsafeLayer(f"layer entry {name!r} has an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise UnsafeLayer(f"layer entry {name!r} escapes the root with '..'")
    return "/".join(parts)


def _check_parents(root: str, rel: str) -> None:
    """No directory on the way to an entry may be a symlink: writing through one could land
    outside the root."""
    path = root
    for part in rel.split("/")[:-1]:
        path = os.path.join(path, part)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            os.mkdir(path, 0o755)
            continue
        if stat.S_ISLNK(st.st_mode):
            raise UnsafeLayer(f"layer entry {rel!r} goes through the symlink {path[len(root) :]!r}")
        if not stat.S_ISDIR(st.st_mode):
            raise UnsafeLayer(f"layer entry {rel!r} goes through a non-directory")


def _find_in_lowers(lowers: list[str], rel: str) -> str | None:
    """The regular file ``rel`` as the layers below show it (top first), without following a
    symlink on the way; None if it is absent, whited out or not a regular file."""
    parts = rel.split("/")
    for lower in lowers:
        path = lower
        for i, part in enumerate(parts):
            path = os.path.join(path, part)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                break
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                return None  # a whiteout: gone from this layer down
            last = i == len(parts) - 1
            if last:
                return path if stat.S_ISREG(st.st_mode) else None
            if not stat.S_ISDIR(st.st_mode):
                return None
            with contextlib.suppress(OSError):
                if os.getxattr(path, "trusted.overlay.opaque") == b"y":
                    # below an opaque directory nothing of the lower layers shows
                    rest = os.path.join(path, *parts[i + 1 :])
                    return rest if os.path.isfile(rest) and not os.path.islink(rest) else None
    return None


def _set_xattrs(path: str, member: tarfile.TarInfo) -> None:
    for key, value in member.pax_headers.items():
        if key.startswith("SCHILY.xattr."):
            name = key[len("SCHILY.xattr.") :]
            if name.startswith("trusted.overlay."):
                continue  # only the unpacker sets overlay's own attributes
            try:
                os.setxattr(path, name, value.encode("utf-8", "surrogateescape"), follow_symlinks=False)
            except OSError as exc:
                log.debug("could not set xattr %s on %s: %s", name, path, exc)


def unpack_tar(
    src: IO[bytes],
    root: str,
    *,
    lowers: list[str] | None = None,
    max_bytes: int = MAX_LAYER_BYTES,
    max_entries: int = MAX_LAYER_ENTRIES,
) -> None:
    """Extract an uncompressed (or gzipped) layer tar under ``root``, the layer's own snapshot
    dir, refusing any entry that would write outside it. Whiteouts become what overlayfs reads
    in a lower dir: ``.wh.NAME`` a 0/0 character device, ``.wh..wh..opq`` the
    ``trusted.overlay.opaque=y`` attribute of its directory. A hard link to a file of a layer
    below (``lowers``, top first) gets a copy of it. Device nodes are skipped; ownership, modes
    (setuid and setgid bits too, as docker), times and extended attributes are kept. A layer of
    more than ``max_entries`` entries or ``max_bytes`` bytes of files is refused (a tar bomb)."""
    dirs: list[tuple[str, tarfile.TarInfo]] = []
    lowers = lowers or []
    entries = total = 0
    try:
        tf = tarfile.open(fileobj=src, mode="r|*")  # noqa: SIM115 - the with below closes it
    except tarfile.TarError as exc:
        raise InvalidArgument(f"not a tar archive: {exc}") from exc
    with tf:
        try:
            for member in tf:
                entries += 1
                total += member.size if member.isreg() else 0
                if entries > max_entries or total > max_bytes:
                    what = f"{max_entries} entries" if entries > max_entries else f"{max_bytes} bytes"
                    raise UnsafeLayer(f"layer unpacks to more than {what} (a tar bomb?)")
                rel = _safe_relpath(member.name)
                if not rel:
                    dirs.append((root, member))
                    continue
                _check_parents(root, rel)
                path = os.path.join(root, rel)
                base = os.path.basename(rel)
                if base.startswith(_WHITEOUT):
                    parent = os.path.dirname(path)
                    if base == _OPAQUE:
                        os.setxattr(parent, "trusted.overlay.opaque", b"y")
                    elif not base.startswith(_WHITEOUT + _WHITEOUT):  # .wh..wh.plnk etc: aufs only
                        hidden = os.path.join(parent, base[len(_WHITEOUT) :])
                        if base[len(_WHITEOUT) :] in ("", ".", ".."):
                            raise UnsafeLayer(f"layer entry {rel!r} is a whiteout of nothing")
                        fsutil.remove_path(hidden)
                        os.mknod(hidden, 0o600 | stat.S_IFCHR, os.makedev(0, 0))
                    continue
                if member.isdir():
                    if not os.path.isdir(path) or os.path.islink(path):
                        fsutil.remove_path(path)
                        os.mkdir(path, 0o755)
                    dirs.append((path, member))
                    continue
                fsutil.remove_path(path)
                if member.isreg():
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                    with os.fdopen(fd, "wb") as out:
                        data = tf.extractfile(member)
                        assert data is not None
                        while chunk := data.read(CHUNK):
                            out.write(chunk)
                        os.fchown(out.fileno(), member.uid, member.gid)
                        os.fchmod(out.fileno(), member.mode & 0o7777)
                elif member.issym():
                    os.symlink(member.linkname, path)
                    os.lchown(path, member.uid, member.gid)
                elif member.islnk():
                    target = _safe_relpath(member.linkname)
                    if not target:
                        raise UnsafeLayer(f"hard link {rel!r} points to the root")
                    _check_parents(root, target)
                    target_path = os.path.join(root, target)
                    if os.path.lexists(target_path):
                        if os.path.islink(target_path) or not os.path.isfile(target_path):
                            raise UnsafeLayer(
                                f"hard link {rel!r} points to {member.linkname!r}, "
                                "which is not a regular file"
                            )
                        os.link(target_path, path, follow_symlinks=False)
                        continue
                    below = _find_in_lowers(lowers, target)
                    if below is None:
                        raise UnsafeLayer(
                            f"hard link {rel!r} points to {member.linkname!r}, "
                            "which is not a file of this image"
                        )
                    # overlayfs cannot link across layers: the link gets its own copy
                    shutil.copy2(below, path, follow_symlinks=False)
                    st = os.lstat(below)
                    os.lchown(path, st.st_uid, st.st_gid)
                    os.chmod(path, stat.S_IMODE(st.st_mode))
                    continue
                elif member.isfifo():
                    os.mkfifo(path, member.mode & 0o777)
                else:
                    continue  # devices and anything else: not created from an image
                _set_xattrs(path, member)
                os.utime(path, ns=(int(member.mtime * 10**9),) * 2, follow_symlinks=False)
        except tarfile.TarError as exc:
            raise InvalidArgument(f"bad layer archive: {exc}") from exc
    for path, member in reversed(dirs):
        os.chown(path, member.uid, member.gid)
        os.chmod(path, member.mode & 0o7777)
        _set_xattrs(path, member)
        os.utime(path, ns=(int(member.mtime * 10**9),) * 2)
