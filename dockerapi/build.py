"""``POST /build``: docker's classic builder (``DOCKER_BUILDKIT=0``) through tugd's ``image.build``.

The body is the context as a tar; it is checked whole and unpacked (no link followed, nothing
outside its root: :func:`tugwire.tarcopy.extract`, as ``docker cp`` uploads are) into a
private temporary directory on tugd's host, whose path is what ``image.build`` takes. tugd's
step, status and output notifications become docker's ``{"stream": ...}`` lines; the result
``{"aux": {"ID"}}``; a failure docker's
``{"errorDetail": {"message"}, "error"}``.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
from typing import Any

import anyio.to_thread

from tugwire import errors, tarcopy

from .http import HttpError, watch_disconnect
from .server import Ctx, Router


def register(r: Router) -> None:
    """Add the build route."""
    r.add("POST", "/build", build)


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def build_params(ctx: Ctx, context: str) -> tuple[dict[str, Any], list[str]]:
    """``image.build`` params from docker's query; the extra tags to add after."""
    req = ctx.req
    tags = req.query.get("t", [])
    params: dict[str, Any] = {"context": context, "dockerfile": req.arg("dockerfile") or "Dockerfile"}
    if tags:
        params["tag"] = tags[0]
    params["no_cache"] = req.flag("nocache")
    raw_args = req.json_arg("buildargs")
    if raw_args:
        if not isinstance(raw_args, dict) or not all(
            isinstance(v, (str, type(None))) for v in raw_args.values()
        ):
            raise HttpError(400, "buildargs must be a JSON object of strings")
        params["build_args"] = {k: v for k, v in raw_args.items() if v is not None}
    network = req.arg("networkmode")
    if network and network not in ("default", "none", "host"):
        raise HttpError(400, f"build network {network!r} is not supported: none or host")
    if network == "host":
        params["network"] = "host"
    if req.arg("target"):
        params["target"] = req.arg("target")
    return params, tags[1:]


def _unpack(tar_path: str, root: str) -> None:
    """Check and unpack the context's tar into the empty directory ``root``."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with open(tar_path, "rb") as f:
            tarcopy.extract(fd, f, owners=True)
    finally:
        os.close(fd)


async def build(ctx: Ctx) -> None:
    """``POST /build?t=&dockerfile=&q=&nocache=&buildargs=``, the context as a tar body."""
    quiet = ctx.req.flag("q")
    if ctx.req.arg("remote"):
        raise HttpError(400, "a remote build context is not supported: send the context as a tar")
    workdir = tempfile.mkdtemp(prefix="tug-docker-build-")
    try:
        tar_path = os.path.join(workdir, "context.tar")
        with open(tar_path, "wb") as f:
            await ctx.conn.body_to_file(f)
        context = os.path.join(workdir, "context")
        os.mkdir(context, 0o700)
        try:
            await anyio.to_thread.run_sync(_unpack, tar_path, context)
        except errors.InvalidArgument as exc:
            raise HttpError(400, f"the build context is refused: {exc.message}") from None
        params, more_tags = build_params(ctx, context)
        async with ctx.rpc() as rpc, rpc.stream("image.build", params, buffer=64) as notes:
            await ctx.conn.start_stream(200, "application/json")
            async with watch_disconnect(ctx.conn):
                try:
                    async for note in notes:
                        text = _note_text(note)
                        if text and not quiet:
                            await ctx.conn.send_chunk(_line({"stream": text}))
                    result = await notes.result()
                    for tag in more_tags:
                        await rpc.call("image.tag", {"source": result["id"], "target": tag})
                        if not quiet:
                            await ctx.conn.send_chunk(_line({"stream": f"Successfully tagged {tag}\n"}))
                    await ctx.conn.send_chunk(_line({"aux": {"ID": result["id"]}}))
                    if quiet:
                        await ctx.conn.send_chunk(_line({"stream": result["id"] + "\n"}))
                except errors.TugError as exc:
                    await ctx.conn.send_chunk(
                        _line({"errorDetail": {"message": exc.message}, "error": exc.message})
                    )
                await ctx.conn.end_stream()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _note_text(note: dict[str, Any]) -> str:
    """The docker ``stream`` text of one ``image.build`` notification."""
    if "step" in note:
        return f"Step {note['step']}/{note.get('total', '?')} : {note.get('instruction', '')}\n"
    if "message" in note:
        message = str(note["message"])
        return message if message.endswith("\n") else message + "\n"
    if "data" in note:
        return base64.b64decode(note["data"]).decode(errors="replace")
    return ""
