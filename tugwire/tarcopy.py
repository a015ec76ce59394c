"""Tar in, tar out, on directory file descriptors only: what ``container.archive_get`` and
``container.archive_put`` (docs/api.md) and ``tug cp`` on the client's side share.

:func:`write_tree` writes a tree as a tar (a POSIX pax stream) without following any symbolic
link in it: links are archived as links, hard links as separate files, sockets and devices left
out. :func:`extract` unpacks a tar stream into a directory with docker's safety rules
(:class:`Checker`: no absolute name, no ``..``, no entry through a link of the same archive, no
hard link out of it, no device), *all or nothing*: it unpacks into a fresh private directory
next to the destination (the same filesystem), and only once the whole archive has been read
and checked moves the entries into place with ``rename`` (merging into directories that exist,
replacing files and links; a directory is never replaced by a non-directory). An archive
refused, cut short or failing to unpack leaves the destination as it was.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

from .errors import FailedPrecondition, InvalidArgument

BLOCK = 512
CHUNK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
TEMP_PREFIX = ".tug-cp-"


class UnsafeArchive(InvalidArgument):
    """An archive entry that would write outside the destination, or a kind refused."""


@dataclass
class Result:
    """What a copy did."""

    files: int = 0
    dirs: int = 0
    links: int = 0
    bytes: int = 0
    skipped: int = 0


def clean_parts(name: str) -> list[str]:
    return [p for p in name.split("/") if p not in ("", ".")]


def lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        if name == "":
            return os.fstat(dir_fd)
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


# ----------------------------------------------------------------------------------- tar out


def _info(arcname: str, st: os.stat_result) -> tarfile.TarInfo:
    info = tarfile.TarInfo(arcname)
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid = st.st_uid, st.st_gid
    info.mtime = st.st_mtime
    info.uname = info.gname = ""
    return info


def write_tree(dir_fd: int, name: str, arcname: str, write: Callable[[bytes], object]) -> Result:
    """Write ``name`` in ``dir_fd`` ('' for that directory itself) and everything under it as a
    tar whose top entry is ``arcname``, to ``write``. Follows no link, on any step (a tree that
    changes meanwhile makes the copy fail, never escape); a file that shrinks meanwhile is
    padded with zeros to the size its header gave."""
    result = Result()
    if lstat_at(dir_fd, name) is None:
        raise FileNotFoundError(name)
    _write_entry(dir_fd, name, arcname, write, result)
    write(b"\0" * (2 * BLOCK))
    return result


def _header(info: tarfile.TarInfo) -> bytes:
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _write_entry(
    dir_fd: int, name: str, arcname: str, write: Callable[[bytes], object], result: Result
) -> None:
    st = lstat_at(dir_fd, name)
    if st is None:
        return  # gone meanwhile (a running container changes its files)
    mode = st.st_mode
    info = _info(arcname, st)
    if stat.S_ISDIR(mode):
        fd = os.dup(dir_fd) if name == "" else os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
        try:
            info.type = tarfile.DIRTYPE
            write(_header(info))
            result.dirs += 1
            for child in sorted(os.listdir(fd)):
                _write_entry(fd, child, f"{arcname}/{child}", write, result)
        finally:
            os.close(fd)
    elif stat.S_ISREG(mode):
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            size = os.fstat(fd).st_size
            info.size = size
            write(_header(info))
            left = size
            while left:
                data = os.read(fd, min(CHUNK, left))
                if not data:
                    data = b"\0" * min(CHUNK, left)  # shrank meanwhile
                write(data)
                left -= len(data)
            if size % BLOCK:
                write(b"\0" * (BLOCK - size % BLOCK))
        finally:
            os.close(fd)
        result.files += 1
        result.bytes += size
    elif stat.S_ISLNK(mode):
        info.type = tarfile.SYMTYPE
        info.linkname = os.readlink(name, dir_fd=dir_fd)
        write(_header(info))
        result.links += 1
    elif stat.S_ISFIFO(mode):
        info.type = tarfile.FIFOTYPE
        write(_header(info))
        result.files += 1
    else:
        result.skipped += 1  # sockets and device nodes


# ------------------------------------------------------------------------------------ tar in


class Checker:
    """docker's rules for an uploaded archive, one entry at a time, in the archive's order."""

    def __init__(self) -> None:
        self.links: set[str] = set()

    def check(self, m: tarfile.TarInfo, parts: list[str]) -> None:
        name = m.name
        if name.startswith("/") or ".." in name.split("/"):
            raise UnsafeArchive(f"archive entry escapes the destination: {name!r}")
        if not (m.isfile() or m.isdir() or m.issym() or m.islnk() or m.isfifo()):
            raise UnsafeArchive(f"archive entry of an unsupported type (device): {name!r}")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in self.links:
                raise UnsafeArchive(f"archive entry goes through a link of the archive: {name!r}")
        if m.islnk():
            target = m.linkname
            tparts = clean_parts(target)
            if target.startswith("/") or ".." in target.split("/") or not tparts:
                raise UnsafeArchive(f"archive hard link escapes the destination: {name!r}")
            for i in range(1, len(tparts)):
                if "/".join(tparts[:i]) in self.links:
                    raise UnsafeArchive(f"archive hard link goes through a link of the archive: {name!r}")
        if m.issym() or m.islnk():
            self.links.add("/".join(parts))


def _walk_to(root_fd: int, parts: list[str], *, create: bool) -> int:
    """A new fd of directory ``parts`` under ``root_fd``, never through a link (missing ones
    made with ``create``, as tar does for entries whose directories it does not list)."""
    fd = os.dup(root_fd)
    try:
        for p in parts:
            try:
                nfd = os.open(p, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(p, 0o755, dir_fd=fd)
                nfd = os.open(p, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise


def _remove_non_dir(dir_fd: int, name: str) -> None:
    st = lstat_at(dir_fd, name)
    if st is None:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=dir_fd)
    else:
        os.unlink(name, dir_fd=dir_fd)


def _unpack_entry(
    tar: tarfile.TarFile, m: tarfile.TarInfo, parts: list[str], root_fd: int, owners: bool, result: Result
) -> None:
    if not parts:
        return  # the archive's '.': the destination itself, whose metadata stays
    pfd = _walk_to(root_fd, parts[:-1], create=True)
    name = parts[-1]
    try:
        existing = lstat_at(pfd, name)
        if m.isdir():
            if existing is not None and not stat.S_ISDIR(existing.st_mode):
                os.unlink(name, dir_fd=pfd)
                existing = None
            if existing is None:
                os.mkdir(name, 0o700, dir_fd=pfd)
            fd = os.open(name, _DIR_FLAGS, dir_fd=pfd)
            try:
                os.fchmod(fd, m.mode & 0o7777)
                if owners:
                    os.fchown(fd, m.uid, m.gid)
                os.utime(fd, (m.mtime, m.mtime))
            finally:
                os.close(fd)
            result.dirs += 1
            return
        _remove_non_dir(pfd, name)
        if m.isfile():
            src = tar.extractfile(m)
            assert src is not None
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(name, flags, 0o600, dir_fd=pfd)
            try:
                while data := src.read(CHUNK):
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                    result.bytes += len(data)
                if owners:
                    os.fchown(fd, m.uid, m.gid)
                os.fchmod(fd, m.mode & 0o7777)
                os.utime(fd, (m.mtime, m.mtime))
            finally:
                os.close(fd)
            result.files += 1
            return
        if m.issym():
            os.symlink(m.linkname, name, dir_fd=pfd)
            result.links += 1
        elif m.islnk():
            tparts = clean_parts(m.linkname)
            try:
                tfd = _walk_to(root_fd, tparts[:-1], create=False)
            except (FileNotFoundError, NotADirectoryError, OSError):
                raise UnsafeArchive(f"archive hard link to an entry it does not hold: {m.name!r}") from None
            try:
                os.link(tparts[-1], name, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
            except FileNotFoundError:
                raise UnsafeArchive(f"archive hard link to an entry it does not hold: {m.name!r}") from None
            finally:
                os.close(tfd)
            result.files += 1
            return
        else:  # a FIFO
            os.mkfifo(name, m.mode & 0o7777, dir_fd=pfd)
            result.files += 1
        if owners:
            os.chown(name, m.uid, m.gid, dir_fd=pfd, follow_symlinks=False)
        os.utime(name, (m.mtime, m.mtime), dir_fd=pfd, follow_symlinks=False)
    finally:
        os.close(pfd)


def _check_move(src_fd: int, dst_fd: int) -> None:
    """Refuse, before anything moves, a directory of the destination that an entry would
    replace with a non-directory (docker's ``noOverwriteDirNonDir``)."""
    for name in os.listdir(src_fd):
        dst = lstat_at(dst_fd, name)
        if dst is None or not stat.S_ISDIR(dst.st_mode):
            continue
        src = lstat_at(src_fd, name)
        assert src is not None
        if not stat.S_ISDIR(src.st_mode):
            raise FailedPrecondition(f"cannot overwrite directory {name!r} with a non-directory")
        sfd, dfd = os.open(name, _DIR_FLAGS, dir_fd=src_fd), os.open(name, _DIR_FLAGS, dir_fd=dst_fd)
        try:
            _check_move(sfd, dfd)
        finally:
            os.close(sfd)
            os.close(dfd)


def _move(src_fd: int, dst_fd: int) -> None:
    """Move every entry of ``src_fd`` into ``dst_fd``: ``rename`` (replacing a file or link),
    into a directory that exists by moving its entries in turn."""
    for name in os.listdir(src_fd):
        src = lstat_at(src_fd, name)
        dst = lstat_at(dst_fd, name)
        assert src is not None
        if dst is not None and stat.S_ISDIR(dst.st_mode) and stat.S_ISDIR(src.st_mode):
            sfd, dfd = os.open(name, _DIR_FLAGS, dir_fd=src_fd), os.open(name, _DIR_FLAGS, dir_fd=dst_fd)
            try:
                _move(sfd, dfd)
            finally:
                os.close(sfd)
                os.close(dfd)
            continue
        if dst is not None and stat.S_ISDIR(src.st_mode):
            os.unlink(name, dir_fd=dst_fd)  # a file or link where a directory goes
        os.rename(name, name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)


def extract(
    dest_fd: int,
    source: IO[bytes],
    *,
    owners: bool,
    top: str | None = None,
    contents: bool = False,
    finish: Callable[[], None] | None = None,
) -> Result:
    """Unpack the tar stream ``source`` (plain, gzip, bzip2 or xz) into the directory
    ``dest_fd``, all or nothing (see the module's docstring). ``owners``: keep the archive's
    uid and gid (else the caller's own). ``top`` renames the archive's top entry (with
    ``contents``, the archive holds a directory's contents, as ``./x``, that go under ``top``).
    ``finish`` runs once the archive is read, before anything moves (it may still refuse it:
    the end of an upload is confirmed there)."""
    temp = TEMP_PREFIX + secrets.token_hex(8)
    os.mkdir(temp, 0o700, dir_fd=dest_fd)
    result = Result()
    try:
        tfd = os.open(temp, _DIR_FLAGS, dir_fd=dest_fd)
        try:
            checker = Checker()
            try:
                with tarfile.open(fileobj=source, mode="r|*", bufsize=CHUNK) as tar:
                    for m in tar:
                        parts = clean_parts(m.name)
                        checker.check(m, parts)
                        if top is not None:
                            parts = [top, *parts] if contents else ([top, *parts[1:]] if parts else [])
                            if m.islnk():
                                t = clean_parts(m.linkname)
                                m.linkname = "/".join([top, *t] if contents else [top, *t[1:]])
                        _unpack_entry(tar, m, parts, tfd, owners, result)
            except (tarfile.TarError, EOFError) as exc:
                raise InvalidArgument(f"not a valid tar archive: {exc}") from None
            if finish is not None:
                finish()
            _check_move(tfd, dest_fd)
            _move(tfd, dest_fd)
        finally:
            os.close(tfd)
    finally:
        shutil.rmtree(temp, dir_fd=dest_fd, ignore_errors=True)
    return result
