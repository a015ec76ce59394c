"""``docker cp``'s container side: paths resolved in a container's root filesystem with no way
out of it, for ``container.archive_get``/``archive_put``/``stat_path`` (the tar itself, in and
out: :mod:`tugwire.tarcopy`).

Every path inside the container is resolved as if the root filesystem were ``/``: one component
at a time, from a directory file descriptor, with ``O_NOFOLLOW``; a symbolic link is read and its
target resolved again *inside* the root (an absolute target starts over from the root, ``..``
stops at the root), as the container itself would see it. The copy then works on file
descriptors only (``openat``, ``mkdirat``, ``symlinkat`` through ``dir_fd``), never on path
strings, and never follows a symbolic link it finds in a tree: a link is copied as a link. A
container process that swaps a directory for a link while the copy runs makes the copy fail
(``O_NOFOLLOW``), never escape. So nothing a container holds can make tugd read or write outside
the container's root.
"""

from __future__ import annotations

import os
import stat
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, cast

import anyio
import anyio.from_thread
import anyio.to_thread

from tugwire import tarcopy
from tugwire.errors import InvalidArgument, NotFound

MAX_LINKS = 40  # as the kernel's ELOOP limit
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


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


def wants_contents(path: str) -> bool:
    """``SRC/.`` copies the contents of the directory SRC, not SRC itself (as ``docker cp``)."""
    return path.endswith("/.")


def open_source(root_fd: int, path: str) -> tuple[int, str, str]:
    """What ``archive_get`` archives: (a new fd of its directory, its name there or '' for that
    directory itself, the archive's top name: the path's base name, or ``.`` for ``DIR/.``)."""
    contents = wants_contents(path)
    dir_fd, name = resolve_in_root(root_fd, path, follow_last=contents)
    st = tarcopy.lstat_at(dir_fd, name)
    if st is None:
        os.close(dir_fd)
        raise NotFound(f"no such file or directory in the container: {path}")
    if contents:
        if not stat.S_ISDIR(st.st_mode):
            os.close(dir_fd)
            raise InvalidArgument(f"not a directory in the container: {path}", field="path")
        return dir_fd, name, "."
    return dir_fd, name, os.path.basename(os.path.normpath("/" + path)) or "root"


def open_dest_dir(root_fd: int, path: str) -> int:
    """A new fd of the directory ``archive_put`` unpacks into (links followed inside the root)."""
    dir_fd, name = resolve_in_root(root_fd, path, follow_last=True)
    try:
        st = tarcopy.lstat_at(dir_fd, name)
        if st is None:
            raise NotFound(f"no such file or directory in the container: {path}")
        if not stat.S_ISDIR(st.st_mode):
            raise InvalidArgument(f"extraction point is not a directory: {path}", field="path")
        return os.dup(dir_fd) if name == "" else os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


def stat_path(root_fd: int, path: str) -> dict[str, Any]:
    """docker's path stat of ``path`` in the container (a last link not followed):
    ``{name, size, mode, mtime, link_target}``; ``mode`` is ``st_mode``, type bits included."""
    dir_fd, name = resolve_in_root(root_fd, path, follow_last=False)
    try:
        st = tarcopy.lstat_at(dir_fd, name)
        if st is None:
            raise NotFound(f"no such file or directory in the container: {path}")
        link = os.readlink(name, dir_fd=dir_fd) if stat.S_ISLNK(st.st_mode) else ""
    finally:
        os.close(dir_fd)
    return {
        "name": name or os.path.basename(os.path.normpath("/" + path)) or "/",
        "size": st.st_size,
        "mode": st.st_mode,
        "mtime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(st.st_mtime)),
        "link_target": link,
    }


# ------------------------------------------------------------------ streams, to and from the thread

Started = Callable[[], Coroutine[Any, Any, None]]  # awaited once the path is found
Sink = Callable[[list[bytes]], Coroutine[Any, Any, None]]  # the pieces of one chunk of tar
SEND_CHUNK = 1 << 20  # bytes of tar gathered per frame out
MAX_TRAILING = 1 << 20  # bytes after an upload's tar (its padding) before it is refused


class _Sender:
    """The tar writer's ``write`` in a worker thread: gathers pieces and hands them to the async
    ``sink``, a list at a time of at least :data:`SEND_CHUNK` bytes but the last (one frame, no
    piece copied into another), which waits for the client to take them: the back-pressure."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.parts: list[bytes] = []
        self.size = 0

    def write(self, data: bytes) -> None:
        self.parts.append(data)
        self.size += len(data)
        if self.size >= SEND_CHUNK:
            self.flush()

    def flush(self) -> None:
        if self.parts:
            parts, self.parts, self.size = self.parts, [], 0
            anyio.from_thread.check_cancelled()  # tugd stopping: end the walk, close the fds
            anyio.from_thread.run(self.sink, parts)


class _Receiver:
    """A file for the tar reader in a worker thread, over the async ``source`` (the next chunk
    of the upload, b"" at its end): read only when the reader needs more (the back-pressure)."""

    def __init__(self, source: Callable[[], Coroutine[Any, Any, bytes]]) -> None:
        self.source = source
        self.buf = b""
        self.pos = 0
        self.eof = False

    def read(self, n: int = -1) -> bytes:
        while self.pos >= len(self.buf):
            if self.eof:
                return b""
            anyio.from_thread.check_cancelled()
            data: bytes = anyio.from_thread.run(self.source)
            if not data:
                self.eof = True
                return b""
            self.buf, self.pos = data, 0
        end = len(self.buf) if n < 0 else self.pos + n
        out = self.buf[self.pos : end]
        self.pos += len(out)
        return out

    def finish(self) -> None:
        """Read to the upload's end (its padding): only a whole upload is put in place."""
        extra = 0
        while data := self.read(SEND_CHUNK):
            extra += len(data)
            if extra > MAX_TRAILING:
                raise InvalidArgument("more data after the end of the tar archive")


async def archive_get(root_fd: int, path: str, sink: Sink, started: Started) -> dict[str, Any]:
    """A tar of ``path`` (its base name at the top; a ``DIR/.``: its contents, as ``./x``), in
    chunks to ``sink`` (each a list of pieces); ``started`` is awaited once the path is found
    (errors before it are the call's own, after it the stream's)."""
    dir_fd, name, arcname = open_source(root_fd, path)
    try:
        await started()
        out = _Sender(sink)

        def run() -> tarcopy.Result:
            result = tarcopy.write_tree(dir_fd, name, arcname, out.write)
            out.flush()
            return result

        result = await anyio.to_thread.run_sync(run)
    finally:
        os.close(dir_fd)
    return vars(result)


async def archive_put(
    root_fd: int, path: str, source: Callable[[], Coroutine[Any, Any, bytes]], started: Started
) -> dict[str, Any]:
    """Unpack the tar that ``source`` gives (b"" at its end) into the directory ``path``, all or
    nothing (:func:`tugwire.tarcopy.extract`); the archive's owners are kept."""
    dest = open_dest_dir(root_fd, path)
    try:
        await started()
        rx = _Receiver(source)
        result = await anyio.to_thread.run_sync(
            lambda: tarcopy.extract(dest, cast(Any, rx), owners=True, finish=rx.finish)
        )
    finally:
        os.close(dest)
    return vars(result)
