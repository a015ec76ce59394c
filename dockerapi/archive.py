"""``docker cp``: ``GET``/``HEAD``/``PUT /containers/{id}/archive?path=``.

tugd copies between a container and a path on its host (``container.copy_from``/``copy_to``,
which resolve container paths inside the container's root, links included). This adapter runs
on that host, as root: a download is copied into a private temporary directory (0700) and sent
as a tar; an upload is checked whole *before* anything is written (no absolute names, no ``..``,
no entry through a link of the archive, no devices), unpacked there without following any link,
then copied into the container. A refused archive changes nothing in the container.
"""

from __future__ import annotations

import base64
import json
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
import time
from typing import IO

import anyio
import anyio.to_thread

from tugwire import errors

from .containers import lookup
from .http import HttpError
from .server import Ctx, Router

# Go's os.FileMode bits, as docker's X-Docker-Container-Path-Stat carries them.
_GO_DIR = 1 << 31
_GO_SYMLINK = 1 << 27


def register(r: Router) -> None:
    """Add the archive routes."""
    r.add("GET", "/containers/(?P<ref>[^/]+)/archive", get_archive)
    r.add("PUT", "/containers/(?P<ref>[^/]+)/archive", put_archive)


def _go_mode(st: os.stat_result) -> int:
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISDIR(st.st_mode):
        mode |= _GO_DIR
    elif stat.S_ISLNK(st.st_mode):
        mode |= _GO_SYMLINK
    return mode


def path_stat(local: str, name: str) -> str:
    """docker's ``X-Docker-Container-Path-Stat``: base64 of ``{name, size, mode, mtime, linkTarget}``."""
    st = os.lstat(local)
    mtime = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(st.st_mtime))
    link = os.readlink(local) if stat.S_ISLNK(st.st_mode) else ""
    body = {"name": name, "size": st.st_size, "mode": _go_mode(st), "mtime": mtime, "linkTarget": link}
    return base64.b64encode(json.dumps(body).encode()).decode()


async def _fetch(ctx: Ctx, cid: str, path: str, workdir: str) -> str:
    """Copy ``path`` of the container into ``workdir``; returns the local copy's path."""
    name = posixpath.basename(posixpath.normpath(path)) or "root"
    local = os.path.join(workdir, name)
    try:
        await ctx.call("container.copy_from", {"id": cid, "path": path, "host_path": local})
    except errors.NotFound:
        raise HttpError(404, f"Could not find the file {path} in container {cid}") from None
    except errors.InvalidArgument as exc:
        raise HttpError(400, exc.message) from None
    return local


def _tar_to(out: IO[bytes], local: str, arcname: str) -> None:
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        tar.add(local, arcname=arcname, recursive=True)


async def get_archive(ctx: Ctx, ref: str) -> None:
    """``GET /containers/{id}/archive?path=``: a tar of ``path`` (its stat in the header);
    ``HEAD``: the stat only."""
    path = ctx.req.arg("path")
    if not path:
        raise HttpError(400, "path is required")
    c = await lookup(ctx, ref)
    workdir = tempfile.mkdtemp(prefix="tug-docker-cp-")
    try:
        local = await _fetch(ctx, c["id"], path, workdir)
        name = os.path.basename(local)
        header = [("X-Docker-Container-Path-Stat", path_stat(local, name))]
        if ctx.req.method == "HEAD":
            await ctx.conn.respond(200, b"", "application/x-tar", header)
            return
        tar_path = os.path.join(workdir, ".archive.tar")
        with open(tar_path, "wb") as f:
            await anyio.to_thread.run_sync(_tar_to, f, local, name)
        await ctx.conn.start_stream(200, "application/x-tar", header)
        async with await anyio.open_file(tar_path, "rb") as f:
            while chunk := await f.read(1 << 20):
                await ctx.conn.send_chunk(chunk)
        await ctx.conn.end_stream()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def check_members(members: list[tarfile.TarInfo]) -> None:
    """Refuse an archive that would write outside its root, or through one of its own links."""
    links: set[str] = set()
    for m in members:
        name = m.name
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if name.startswith("/") or ".." in parts:
            raise HttpError(400, f"archive entry escapes the destination: {name!r}")
        if not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
            raise HttpError(400, f"archive entry of an unsupported type (device, fifo): {name!r}")
        clean = "/".join(parts)
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in links:
                raise HttpError(400, f"archive entry goes through a link of the archive: {name!r}")
        if m.islnk():
            target = [p for p in m.linkname.split("/") if p not in ("", ".")]
            if m.linkname.startswith("/") or ".." in target:
                raise HttpError(400, f"archive hard link escapes the destination: {name!r}")
        if m.issym() or m.islnk():
            links.add(clean)


def unpack(tar_path: str, root: str) -> list[str]:
    """Check, then unpack ``tar_path`` into the empty directory ``root`` following no link;
    returns the top-level names."""
    with tarfile.open(tar_path, mode="r:*") as tar:
        members = tar.getmembers()
        check_members(members)
        tops: list[str] = []
        for m in members:
            parts = [p for p in m.name.split("/") if p not in ("", ".")]
            if not parts:
                continue
            if parts[0] not in tops:
                tops.append(parts[0])
            dest = os.path.join(root, *parts)
            parent = os.path.dirname(dest)
            os.makedirs(parent, exist_ok=True)
            if m.isdir():
                os.makedirs(dest, exist_ok=True)
                os.chmod(dest, m.mode & 0o7777)
            elif m.issym():
                os.symlink(m.linkname, dest)
            elif m.islnk():
                target = os.path.join(root, *[p for p in m.linkname.split("/") if p not in ("", ".")])
                os.link(target, dest, follow_symlinks=False)
            else:
                src = tar.extractfile(m)
                assert src is not None
                fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, m.mode & 0o7777)
                with os.fdopen(fd, "wb") as out:
                    shutil.copyfileobj(src, out)
            if not m.issym():
                os.chown(dest, m.uid, m.gid, follow_symlinks=False)
                os.utime(dest, (m.mtime, m.mtime), follow_symlinks=False)
            else:
                os.chown(dest, m.uid, m.gid, follow_symlinks=False)
        return tops


async def put_archive(ctx: Ctx, ref: str) -> None:
    """``PUT /containers/{id}/archive?path=DIR``: unpack a tar into directory ``DIR``."""
    path = ctx.req.arg("path")
    if not path:
        raise HttpError(400, "path is required")
    c = await lookup(ctx, ref)
    workdir = tempfile.mkdtemp(prefix="tug-docker-cp-")
    try:
        tar_path = os.path.join(workdir, "upload.tar")
        with open(tar_path, "wb") as f:
            await ctx.conn.body_to_file(f)
        root = os.path.join(workdir, "root")
        os.mkdir(root, 0o700)
        try:
            tops = await anyio.to_thread.run_sync(unpack, tar_path, root)
        except (tarfile.TarError, EOFError) as exc:
            raise HttpError(400, f"not a valid tar archive: {exc}") from None
        except FileExistsError as exc:
            raise HttpError(400, f"archive entry given twice: {exc.filename}") from None
        dest = path if path.endswith("/") else path + "/"
        for top in tops:
            try:
                await ctx.call(
                    "container.copy_to", {"id": c["id"], "host_path": os.path.join(root, top), "path": dest}
                )
            except errors.NotFound:
                raise HttpError(404, f"Could not find the file {path} in container {c['id']}") from None
            except (errors.InvalidArgument, errors.FailedPrecondition) as exc:
                raise HttpError(400, exc.message) from None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    await ctx.conn.respond(200, b"", None)
