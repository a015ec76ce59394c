"""Exec routes: ``POST /containers/{id}/exec`` (create), ``POST /exec/{id}/start`` (hijacked),
``GET /exec/{id}/json`` (inspect, with the true exit code), ``POST /exec/{id}/resize``.

Docker splits an exec into create, start and inspect; tugd's ``container.exec`` runs one whole.
So this adapter keeps the one table a restart loses: the execs created and not yet started, and
the exit codes of finished ones (the last :data:`KEEP` of them) — what tugd should grow as
``exec.create``/``exec.inspect`` (see docs/docker-api.md). The exit code is recorded *before*
the hijacked stream is closed: ``docker exec`` inspects the moment its stream ends.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc

from tugwire import errors

from . import streams
from .containers import lookup
from .http import HttpError, peer_closed, read_raw
from .server import Ctx, Router
from .shapes import get_bool, get_str, get_strs

KEEP = 1000  # finished execs remembered for inspect


@dataclass
class Exec:
    """One docker exec: its config, then its process and exit."""

    id: str
    container_id: str
    cmd: list[str]
    env: list[str]
    workdir: str | None
    user: str | None
    tty: bool
    stdin: bool
    stdout: bool
    stderr: bool
    running: bool = False
    exit_code: int | None = None
    pid: int = 0
    tugd_id: str | None = None
    started: bool = False


def register(r: Router) -> None:
    """Add the exec routes."""
    r.add("POST", "/containers/(?P<ref>[^/]+)/exec", create)
    r.add("POST", "/exec/(?P<eid>[^/]+)/start", start)
    r.add("GET", "/exec/(?P<eid>[^/]+)/json", inspect)
    r.add("POST", "/exec/(?P<eid>[^/]+)/resize", resize)


def _get(ctx: Ctx, eid: str) -> Exec:
    ex = ctx.shared.execs.get(eid)
    if ex is None:
        raise HttpError(404, f"No such exec instance: {eid}")
    assert isinstance(ex, Exec)
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
    ex = Exec(
        id=secrets.token_hex(32),
        container_id=c["id"],
        cmd=cmd,
        env=get_strs(body, "Env") or [],
        workdir=get_str(body, "WorkingDir") or None,
        user=get_str(body, "User") or None,
        tty=get_bool(body, "Tty"),
        stdin=get_bool(body, "AttachStdin"),
        stdout=get_bool(body, "AttachStdout"),
        stderr=get_bool(body, "AttachStderr"),
    )
    table = ctx.shared.execs
    table[ex.id] = ex
    while len(table) > KEEP:
        oldest = next((k for k, v in table.items() if not v.running), None)
        if oldest is None:
            break
        del table[oldest]
    await ctx.conn.respond_json(201, {"Id": ex.id})


async def inspect(ctx: Ctx, eid: str) -> None:
    """``GET /exec/{id}/json``."""
    ex = _get(ctx, eid)
    await ctx.conn.respond_json(
        200,
        {
            "ID": ex.id,
            "Running": ex.running,
            "ExitCode": ex.exit_code,
            "ProcessConfig": {
                "tty": ex.tty,
                "entrypoint": ex.cmd[0],
                "arguments": ex.cmd[1:],
                "privileged": False,
                "user": ex.user or "",
            },
            "OpenStdin": ex.stdin,
            "OpenStderr": ex.stderr,
            "OpenStdout": ex.stdout,
            "CanRemove": False,
            "ContainerID": ex.container_id,
            "DetachKeys": "",
            "Pid": ex.pid,
        },
    )


async def resize(ctx: Ctx, eid: str) -> None:
    """``POST /exec/{id}/resize?h=&w=``: 200 (201 in docker; the CLI ignores both)."""
    ex = _get(ctx, eid)
    rows, cols = ctx.req.integer("h", 24), ctx.req.integer("w", 80)
    if not ex.running or ex.tugd_id is None:
        raise HttpError(409, f"exec {eid} is not running")
    await ctx.call("container.exec.resize", {"exec_id": ex.tugd_id, "rows": rows, "cols": cols})
    await ctx.conn.respond(200, b"", "text/plain; charset=utf-8")


def _params(ex: Exec, detach: bool) -> dict[str, Any]:
    params: dict[str, Any] = {
        "id": ex.container_id,
        "cmd": ex.cmd,
        "tty": ex.tty,
        "stdin": ex.stdin and not detach,
        "detach": detach,
    }
    if ex.env:
        params["env"] = ex.env
    if ex.workdir:
        params["workdir"] = ex.workdir
    if ex.user:
        params["user"] = ex.user
    return params


async def start(ctx: Ctx, eid: str) -> None:
    """``POST /exec/{id}/start``: hijacked (or a raw 200 body without ``Upgrade``), the output
    until the process ends; ``Detach``: 200 at once."""
    body = await ctx.body_json() or {}
    if not isinstance(body, dict):
        raise HttpError(400, "the exec start config must be a JSON object")
    detach = get_bool(body, "Detach")
    ex = _get(ctx, eid)
    if ex.started:
        raise HttpError(409, f"Exec {eid} has already run")
    ex.started = True
    async with ctx.rpc() as rpc:
        run = streams.ExecRun(rpc, _params(ex, detach))
        if detach:
            try:
                async for _ in run.output():
                    pass
            except errors.FailedPrecondition as exc:
                raise HttpError(409, exc.message) from None
            ex.pid = int(run.pid or 0)
            ex.tugd_id = run.exec_id
            await ctx.conn.respond(200, b"", None)
            return
        mux = not ex.tty
        ctype = streams.MULTIPLEXED if mux and ctx.at_least("1.42") else streams.RAW
        output = run.output()
        ex.running = True
        try:
            raw, first = await ctx.conn.hijack(ctype)
            started = anyio.Event()
            async with anyio.create_task_group() as tg:
                if ex.stdin:
                    tg.start_soon(_pump_stdin, run, raw, first, started, tg)
                else:
                    tg.start_soon(_watch_gone, raw, tg)
                want = {streams.STDOUT: ex.stdout, streams.STDERR: ex.stderr}
                try:
                    async for stream, data in output:
                        if stream < 0:
                            ex.pid, ex.tugd_id = int(run.pid or 0), run.exec_id
                            started.set()
                            continue
                        if want.get(stream, True):
                            await raw.send(streams.encode(stream, data, mux))
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    pass
                except errors.TugError as exc:
                    # runc could not start it (docker: 126/127 and the message on the stream)
                    run.result = {"exit_code": 126, "error": exc.message}
                    msg = f"OCI runtime exec failed: {exc.message}\r\n".encode()
                    await raw.send(streams.encode(streams.STDOUT, msg, mux))
                # Final before the stream closes: docker exec inspects at once.
                code = run.result.get("exit_code")
                ex.exit_code = int(code) if code is not None else 126
                if run.result.get("error"):
                    msg = (str(run.result["error"]) + "\n").encode()
                    await raw.send(streams.encode(streams.STDERR if mux else streams.STDOUT, msg, mux))
                tg.cancel_scope.cancel()
        finally:
            ex.running = False
            if ex.exit_code is None:
                ex.exit_code = run.result.get("exit_code") if run.result else None
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
