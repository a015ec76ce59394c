"""Image routes: list, inspect, tag, rmi, load, save, pull (``/images/create``), push.

Load and save go through a file: tugd's ``image.load``/``image.save`` take an absolute path on
its host, and this front door runs on that host as root, so the body is spooled to a private
temporary directory (mode 0700) and removed after.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
from typing import Any

import anyio

from tugwire import dockershapes, errors

from . import shapes
from .http import HttpError, watch_disconnect
from .server import Ctx, Router

NAME = r"(?P<name>.+)"


def register(r: Router) -> None:
    """Add the image routes."""
    r.add("GET", "/images/json", list_images)
    r.add("POST", "/images/load", load)
    r.add("GET", "/images/get", save)
    r.add("POST", "/images/create", pull)
    r.add("POST", "/images/prune", prune)
    r.add("GET", f"/images/{NAME}/json", inspect)
    r.add("GET", f"/images/{NAME}/history", history)
    r.add("GET", f"/images/{NAME}/get", save_one)
    r.add("POST", f"/images/{NAME}/tag", tag)
    r.add("POST", f"/images/{NAME}/push", push)
    r.add("DELETE", f"/images/{NAME}", remove)
    r.add("POST", "/auth", login)


def no_such_image(ref: str) -> HttpError:
    return HttpError(404, f"No such image: {ref}")


async def list_images(ctx: Ctx) -> None:
    """``GET /images/json?filters={"reference":{...}}``."""
    from .system import docker_filters

    filters = docker_filters(ctx.req.json_arg("filters"))
    images = await ctx.call("image.list", {"filters": filters})  # filtered by tugd
    out = [dockershapes.image_summary(img) for img in images]
    out.sort(key=lambda i: i["Created"], reverse=True)
    await ctx.conn.respond_json(200, out)


def _with_tag(ref: str) -> str:
    """A reference as docker normalizes it in messages: ``:latest`` when it names no tag."""
    if "@" in ref or ":" in ref.rsplit("/", 1)[-1]:
        return ref
    return ref + ":latest"


async def inspect(ctx: Ctx, name: str) -> None:
    """``GET /images/{name}/json``; a missing image gets dockerd 20.10's exact message."""
    try:
        img = await ctx.call("image.inspect", {"ref": name})
    except (errors.NotFound, errors.InvalidArgument):
        raise HttpError(404, f"no such image: {name}: No such image: {_with_tag(name)}") from None
    await ctx.conn.respond_json(200, dockershapes.image_inspect(img))


async def tag(ctx: Ctx, name: str) -> None:
    """``POST /images/{name}/tag?repo=&tag=``: 201."""
    repo = ctx.req.arg("repo")
    if not repo:
        raise HttpError(400, "repository name must have at least one component")
    target = f"{repo}:{ctx.req.arg('tag') or 'latest'}"
    try:
        await ctx.call("image.tag", {"source": name, "target": target})
    except errors.NotFound:
        raise no_such_image(name) from None
    await ctx.conn.respond(201, b"", None)


async def remove(ctx: Ctx, name: str) -> None:
    """``DELETE /images/{name}?force=``: ``[{Untagged}, {Deleted}]``."""
    force = ctx.req.flag("force")
    try:
        img = await ctx.call("image.inspect", {"ref": name})
        result = await ctx.call("image.remove", {"ref": name, "force": force})
    except errors.NotFound:
        raise no_such_image(name) from None
    except errors.FailedPrecondition as exc:
        raise HttpError(
            409, f'conflict: unable to remove repository reference "{name}" ({exc.message})'
        ) from None
    out = [{"Deleted": r} if r == img["id"] else {"Untagged": r} for r in result["removed"]]
    await ctx.conn.respond_json(200, out)


async def load(ctx: Ctx) -> None:
    """``POST /images/load``: a docker-save (or OCI) tar body; NDJSON ``Loaded image: ...``."""
    workdir = tempfile.mkdtemp(prefix="tug-docker-load-")
    try:
        path = os.path.join(workdir, "images.tar")
        with open(path, "wb") as f:
            await ctx.conn.body_to_file(f)
        try:
            result = await ctx.call("image.load", {"path": path})
        except (errors.InvalidArgument, errors.NotFound) as exc:
            raise HttpError(400, exc.message) from None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    lines = []
    for item in result["images"]:
        if item.get("repo_tags"):
            lines += [f"Loaded image: {t}\n" for t in item["repo_tags"]]
        else:
            lines.append(f"Loaded image ID: {item['id']}\n")
    body = b"".join(json.dumps({"stream": line}).encode() + b"\n" for line in lines)
    await ctx.conn.respond(200, body, "application/json")


async def _save(ctx: Ctx, refs: list[str]) -> None:
    if not refs:
        raise HttpError(400, "no image names given")
    workdir = tempfile.mkdtemp(prefix="tug-docker-save-")
    try:
        path = os.path.join(workdir, "images.tar")
        try:
            await ctx.call("image.save", {"path": path, "refs": refs})
        except errors.NotFound as exc:
            raise HttpError(404, exc.message) from None
        await ctx.conn.start_stream(200, "application/x-tar")
        async with await anyio.open_file(path, "rb") as f:
            while chunk := await f.read(1 << 20):
                await ctx.conn.send_chunk(chunk)
        await ctx.conn.end_stream()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


async def save(ctx: Ctx) -> None:
    """``GET /images/get?names=a&names=b``: a docker-archive tar."""
    await _save(ctx, ctx.req.query.get("names", []))


async def save_one(ctx: Ctx, name: str) -> None:
    """``GET /images/{name}/get`` (docker-py's ``Image.save``)."""
    await _save(ctx, [name])


def _progress(note: dict[str, Any], verb: str) -> dict[str, Any]:
    action = str(note.get("action", ""))
    status = {
        "downloading": "Downloading",
        "uploading": "Pushing",
        "fetched": "Download complete",
        "exists": "Already exists" if verb == "pull" else "Layer already exists",
        "pushed": "Pushed",
        "mounted": "Mounted from another repository",
    }.get(action, action.capitalize())
    out: dict[str, Any] = {"status": status}
    if note.get("id"):
        out["id"] = note["id"]
    if note.get("total"):
        out["progressDetail"] = {"current": note.get("current") or 0, "total": note["total"]}
    return out


async def _stream_transfer(
    ctx: Ctx, method: str, params: dict[str, Any], verb: str, done: Any, first: dict[str, Any]
) -> None:
    """A pull or push as docker's NDJSON progress; a failure before the stream is an HTTP
    error, after it an in-stream ``errorDetail``."""
    async with ctx.rpc() as rpc, rpc.stream(method, params, buffer=64) as notes:
        await ctx.conn.start_stream(200, "application/json")
        async with watch_disconnect(ctx.conn):
            await ctx.conn.send_chunk(json.dumps(first).encode() + b"\n")
            try:
                async for note in notes:
                    await ctx.conn.send_chunk(json.dumps(_progress(note, verb)).encode() + b"\n")
                result = await notes.result()
                lines = done(result)
            except errors.TugError as exc:
                lines = [{"errorDetail": {"message": exc.message}, "error": exc.message}]
            for line in lines:
                await ctx.conn.send_chunk(json.dumps(line).encode() + b"\n")
            await ctx.conn.end_stream()


async def pull(ctx: Ctx) -> None:
    """``POST /images/create?fromImage=&tag=``: pulled through tugd's ``image.pull``."""
    image = ctx.req.arg("fromImage")
    if not image:
        raise HttpError(400, "import from a source (fromSrc) is not supported: give fromImage")
    tag_ = ctx.req.arg("tag") or ""
    ref = image if not tag_ else (f"{image}@{tag_}" if tag_.startswith("sha256:") else f"{image}:{tag_}")
    await ctx.conn.drain_body()

    def done(result: dict[str, Any]) -> list[dict[str, Any]]:
        return [
            {"status": f"Digest: {result.get('digest', '')}"},
            # as dockerd: the familiar name (busybox:latest), which tugd's result holds
            {"status": f"Status: Downloaded newer image for {result.get('ref') or ref}"},
        ]

    first = {"status": f"Pulling from {_repository_path(image)}", "id": tag_ or "latest"}
    await _stream_transfer(ctx, "image.pull", {"ref": ref}, "pull", done, first)


async def push(ctx: Ctx, name: str) -> None:
    """``POST /images/{name}/push?tag=``: through tugd's ``image.push``."""
    tag_ = ctx.req.arg("tag")
    ref = f"{name}:{tag_}" if tag_ else name
    auth = ctx.req.headers.get("x-registry-auth")
    if auth:
        try:
            json.loads(base64.urlsafe_b64decode(auth + "=" * (-len(auth) % 4)) or b"{}")
        except ValueError:
            raise HttpError(400, "invalid X-Registry-Auth header") from None
    await ctx.conn.drain_body()

    def done(result: dict[str, Any]) -> list[dict[str, Any]]:
        digest = result.get("digest", "")
        t = ref.rsplit(":", 1)[-1] if ":" in ref.rsplit("/", 1)[-1] else "latest"
        # tugd's push result has no manifest size: the line leaves it out (dockerd: "size: N").
        return [{"status": f"{t}: digest: {digest}"}, {"aux": {"Tag": t, "Digest": digest, "Size": 0}}]

    first = {"status": f"The push refers to repository [{name}]"}
    await _stream_transfer(ctx, "image.push", {"ref": ref}, "push", done, first)


def _repository_path(image: str) -> str:
    """``tug/bb`` of ``127.0.0.1:5000/tug/bb``; ``library/busybox`` of ``docker.io/library/busybox``."""
    first, _, rest = image.partition("/")
    return rest if rest and ("." in first or ":" in first or first == "localhost") else image


async def login(ctx: Ctx) -> None:
    """``POST /auth`` ``{username, password, serveraddress}`` (``docker login``): checked and
    saved by tugd's ``auth.login``, then used for every pull and push to that registry."""
    body = await ctx.body_json(required=True)
    if not isinstance(body, dict):
        raise HttpError(400, "the login body must be a JSON object")
    from .shapes import get_str

    user, password = get_str(body, "username") or "", get_str(body, "password") or ""
    registry = get_str(body, "serveraddress") or "docker.io"
    try:
        await ctx.call("auth.login", {"registry": registry, "username": user, "password": password})
    except errors.FailedPrecondition as exc:
        raise HttpError(
            401, f"login attempt to {registry} failed with status: 401 Unauthorized ({exc.message})"
        ) from None
    await ctx.conn.respond_json(200, {"Status": "Login Succeeded", "IdentityToken": ""})


async def prune(ctx: Ctx) -> None:
    """``POST /images/prune`` (``dangling=false``: every unused image, ``image prune -a``)."""
    from .system import docker_filters

    filters = docker_filters(ctx.req.json_arg("filters"))
    dangling = filters.pop("dangling", ["true"])
    if filters:
        raise HttpError(400, f"invalid filter '{next(iter(filters))}'")
    result = await ctx.call("image.prune", {"all": dangling[0] in ("false", "0")})
    deleted = [{"Untagged": n} for n in result.get("untagged", [])]
    deleted += [{"Deleted": i} for i in result.get("deleted", [])]
    body = {"ImagesDeleted": deleted or None, "SpaceReclaimed": int(result.get("space_reclaimed", 0))}
    await ctx.conn.respond_json(200, body)


async def history(ctx: Ctx, name: str) -> None:
    """``GET /images/{name}/history``: the image config's history, newest first."""
    try:
        img = await ctx.call("image.inspect", {"ref": name})
    except (errors.NotFound, errors.InvalidArgument):
        raise no_such_image(name) from None
    entries = list(img.get("history") or [])
    out = []
    for i, h in enumerate(reversed(entries)):
        out.append(
            {
                "Id": img["id"] if i == 0 else "<missing>",
                "Created": shapes.epoch(h.get("created")),
                "CreatedBy": h.get("created_by", ""),
                "Tags": (img.get("repo_tags") or None) if i == 0 else None,
                "Size": 0,
                "Comment": h.get("comment", ""),
            }
        )
    await ctx.conn.respond_json(200, out)
