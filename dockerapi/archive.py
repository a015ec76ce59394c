"""``docker cp``: ``GET``/``HEAD``/``PUT /containers/{id}/archive?path=``.

Straight through to tugd, nothing spooled: ``HEAD`` is ``container.stat_path``; ``GET`` is its
stat in the ``X-Docker-Container-Path-Stat`` header, then the stdout frames of a raw
``container.archive_get`` relayed as the body's chunks; ``PUT`` relays the body's chunks as the
stdin frames of a raw ``container.archive_put``. tugd checks the upload entry by entry (no
absolute names, no ``..``, no entry through a link of the archive, no hard link out of it, no
device), unpacks it into a private directory beside the destination and moves it into place
only once the whole body has arrived: a refused or cut-short upload changes nothing, so there is
no need to hold the body here first. Both ways go as fast as the slower side reads.
"""

from __future__ import annotations

import base64
import json
import stat
from typing import Any

import anyio

from tugwire import errors, frames, jsonrpc

from .containers import lookup
from .http import ClientGone, HttpError
from .server import Ctx, Router

# Go's os.FileMode bits, as docker's X-Docker-Container-Path-Stat carries them.
_GO_TYPES = (
    (stat.S_ISDIR, 1 << 31),
    (stat.S_ISLNK, 1 << 27),
    (stat.S_ISFIFO, 1 << 25),
    (stat.S_ISSOCK, 1 << 24),
    (stat.S_ISBLK, 1 << 26),
    (stat.S_ISCHR, (1 << 26) | (1 << 21)),
)
_GO_SETUID, _GO_SETGID, _GO_STICKY = 1 << 23, 1 << 22, 1 << 20


def register(r: Router) -> None:
    """Add the archive routes."""
    r.add("GET", "/containers/(?P<ref>[^/]+)/archive", get_archive)
    r.add("PUT", "/containers/(?P<ref>[^/]+)/archive", put_archive)


def go_mode(mode: int) -> int:
    """A Unix ``st_mode`` as Go's ``os.FileMode``."""
    out = mode & 0o777
    for test, bit in _GO_TYPES:
        if test(mode):
            out |= bit
    if mode & stat.S_ISUID:
        out |= _GO_SETUID
    if mode & stat.S_ISGID:
        out |= _GO_SETGID
    if mode & stat.S_ISVTX:
        out |= _GO_STICKY
    return out


def path_stat(st: dict[str, Any]) -> str:
    """docker's ``X-Docker-Container-Path-Stat`` of tugd's ``container.stat_path`` result:
    base64 of ``{name, size, mode, mtime, linkTarget}``."""
    body = {
        "name": st["name"],
        "size": st["size"],
        "mode": go_mode(st["mode"]),
        "mtime": st["mtime"],
        "linkTarget": st["link_target"],
    }
    return base64.b64encode(json.dumps(body).encode()).decode()


def _http_error(exc: errors.TugError, path: str, cid: str) -> HttpError:
    if isinstance(exc, errors.NotFound):
        return HttpError(404, f"Could not find the file {path} in container {cid}")
    if isinstance(exc, (errors.InvalidArgument, errors.FailedPrecondition)):
        return HttpError(400, exc.message)
    raise exc


async def get_archive(ctx: Ctx, ref: str) -> None:
    """``GET /containers/{id}/archive?path=``: a tar of ``path`` (its stat in the header);
    ``HEAD``: the stat only."""
    path = ctx.req.arg("path")
    if not path:
        raise HttpError(400, "path is required")
    c = await lookup(ctx, ref)
    try:
        st = await ctx.call("container.stat_path", {"id": c["id"], "path": path})
    except errors.TugError as exc:
        raise _http_error(exc, path, c["id"]) from None
    header = [("X-Docker-Container-Path-Stat", path_stat(st))]
    if ctx.req.method == "HEAD":
        await ctx.conn.respond(200, b"", "application/x-tar", header)
        return
    try:
        async with jsonrpc.open_raw(
            ctx.shared.tugd, "container.archive_get", {"id": c["id"], "path": path}
        ) as ch:
            await ctx.conn.start_stream(200, "application/x-tar", header)
            while True:
                try:
                    kind, data = await ch.receive()
                except anyio.EndOfStream:
                    raise ClientGone("tugd ended the archive before its end") from None
                if kind == frames.END:
                    frames.end_result(data)
                    break
                await ctx.conn.send_chunk(data)
    except errors.TugError as exc:
        if ctx.conn.can_respond:
            raise _http_error(exc, path, c["id"]) from None
        raise ClientGone(f"the archive failed half-way: {exc}") from None
    await ctx.conn.end_stream()


async def put_archive(ctx: Ctx, ref: str) -> None:
    """``PUT /containers/{id}/archive?path=DIR``: unpack a tar into directory ``DIR``."""
    path = ctx.req.arg("path")
    if not path:
        raise HttpError(400, "path is required")
    c = await lookup(ctx, ref)
    try:
        async with jsonrpc.open_raw(
            ctx.shared.tugd, "container.archive_put", {"id": c["id"], "path": path}
        ) as ch:
            try:
                async for chunk in ctx.conn.body_chunks():
                    await ch.send(frames.STDIN, chunk)
                await ch.send(frames.STDIN, b"")
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass  # tugd refused the archive and ended the stream: its end frame says why
            await jsonrpc.end_of(ch)
    except errors.TugError as exc:
        raise _http_error(exc, path, c["id"]) from None
    await ctx.conn.respond(200, b"", None)
