"""``tug cp``: copy files between a container's root filesystem and the host, with no way out of
either.

Every path inside the container is resolved as if the root filesystem were ``/``: one component
at a time, from a directory file descriptor, with ``O_NOFOLLOW``; a symbolic link is read and its
target resolved again *inside* the root (an absolute target starts over from the root, ``..``
stops at the root), as the container itself would see it. The copy then works on file
descriptors only (``openat``, ``mkdirat``, ``symlinkat`` through ``dir_fd``), never on path
strings, and never follows a symbolic link it finds in a tree, on either side: a link is copied
as a link. A container process that swaps a directory for a link while the copy runs makes the
copy fail (``O_NOFOLLOW``), never escape. So nothing a container holds can make tugd read or
write outside the container's root or outside the destination on the host.

What is copied: regular files (content, mode, owner, modification time), directories, symbolic
links and FIFOs; sockets and device nodes are left out. Hard links become separate files.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import deque
from dataclasses import dataclass

from tugwire.errors import FailedPrecondition, InvalidArgument, NotFound

MAX_LINKS = 40  # as the kernel's ELOOP limit
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class Result:
    """What a copy did."""

    files: int = 0
    dirs: int = 0
    links: int = 0
    bytes: int = 0
    skipped: int = 0


def _components(path: str) -> list[str]:
    return [p for p in path.split("/") if p not in ("", ".")]


def resolve_in_root(root_fd: int, path: str, *, follow_last: bool) -> tuple[int, str]:
    """Resolve ``path`` inside the directory ``root_fd`` as its root. Returns a new fd of the
    parent directory and the last component's name ('' when the path is the root itself); the
    last component need not exist. Links in the middle are followed inside the root; the last
    one only with ``follow_last``."""
    if "\x00" in path:
        raise InvalidArgument("a path may not contain NUL", field="path")
    parts = deque(_components(path))
    stack = [os.dup(root_fd)]
    links = 0
    try:
        while parts:
            name = parts.popleft()
            if name == "..":
                if len(stack) > 1:
                    os.close(stack.pop())
                continue
            cur = stack[-1]
            last = not parts
            try:
                st = os.stat(name, dir_fd=cur, follow_symlinks=False)
            except FileNotFoundError:
                if last:
                    return os.dup(cur), name
                raise NotFound(f"no such file or directory in the container: {path}") from None
            if stat.S_ISLNK(st.st_mode) and (follow_last or not last):
                links += 1
                if links > MAX_LINKS:
                    raise InvalidArgument(f"too many levels of symbolic links: {path}", field="path")
                target = os.readlink(name, dir_fd=cur)
                if target.startswith("/"):
                    while len(stack) > 1:
                        os.close(stack.pop())
                parts.extendleft(reversed(_components(target)))
                continue
            if last:
                return os.dup(cur), name
            if not stat.S_ISDIR(st.st_mode):
                raise InvalidArgument(f"not a directory in the container: {path}", field="path")
            stack.append(os.open(name, _DIR_FLAGS, dir_fd=cur))
        # The path named a directory reached by '..' or a link, or the root: its parent is not
        # needed; the caller copies the directory itself, under the name of its last component.
        return os.dup(stack[-1]), ""
    finally:
        for fd in stack:
            os.close(fd)


def _lstat(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        if name == "":
            return os.fstat(dir_fd)
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _open_dir(dir_fd: int, name: str) -> int:
    return os.dup(dir_fd) if name == "" else os.open(name, _DIR_FLAGS, dir_fd=dir_fd)


def copy(src_dir: int, src_name: str, dst_dir: int, dst_name: str, *, contents: bool, label: str) -> Result:
    """Copy ``src_name`` (in directory ``src_dir``; '' for that directory itself) to the
    destination ``dst_name`` in ``dst_dir``, as ``cp -a`` and ``docker cp`` do: into the
    destination if it is an existing directory (as the source's base name, or only the
    source's contents with ``contents``), else as that name (whose parent must exist).
    ``label`` names the source in errors."""
    src_st = _lstat(src_dir, src_name)
    if src_st is None:
        raise NotFound(f"no such file or directory: {label}")
    if contents and not stat.S_ISDIR(src_st.st_mode):
        raise InvalidArgument(f"{label} is not a directory", field="path")
    dst_st = _lstat(dst_dir, dst_name)
    result = Result()
    if dst_st is not None and stat.S_ISDIR(dst_st.st_mode):
        into = _open_dir(dst_dir, dst_name)
        try:
            if contents:
                _copy_children(src_dir, src_name, into, result)
            else:
                base = src_name or "root"
                _copy_entry(src_dir, src_name, into, base, result)
        finally:
            os.close(into)
        return result
    if dst_name == "":
        raise FailedPrecondition("the destination is not a directory")
    if dst_st is not None and stat.S_ISDIR(src_st.st_mode):
        raise FailedPrecondition("cannot copy a directory to a file that exists")
    _copy_entry(src_dir, src_name, dst_dir, dst_name, result)
    return result


def _copy_children(src_dir: int, src_name: str, dst_fd: int, result: Result) -> None:
    sfd = _open_dir(src_dir, src_name)
    try:
        for entry in sorted(os.listdir(sfd)):
            _copy_entry(sfd, entry, dst_fd, entry, result)
    finally:
        os.close(sfd)


def _remove_non_dir(dir_fd: int, name: str) -> None:
    st = _lstat(dir_fd, name)
    if st is None:
        return
    if stat.S_ISDIR(st.st_mode):
        raise FailedPrecondition(f"cannot overwrite directory {name!r} with a non-directory")
    os.unlink(name, dir_fd=dir_fd)


def _set_meta(fd: int, st: os.stat_result) -> None:
    os.fchown(fd, st.st_uid, st.st_gid)
    os.fchmod(fd, stat.S_IMODE(st.st_mode))
    os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))


def _copy_entry(src_dir: int, src_name: str, dst_dir: int, dst_name: str, result: Result) -> None:
    st = _lstat(src_dir, src_name)
    if st is None:
        return  # gone meanwhile (a running container changes its files)
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        existing = _lstat(dst_dir, dst_name)
        if existing is not None and not stat.S_ISDIR(existing.st_mode):
            os.unlink(dst_name, dir_fd=dst_dir)
            existing = None
        if existing is None:
            os.mkdir(dst_name, 0o700, dir_fd=dst_dir)
        dfd = os.open(dst_name, _DIR_FLAGS, dir_fd=dst_dir)  # a link put there meanwhile: ELOOP
        try:
            _copy_children(src_dir, src_name, dfd, result)
            _set_meta(dfd, st)
        finally:
            os.close(dfd)
        result.dirs += 1
    elif stat.S_ISREG(mode):
        sfd = os.open(src_name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=src_dir)
        try:
            _remove_non_dir(dst_dir, dst_name)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            dfd = os.open(dst_name, flags, 0o600, dir_fd=dst_dir)
            try:
                result.bytes += _copy_data(sfd, dfd)
                _set_meta(dfd, st)
            finally:
                os.close(dfd)
        finally:
            os.close(sfd)
        result.files += 1
    elif stat.S_ISLNK(mode):
        target = os.readlink(src_name, dir_fd=src_dir)
        _remove_non_dir(dst_dir, dst_name)
        os.symlink(target, dst_name, dir_fd=dst_dir)
        os.chown(dst_name, st.st_uid, st.st_gid, dir_fd=dst_dir, follow_symlinks=False)
        result.links += 1
    elif stat.S_ISFIFO(mode):
        _remove_non_dir(dst_dir, dst_name)
        os.mkfifo(dst_name, stat.S_IMODE(mode), dir_fd=dst_dir)
        os.chown(dst_name, st.st_uid, st.st_gid, dir_fd=dst_dir, follow_symlinks=False)
        result.files += 1
    else:
        result.skipped += 1  # sockets and device nodes


def _copy_data(src: int, dst: int) -> int:
    total = 0
    while True:
        try:
            n = os.copy_file_range(src, dst, 1 << 30)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise
            break
        if n == 0:
            return total
        total += n
    while True:  # copy_file_range refused (across some filesystems): plain reads and writes
        data = os.read(src, 1 << 20)
        if not data:
            return total
        view = memoryview(data)
        while view:
            written = os.write(dst, view)
            view = view[written:]
        total += len(data)


def host_target(path: str) -> tuple[int, str]:
    """The host side of a copy: (fd of the parent directory, last name), resolved as the kernel
    does (the user's own path; links in it are the user's). A path ending in ``/`` or ``/.`` or
    naming ``/`` gives the directory itself and ''."""
    if not os.path.isabs(path):
        raise InvalidArgument(f"the host path must be absolute: {path!r}", field="path")
    if "\x00" in path:
        raise InvalidArgument("a path may not contain NUL", field="path")
    if path.endswith(("/", "/.")) or os.path.normpath(path) == "/":
        try:
            return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), ""
        except FileNotFoundError:
            raise NotFound(f"no such directory on the host: {path}") from None
        except NotADirectoryError:
            raise InvalidArgument(f"not a directory on the host: {path}", field="path") from None
    parent, name = os.path.split(os.path.normpath(path))
    try:
        return os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), name
    except FileNotFoundError:
        raise NotFound(f"no such directory on the host: {parent}") from None
    except NotADirectoryError:
        raise InvalidArgument(f"not a directory on the host: {parent}", field="path") from None


def wants_contents(path: str) -> bool:
    """``SRC/.`` copies the contents of the directory SRC, not SRC itself (as ``docker cp``)."""
    return path.endswith("/.")
