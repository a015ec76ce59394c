"""Layer tars from directories in overlayfs' format, and back.

A RUN step's changes are the upper dir of its container's overlay: new and changed files as they
are, a deleted file as a *whiteout* (a character device 0:0 of the same name), a directory whose
lower contents were replaced as a directory with the xattr ``trusted.overlay.opaque=y``. In an OCI
layer tar these become ``.wh.NAME`` and ``DIR/.wh..wh..opq`` entries. :func:`dir_to_tar` writes
such a tar (uncompressed, so the blob digest is the diff id); :func:`tar_to_dir` turns a layer tar
back into a directory in overlayfs' format, usable as a lower dir of the next step.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
from typing import IO

from ..images import unpack_tar

WHITEOUT_PREFIX = ".wh."
OPAQUE = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"


class _HashingWriter:
    """A file object that hashes what goes through it (the layer's diff id as it is written)."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.out.write(data)

    def flush(self) -> None:
        self.out.flush()


def is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def is_opaque(path: str) -> bool:
    try:
        return os.getxattr(path, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def dir_to_tar(src: str, out_path: str) -> tuple[str, int, int]:
    """Write the layer tar of ``src`` (overlayfs' format) to ``out_path``; returns (diff id, size
    in bytes, number of entries). Entries are sorted, hard links kept as links, owners, modes and
    modification times kept; sockets are left out."""
    links: dict[tuple[int, int], str] = {}
    count = 0
    with open(out_path, "wb") as raw:
        hashing = _HashingWriter(raw)
        with tarfile.open(fileobj=hashing, mode="w|", format=tarfile.PAX_FORMAT) as tf:  # type: ignore[call-overload]
            for rel, st in _walk(src):
                path = os.path.join(src, rel)
                parent, name = os.path.split(rel)
                if is_whiteout(st):
                    info = tarfile.TarInfo(os.path.join(parent, WHITEOUT_PREFIX + name))
                    info.mtime = int(st.st_mtime)
                    tf.addfile(info)
                    count += 1
                    continue
                if stat.S_ISSOCK(st.st_mode):
                    continue
                info = tarfile.TarInfo(rel + ("/" if stat.S_ISDIR(st.st_mode) else ""))
                info.uid, info.gid = st.st_uid, st.st_gid
                info.uname = info.gname = ""
                info.mode = stat.S_IMODE(st.st_mode)
                info.mtime = int(st.st_mtime)
                if stat.S_ISDIR(st.st_mode):
                    info.type = tarfile.DIRTYPE
                    info.name = rel
                    tf.addfile(info)
                    count += 1
                    if is_opaque(path):
                        opq = tarfile.TarInfo(os.path.join(rel, OPAQUE))
                        opq.mtime = info.mtime
                        tf.addfile(opq)
                        count += 1
                elif stat.S_ISREG(st.st_mode):
                    key = (st.st_dev, st.st_ino)
                    if st.st_nlink > 1 and key in links:
                        info.type = tarfile.LNKTYPE
                        info.linkname = links[key]
                        tf.addfile(info)
                    else:
                        links[key] = rel
                        info.size = st.st_size
                        with open(path, "rb") as f:
                            tf.addfile(info, f)
                    count += 1
                elif stat.S_ISLNK(st.st_mode):
                    info.type = tarfile.SYMTYPE
                    info.linkname = os.readlink(path)
                    tf.addfile(info)
                    count += 1
                elif stat.S_ISFIFO(st.st_mode):
                    info.type = tarfile.FIFOTYPE
                    tf.addfile(info)
                    count += 1
                elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                    info.type = tarfile.CHRTYPE if stat.S_ISCHR(st.st_mode) else tarfile.BLKTYPE
                    info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
                    tf.addfile(info)
                    count += 1
        hashing.flush()
        os.fsync(raw.fileno())
    return "sha256:" + hashing.sha.hexdigest(), hashing.size, count


def _walk(root: str, rel: str = "") -> list[tuple[str, os.stat_result]]:
    """Every entry under ``root`` (not ``root`` itself), parents before children, sorted by name."""
    out: list[tuple[str, os.stat_result]] = []
    with os.scandir(os.path.join(root, rel) if rel else root) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        child = os.path.join(rel, entry.name) if rel else entry.name
        st = entry.stat(follow_symlinks=False)
        out.append((child, st))
        if stat.S_ISDIR(st.st_mode):
            out.extend(_walk(root, child))
    return out


def is_empty_dir(path: str) -> bool:
    with os.scandir(path) as it:
        return next(it, None) is None


def tar_to_dir(tar_path: str, dest: str) -> None:
    """Extract a layer tar (plain or compressed: ADD of an archive) into ``dest`` in overlayfs'
    format, through the same code that unpacks pulled and loaded layers
    (:func:`supervisor.images.unpack_tar`): whiteouts as overlayfs reads them, no entry outside
    ``dest``, no device nodes, the tar-bomb limits, xattrs kept."""
    with open(tar_path, "rb") as f:
        unpack_tar(f, dest)
