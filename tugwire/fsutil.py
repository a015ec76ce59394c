"""Atomic writes and deletes: every state file has one writer and is never seen half-written."""

from __future__ import annotations

import contextlib
import os
import stat


def write_atomic(path: str, data: bytes, *, mode: int = 0o600, durable: bool = True) -> None:
    """Write ``data`` to ``path`` through a temp file, fsync and rename (and fsync the directory).

    ``durable=False`` skips the fsyncs, for files that only need to survive a process crash.
    """
    directory = os.path.dirname(path) or "."
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        # A failed write (a full disk) leaves no temp file behind to fill it further.
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(directory)


def fsync_dir(directory: str) -> None:
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def remove_tree(path: str) -> None:
    """Delete a directory so that no loader ever sees it half-removed: rename it to a hidden name
    first (loaders skip names that start with a dot), then remove it."""
    if not os.path.lexists(path):
        return
    parent, base = os.path.split(path.rstrip("/"))
    hidden = os.path.join(parent, f".deleting-{base}-{os.getpid()}")
    try:
        os.rename(path, hidden)
    except FileNotFoundError:
        return
    import shutil  # here, not at the top: the shim imports this module, and shutil brings bz2 and lzma

    shutil.rmtree(hidden, ignore_errors=True)


def remove_path(path: str) -> None:
    """Remove whatever is at ``path`` (a directory through :func:`remove_tree`; a file, link or
    special file by unlink); nothing there is fine."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        remove_tree(path)
    else:
        os.unlink(path)


def read_text(path: str) -> str | None:
    with contextlib.suppress(FileNotFoundError), open(path, encoding="utf-8") as f:
        return f.read()
    return None


def listdir(path: str, *, hidden: bool = True) -> list[str]:
    """The names in directory ``path``, or none if it does not exist; ``hidden=False`` leaves
    out the dot names (temp files, and what a delete renamed away before removing it)."""
    try:
        names = os.listdir(path)
    except FileNotFoundError:
        return []
    return names if hidden else [n for n in names if not n.startswith(".")]
