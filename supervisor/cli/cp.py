"""``tug cp``'s two ways, as tars on raw streams (docs/api.md, ``container.archive_get`` and
``container.archive_put``): tugd reads and writes the container's side; this process reads and
writes the host's side with the user's own rights, through :mod:`tugwire.tarcopy` (no link in
the tree followed, an archive unpacked all or nothing). ``-`` is a tar on stdin or stdout, as
``docker cp``. Imported only by ``tug cp`` (tarfile is not cheap to import)."""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from typing import Any

from tugwire import errors, frames, tarcopy
from tugwire.syncclient import Client, Disconnected, RawStream

SEND_CHUNK = 1 << 20
SOCKET_BUFFER = 4 << 20


class _FrameReader:
    """A file over a raw stream's stdout frames, for the tar reader."""

    def __init__(self, stream: RawStream) -> None:
        self.stream = stream
        self.buf = b""
        self.pos = 0

    def read(self, n: int = -1) -> bytes:
        while self.pos >= len(self.buf):
            item = next(self.stream, None)
            if item is None:
                return b""
            self.buf, self.pos = item[1], 0  # type: ignore[misc]  # no wakeup fd: never ()
        end = len(self.buf) if n < 0 else self.pos + n
        out = self.buf[self.pos : end]
        self.pos += len(out)
        return out


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _stat(client: Client, cid: str, path: str) -> dict[str, Any] | None:
    try:
        got: dict[str, Any] = client.call("container.stat_path", {"id": cid, "path": path})
    except errors.NotFound:
        return None
    return got


def copy_out(client: Client, cid: str, src: str, dst: str) -> None:
    """Container ``src`` to host ``dst`` (``-``: the tar to stdout)."""
    if dst == "-":
        with contextlib.closing(client.raw_stream("container.archive_get", {"id": cid, "path": src})) as s:
            for _kind, data in s:  # type: ignore[misc]  # no wakeup fd: never ()
                _write_all(1, data)
        return
    contents = src.endswith("/.")
    info = _stat(client, cid, src)
    if info is None:
        raise errors.NotFound(f"no such file or directory in the container: {src}")
    top: str | None = None
    if os.path.isdir(dst):
        into = dst
    else:
        if dst.endswith("/"):
            raise errors.NotFound(f"no such directory on the host: {dst}")
        into, top = os.path.split(os.path.normpath(dst))
        if os.path.lexists(dst) and (contents or stat.S_ISDIR(info["mode"])):
            raise errors.FailedPrecondition(f"cannot copy a directory to a file that exists: {dst}")
        if not os.path.isdir(into):
            raise errors.NotFound(f"no such directory on the host: {into}")
    fd = os.open(into, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with contextlib.closing(client.raw_stream("container.archive_get", {"id": cid, "path": src})) as s:
            tarcopy.extract(fd, _FrameReader(s), owners=os.geteuid() == 0, top=top, contents=contents)  # type: ignore[arg-type]
            if not s.done:
                for _ in s:  # the end frame: the copy's result, or its error
                    pass
    finally:
        os.close(fd)


def _put(client: Client, cid: str, into: str, produce: Any) -> None:
    """Stream the tar ``produce(send)`` writes to ``container.archive_put`` into ``into``."""
    s = client.raw_stream("container.archive_put", {"id": cid, "path": into})
    with contextlib.suppress(OSError):  # fewer, larger hand-offs (capped by net.core.wmem_max)
        s._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
    with contextlib.closing(s):
        parts: list[bytes] = []
        size = 0

        def flush() -> None:
            nonlocal size
            if parts:
                try:  # one frame of the gathered parts, none copied into another
                    s._sock.sendall(frames.header(frames.STDIN, size))
                    for part in parts:
                        s._sock.sendall(part)
                except OSError as exc:
                    raise Disconnected(f"lost the connection to tugd: {exc.strerror or exc}") from exc
                parts.clear()
                size = 0

        def send(data: bytes) -> None:
            nonlocal size
            parts.append(data)
            size += len(data)
            if size >= SEND_CHUNK:
                flush()

        try:
            produce(send)
            flush()
            s.send(frames.STDIN, b"")
        except Disconnected:
            pass  # tugd refused the archive and ended the stream: its end frame says why
        for _ in s:
            pass


def copy_in(client: Client, cid: str, src: str, dst: str) -> None:
    """Host ``src`` (``-``: a tar on stdin) to container ``dst``."""
    if src == "-":

        def from_stdin(send: Any) -> None:
            while data := os.read(0, SEND_CHUNK):
                send(data)

        _put(client, cid, dst, from_stdin)
        return
    contents = src.endswith("/.")
    norm = os.path.normpath(src)
    if contents:
        dir_fd, name, arcname = os.open(norm, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), "", "."
    else:
        parent, name = os.path.split(norm)
        if not name:
            parent, name = "/", ""
        dir_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        arcname = name or "root"
    try:
        src_st = tarcopy.lstat_at(dir_fd, name)
        if src_st is None:
            raise errors.NotFound(f"no such file or directory: {src}")
        src_dir = stat.S_ISDIR(src_st.st_mode)

        def produce_as(top: str) -> Any:
            return lambda send: tarcopy.write_tree(dir_fd, name, top, send)

        info = _stat(client, cid, dst)
        if info is not None and stat.S_ISLNK(info["mode"]):
            with contextlib.suppress(errors.InvalidArgument):  # a link to a directory: into it
                _put(client, cid, dst, produce_as(arcname))
                return
        elif info is not None and stat.S_ISDIR(info["mode"]):
            _put(client, cid, dst, produce_as(arcname))
            return
        if info is None and dst.endswith("/"):
            raise errors.NotFound(f"no such directory in the container: {dst}")
        if info is not None and not stat.S_ISLNK(info["mode"]) and src_dir:
            raise errors.FailedPrecondition(f"cannot copy a directory to a file that exists: {dst}")
        into, top = os.path.split(os.path.normpath(dst))
        if contents:
            # the directory's contents under the new name: its '.' becomes that name
            _put(client, cid, into, lambda send: tarcopy.write_tree(dir_fd, "", top, send))
        else:
            _put(client, cid, into, produce_as(top))
    finally:
        os.close(dir_fd)
