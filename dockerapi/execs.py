"""Exec routes: ``POST /containers/{id}/exec`` (create), ``POST /exec/{id}/start`` (hijacked),
``GET /exec/{id}/json`` (inspect, with the true exit code), ``POST /exec/{id}/resize``.

Each is one of tugd's exec verbs: ``exec.create``, ``exec.start`` (through the stream seam,
:class:`streams.ExecRun`, as ``container.exec`` of the created exec), ``exec.inspect``. The
records are tugd's, so a restart of this process forgets nothing, and a detached exec's exit code
is known. tugd records the exit code before the exec's stream ends: ``docker exec`` inspects the
moment its stream ends.
"""

from __future__ import annotations

from typing import Any

import anyio
import anyio.abc

from tugwire import errors

from . import streams
from .containers import lookup
from .http import HttpError, peer_closed, read_raw
from .server import Ctx, Router
from .shapes import get_bool, get_str, get_strs


def register(r: Router) -> None:
    """Add the exec routes."""
    r.add("POST", "/containers/(?P<ref>[^/]+)/exec", create)
    r.add("POST", "/exec/(?P<eid>[^/]+)/start", start)
    r.add("GET", "/exec/(?P<eid>[^/]+)/json", inspect)
    r.add("POST", "/exec/(?P<eid>[^/]+)/resize", resize)


async def _get(ctx: Ctx, eid: str) -> dict[str, Any]:
    """tugd's record of exec ``eid``: docker's 404 when there is none."""
    try:
        ex: dict[str, Any] = await ctx.call("exec.inspect", {"exec_id": eid})
    except (errors.NotFound, errors.InvalidArgument):
        raise HttpError(404, f"No such exec instance: {eid}") from None
    return ex


async def create(ctx: Ctx, ref: str) -> None:
    """``POST /containers/{id}/exec``: 201 ``{Id}``; 409 if the container does not run."""
    body = await ctx.body_json(required=True)
    if not isinstance(body, dict):
        raise HttpError(400, "the exec config must be a JSON object")
    cmd = get_strs(body, "Cmd")
    if not cmd:
        raise HttpError(400, "No exec command specified")
    c = await lookup(ctx, ref)
    if c.get("state") != "running":
        state = "paused" if c.get("state") == "paused" else "not running"
        raise HttpError(409, f"Container {c['id']} is {state}")
    params: dict[str, Any] = {
        "id": c["id"],
        "cmd": cmd,
        "env": get_strs(body, "Env") or [],
        "tty": get_bool(body, "Tty"),
        "stdin": get_bool(body, "AttachStdin"),
        "stdout": get_bool(body, "AttachStdout"),
        "stderr": get_bool(body, "AttachStderr"),
    }
    workdir, user = get_str(body, "WorkingDir"), get_str(body, "User")
    if workdir:
        params["workdir"] = workdir
    if user:
        params["user"] = user
    try:
        ex = await ctx.call("exec.create", params)
    except errors.FailedPrecondition:  # it stopped meanwhile
        raise HttpError(409, f"Container {c['id']} is not running") from None
    await ctx.conn.respond_json(201, {"Id": ex["id"]})


async def inspect(ctx: Ctx, eid: str) -> None:
    """``GET /exec/{id}/json``."""
    ex = await _get(ctx, eid)
    cmd = ex.get("cmd") or [""]
    await ctx.conn.respond_json(
        200,
        {
            "ID": ex["id"],
            "Running": bool(ex.get("running")),
            "ExitCode": ex.get("exit_code"),
            "ProcessConfig": {
                "tty": bool(ex.get("tty")),
                "entrypoint": cmd[0],
                "arguments": cmd[1:],
                "privileged": False,
                "user": ex.get("user") or "",
            },
            "OpenStdin": bool(ex.get("stdin")),
            "OpenStderr": bool(ex.get("stderr")),
            "OpenStdout": bool(ex.get("stdout")),
            "CanRemove": False,
            "ContainerID": ex.get("container_id", ""),
            "DetachKeys": "",
            "Pid": int(ex.get("pid") or 0),
        },
    )


async def resize(ctx: Ctx, eid: str) -> None:
    """``POST /exec/{id}/resize?h=&w=``: 200 (201 in docker; the CLI ignores both)."""
    rows, cols = ctx.req.integer("h", 24), ctx.req.integer("w", 80)
    try:
        await ctx.call("container.exec.resize", {"exec_id": eid, "rows": rows, "cols": cols})
    except errors.NotFound:
        await _get(ctx, eid)  # 404 unless it exists
        raise HttpError(409, f"exec {eid} is not running") from None
    await ctx.conn.respond(200, b"", "text/plain; charset=utf-8")


async def start(ctx: Ctx, eid: str) -> None:
    """``POST /exec/{id}/start``: hijacked (or a raw 200 body without ``Upgrade``), the output
    until the process ends; ``Detach``: 200 at once."""
    body = await ctx.body_json() or {}
    if not isinstance(body, dict):
        raise HttpError(400, "the exec start config must be a JSON object")
    detach = get_bool(body, "Detach")
    ex = await _get(ctx, eid)
    if ex.get("started"):
        raise HttpError(409, f"Exec {eid} has already run")
    async with ctx.rpc() as rpc:
        run = streams.ExecRun(rpc, {"exec_id": eid, "detach": detach})
        if detach:
            try:
                async for _ in run.output():
                    pass
            except errors.FailedPrecondition as exc:
                raise HttpError(409, exc.message) from None
            await ctx.conn.respond(200, b"", None)
            return
        mux = not ex.get("tty")
        ctype = streams.MULTIPLEXED if mux and ctx.at_least("1.42") else streams.RAW
        output = run.output()
        try:
            raw, first = await ctx.conn.hijack(ctype)
            started = anyio.Event()
            async with anyio.create_task_group() as tg:
                if ex.get("stdin"):
                    tg.start_soon(_pump_stdin, run, raw, first, started, tg)
                else:
                    tg.start_soon(_watch_gone, raw, tg)
                want = {streams.STDOUT: bool(ex.get("stdout")), streams.STDERR: bool(ex.get("stderr"))}
                try:
                    async for stream, data in output:
                        if stream < 0:
                            started.set()
                            continue
                        if want.get(stream, True):
                            await raw.send(streams.encode(stream, data, mux))
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    pass
                except errors.TugError as exc:
                    # runc could not start it (docker: 126/127 and the message on the stream);
                    # tugd has recorded 126
                    msg = f"OCI runtime exec failed: {exc.message}\r\n".encode()
                    await raw.send(streams.encode(streams.STDOUT, msg, mux))
                if run.result.get("error"):
                    msg = (str(run.result["error"]) + "\n").encode()
                    await raw.send(streams.encode(streams.STDERR if mux else streams.STDOUT, msg, mux))
                tg.cancel_scope.cancel()
        finally:
            await output.aclose()


async def _pump_stdin(
    run: streams.ExecRun,
    raw: anyio.abc.ByteStream,
    first: bytes,
    started: anyio.Event,
    tg: anyio.abc.TaskGroup,
) -> None:
    """Client bytes to the exec's stdin; a half-close closes it, a whole close (the client went
    away) stops streaming to it (the process runs on, as docker's)."""
    await started.wait()
    data = first
    while True:
        if data:
            await run.send_stdin(data)
        data = await read_raw(raw)
        if not data:
            break
    if peer_closed(raw):
        tg.cancel_scope.cancel()
        return
    try:
        await run.close_stdin()
    except errors.NotFound:
        pass  # it ended already


async def _watch_gone(raw: anyio.abc.ByteStream, tg: anyio.abc.TaskGroup) -> None:
    """Without stdin: drop what the client sends; stop streaming to it once it went away."""
    while await read_raw(raw):
        pass
    if peer_closed(raw):
        tg.cancel_scope.cancel()
