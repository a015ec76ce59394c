"""Container routes: create, start, attach (hijacked), wait, stop, kill, restart, rm, ps, inspect,
logs, pause, unpause, rename, top, resize, stats."""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncGenerator
from typing import Any

import anyio
import anyio.abc

from tugwire import dockershapes, errors, jsonrpc

from . import shapes, streams
from .http import HttpError, peer_closed, read_raw, watch_disconnect
from .server import Ctx, Router
from .shapes import get_bool, get_int, get_obj, get_str, get_str_map, get_strs

ID = r"(?P<ref>[^/]+)"


def register(r: Router) -> None:
    """Add the container routes."""
    r.add("POST", "/containers/create", create)
    r.add("GET", "/containers/json", ps)
    r.add("POST", "/containers/prune", prune)
    r.add("GET", f"/containers/{ID}/json", inspect)
    r.add("POST", f"/containers/{ID}/start", start)
    r.add("POST", f"/containers/{ID}/attach", attach)
    r.add("POST", f"/containers/{ID}/wait", wait)
    r.add("POST", f"/containers/{ID}/stop", stop)
    r.add("POST", f"/containers/{ID}/kill", kill)
    r.add("POST", f"/containers/{ID}/restart", restart)
    r.add("DELETE", f"/containers/{ID}", remove)
    r.add("GET", f"/containers/{ID}/logs", logs)
    r.add("POST", f"/containers/{ID}/pause", pause)
    r.add("POST", f"/containers/{ID}/unpause", unpause)
    r.add("POST", f"/containers/{ID}/rename", rename)
    r.add("GET", f"/containers/{ID}/top", top)
    r.add("GET", f"/containers/{ID}/changes", changes)
    r.add("POST", f"/containers/{ID}/resize", resize)


def no_such_container(ref: str) -> HttpError:
    return HttpError(404, f"No such container: {ref}")


async def lookup(ctx: Ctx, ref: str, rpc: jsonrpc.RpcClient | None = None) -> dict[str, Any]:
    """``container.inspect`` of ``ref``; docker's 404 when there is none."""
    try:
        if rpc is not None:
            return dict(await rpc.call("container.inspect", {"id": ref}))
        return dict(await ctx.call("container.inspect", {"id": ref}))
    except errors.NotFound:
        raise no_such_container(ref) from None


# ------------------------------------------------------------------------------------- create


def create_params(body: Any, name: str | None) -> tuple[dict[str, Any], list[str]]:
    """tugd's ``container.create`` params of docker's create body, and the warnings."""
    if not isinstance(body, dict):
        raise HttpError(400, "the container config must be a JSON object")
    warnings: list[str] = []
    image = get_str(body, "Image")
    if not image:
        raise HttpError(400, "config cannot be empty in order to create a container")
    p: dict[str, Any] = {"image": image}
    if name:
        if not re.fullmatch(r"/?[a-zA-Z0-9][a-zA-Z0-9_.-]+", name):
            raise HttpError(
                400, f"Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
            )
        p["name"] = name.lstrip("/")
    cmd = get_strs(body, "Cmd")
    if cmd:
        p["cmd"] = cmd
    if "Entrypoint" in body and body["Entrypoint"] is not None:
        ep = get_strs(body, "Entrypoint") or []
        p["entrypoint"] = [] if ep == [""] else ep
    env = get_strs(body, "Env")
    if env:
        p["env"] = env
    for src, dst in (
        ("WorkingDir", "workdir"),
        ("User", "user"),
        ("Hostname", "hostname"),
        ("StopSignal", "stop_signal"),
    ):
        text = get_str(body, src)
        if text:
            p[dst] = text
    stop_timeout = get_int(body, "StopTimeout")
    if stop_timeout is not None:
        p["stop_timeout"] = stop_timeout
    p["tty"] = get_bool(body, "Tty")
    p["stdin"] = get_bool(body, "OpenStdin")
    labels = get_str_map(body, "Labels")
    if labels:
        p["labels"] = labels
    get_obj(body, "ExposedPorts")
    health = get_obj(body, "Healthcheck")
    if health:
        test = get_strs(health, "Test") or []
        if test[:1] == ["NONE"]:
            p["health_cmd"] = "none"
        elif test[:1] == ["CMD-SHELL"] and len(test) > 1:
            p["health_cmd"] = test[1]
        elif test[:1] == ["CMD"] and len(test) > 1:
            p["health_cmd"] = " ".join(test[1:])
        for src, dst in (
            ("Interval", "health_interval"),
            ("Timeout", "health_timeout"),
            ("StartPeriod", "health_start_period"),
        ):
            ns = get_int(health, src)
            if ns:
                p[dst] = ns / 1e9
        retries = get_int(health, "Retries")
        if retries:
            p["health_retries"] = retries
    host = get_obj(body, "HostConfig")
    p["auto_remove"] = get_bool(host, "AutoRemove")
    network = get_str(host, "NetworkMode")
    if network and network != "default":
        p["network"] = network
    volumes = []
    for bind in get_strs(host, "Binds") or []:
        parts = bind.split(":")
        if len(parts) < 2 or not parts[0].startswith("/"):
            raise HttpError(400, f"invalid volume specification: '{bind}' (named volumes are not supported)")
        volumes.append(
            {
                "source": parts[0],
                "destination": parts[1],
                "readonly": "ro" in parts[2:3] and parts[2].split(",").count("ro") > 0,
            }
        )
    mounts = host.get("Mounts") or []
    if not isinstance(mounts, list):
        raise HttpError(400, "json: cannot unmarshal field Mounts: want a list")
    for m in mounts:
        if not isinstance(m, dict) or m.get("Type") != "bind":
            raise HttpError(400, "only bind mounts are supported")
        volumes.append(
            {
                "source": get_str(m, "Source"),
                "destination": get_str(m, "Target"),
                "readonly": get_bool(m, "ReadOnly"),
            }
        )
    if volumes:
        p["volumes"] = volumes
    ports = []
    for port, bindings in get_obj(host, "PortBindings").items():
        cport, _, proto = port.partition("/")
        for b in bindings or [{}]:
            if not isinstance(b, dict):
                raise HttpError(400, "json: cannot unmarshal field PortBindings: want objects")
            hip, hport = get_str(b, "HostIp") or "", get_str(b, "HostPort") or ""
            spec = f"{hip}:{hport}:{cport}" if hip else (f"{hport}:{cport}" if hport else cport)
            ports.append(f"{spec}/{proto or 'tcp'}")
    if ports:
        p["ports"] = ports
    if get_bool(host, "PublishAllPorts"):
        p["publish_all"] = True
    restart = get_obj(host, "RestartPolicy")
    policy = get_str(restart, "Name")
    if policy and policy != "no":
        retries = get_int(restart, "MaximumRetryCount")
        p["restart"] = f"{policy}:{retries}" if policy == "on-failure" and retries else policy
    memory = get_int(host, "Memory")
    if memory:
        p["memory"] = memory
    nano = get_int(host, "NanoCpus")
    if nano:
        p["cpus"] = nano / 1e9
    pids = get_int(host, "PidsLimit")
    if pids and pids > 0:
        p["pids_limit"] = pids
    for src, dst in (("Privileged", "privileged"), ("ReadonlyRootfs", "read_only"), ("Init", "init")):
        if get_bool(host, src):
            p[dst] = True
    for src, dst in (
        ("CapAdd", "cap_add"),
        ("CapDrop", "cap_drop"),
        ("SecurityOpt", "security_opt"),
        ("Dns", "dns"),
    ):
        value = get_strs(host, src)
        if value:
            p[dst] = value
    extra_hosts = get_strs(host, "ExtraHosts")
    if extra_hosts:
        p["add_hosts"] = extra_hosts
    endpoints = get_obj(get_obj(body, "NetworkingConfig"), "EndpointsConfig")
    for net_name, endpoint in endpoints.items():
        if not isinstance(endpoint, dict):
            raise HttpError(400, "json: cannot unmarshal field EndpointsConfig: want objects")
        if net_name != network and network not in (None, "default"):
            continue
        ip = get_str(get_obj(endpoint, "IPAMConfig"), "IPv4Address")
        if ip:
            p["ip"] = ip
        aliases = get_strs(endpoint, "Aliases")
        if aliases:
            p["network_aliases"] = aliases
    return p, warnings


async def create(ctx: Ctx) -> None:
    """``POST /containers/create?name=``: 201 ``{Id, Warnings}``."""
    body = await ctx.body_json(required=True)
    params, warnings = create_params(body, ctx.req.arg("name"))
    try:
        result = await ctx.call("container.create", params)
    except errors.NotFound as exc:
        if "image" in exc.message.lower():
            ref = (
                params["image"] if ":" in params["image"].rsplit("/", 1)[-1] else params["image"] + ":latest"
            )
            raise HttpError(404, f"No such image: {ref}") from None
        raise
    except errors.AlreadyExists:
        raise HttpError(
            409,
            f'Conflict. The container name "/{params.get("name")}" is already in use. '
            "You have to remove (or rename) that container to be able to reuse that name.",
        ) from None
    await ctx.conn.respond_json(201, {"Id": result["id"], "Warnings": warnings})


# --------------------------------------------------------------------------------- list, inspect


async def ps(ctx: Ctx) -> None:
    """``GET /containers/json?all=&limit=&filters=``."""
    from .system import docker_filters

    filters = docker_filters(ctx.req.json_arg("filters"))
    limit = ctx.req.integer("limit")
    everything = ctx.req.flag("all") or (limit is not None and limit > 0)  # dockerd: -n is any state
    listed = await ctx.call(
        "container.list", {"all": everything, "filters": filters, "size": ctx.req.flag("size")}
    )
    out = [dockershapes.container_summary(c) for c in listed]  # filtered and newest first by tugd
    if limit is not None and limit > 0:
        out = out[:limit]
    await ctx.conn.respond_json(200, out)


async def prune(ctx: Ctx) -> None:
    """``POST /containers/prune``: remove every container that does not run."""
    from .system import docker_filters

    if docker_filters(ctx.req.json_arg("filters")):
        raise HttpError(400, "container prune filters are not supported")
    deleted = []
    async with ctx.rpc() as rpc:
        for c in await rpc.call("container.list", {"all": True}):
            if c.get("state") in ("created", "exited"):
                try:
                    await rpc.call("container.delete", {"id": c["id"]})
                except (errors.NotFound, errors.FailedPrecondition):
                    continue  # removed, or started, meanwhile
                deleted.append(c["id"])
    await ctx.conn.respond_json(200, {"ContainersDeleted": deleted or None, "SpaceReclaimed": 0})


async def inspect(ctx: Ctx, ref: str) -> None:
    """``GET /containers/{id}/json``."""
    await ctx.conn.respond_json(200, dockershapes.container_inspect(await lookup(ctx, ref)))


# -------------------------------------------------------------------------------------- verbs


async def start(ctx: Ctx, ref: str) -> None:
    """``POST /containers/{id}/start``: 204; 304 if it runs already."""
    await ctx.conn.drain_body()
    c = await lookup(ctx, ref)
    if c.get("state") in ("running", "paused"):
        await ctx.conn.respond(304)
        return
    try:
        await ctx.call("container.start", {"id": c["id"]})
    except errors.FailedPrecondition as exc:
        if "running" in exc.message:
            await ctx.conn.respond(304)
            return
        raise HttpError(500, exc.message) from None
    except errors.RuntimeFailed as exc:
        raise HttpError(500, exc.message) from None
    await ctx.conn.respond(204)


async def stop(ctx: Ctx, ref: str) -> None:
    """``POST /containers/{id}/stop?t=``: 204; 304 if it does not run."""
    timeout = ctx.req.integer("t")
    c = await lookup(ctx, ref)
    if c.get("state") not in ("running", "paused"):
        await ctx.conn.respond(304)
        return
    params: dict[str, Any] = {"id": c["id"], **_signal(ctx)}
    if timeout is not None and timeout >= 0:
        params["timeout"] = timeout
    await ctx.call("container.stop", params)
    await ctx.conn.respond(204)


async def restart(ctx: Ctx, ref: str) -> None:
    """``POST /containers/{id}/restart?t=``: 204."""
    timeout = ctx.req.integer("t")
    c = await lookup(ctx, ref)
    params: dict[str, Any] = {"id": c["id"], **_signal(ctx)}
    if timeout is not None and timeout >= 0:
        params["timeout"] = timeout
    await ctx.call("container.restart", params)
    await ctx.conn.respond(204)


def _signal(ctx: Ctx) -> dict[str, Any]:
    """``?signal=`` of stop and restart (API 1.42: ``docker stop -s``), as tugd's ``signal``."""
    sig = ctx.req.arg("signal")
    if not sig:
        return {}
    return {"signal": int(sig) if sig.isdigit() else sig}


async def kill(ctx: Ctx, ref: str) -> None:
    """``POST /containers/{id}/kill?signal=``: 204; 409 if it does not run."""
    c = await lookup(ctx, ref)
    params: dict[str, Any] = {"id": c["id"]}
    sig = ctx.req.arg("signal")
    if sig:
        params["signal"] = int(sig) if sig.isdigit() else sig
    try:
        await ctx.call("container.kill", params)
    except errors.FailedPrecondition:
        raise HttpError(409, f"Cannot kill container: {ref}: Container {c['id']} is not running") from None
    await ctx.conn.respond(204)


async def remove(ctx: Ctx, ref: str) -> None:
    """``DELETE /containers/{id}?force=``: 204; 409 for a running one without force."""
    force = ctx.req.flag("force")
    ctx.req.flag("v")
    c = await lookup(ctx, ref)
    try:
        await ctx.call("container.delete", {"id": c["id"], "force": force})
    except errors.FailedPrecondition:
        raise HttpError(
            409,
            f"You cannot remove a {shapes.docker_state(c.get('state'))} container {c['id']}. "
            "Stop the container before attempting removal or force remove",
        ) from None
    except errors.NotFound:
        raise no_such_container(ref) from None
    await ctx.conn.respond(204)


async def pause(ctx: Ctx, ref: str) -> None:
    """``POST /containers/{id}/pause``: 204; 409 if it does not run."""
    c = await lookup(ctx, ref)
    await ctx.call("container.pause", {"id": c["id"]})
    await ctx.conn.respond(204)


async def unpause(ctx: Ctx, ref: str) -> None:
    """``POST /containers/{id}/unpause``: 204; 409 if it is not paused."""
    c = await lookup(ctx, ref)
    await ctx.call("container.unpause", {"id": c["id"]})
    await ctx.conn.respond(204)


async def rename(ctx: Ctx, ref: str) -> None:
    """``POST /containers/{id}/rename?name=``: 204; 409 if the name is taken."""
    name = ctx.req.arg("name")
    if not name:
        raise HttpError(400, "Neither old nor new names may be empty")
    c = await lookup(ctx, ref)
    try:
        await ctx.call("container.rename", {"id": c["id"], "name": name.lstrip("/")})
    except errors.AlreadyExists:
        raise HttpError(409, f'Conflict. The container name "/{name}" is already in use') from None
    await ctx.conn.respond(204)


async def top(ctx: Ctx, ref: str) -> None:
    """``GET /containers/{id}/top``: ``{Titles, Processes}``."""
    c = await lookup(ctx, ref)
    try:
        result = await ctx.call("container.top", {"id": c["id"]})
    except errors.FailedPrecondition:
        raise HttpError(409, f"Container {c['id']} is not running") from None
    await ctx.conn.respond_json(200, {"Titles": result["titles"], "Processes": result["processes"]})


async def changes(ctx: Ctx, ref: str) -> None:
    """``GET /containers/{id}/changes`` (``docker diff``): ``[{Path, Kind}]``, sorted by path."""
    c = await lookup(ctx, ref)
    found = await ctx.call("container.changes", {"id": c["id"]})
    await ctx.conn.respond_json(200, [{"Path": x["path"], "Kind": x["kind"]} for x in found])


async def resize(ctx: Ctx, ref: str) -> None:
    """``POST /containers/{id}/resize?h=&w=``: 200."""
    rows, cols = ctx.req.integer("h", 24), ctx.req.integer("w", 80)
    c = await lookup(ctx, ref)
    try:
        await ctx.call("container.resize", {"id": c["id"], "rows": rows, "cols": cols})
    except errors.FailedPrecondition as exc:
        raise HttpError(409, exc.message) from None
    await ctx.conn.respond(200, b"", "text/plain; charset=utf-8")


# ------------------------------------------------------------------------------ wait, logs


async def wait(ctx: Ctx, ref: str) -> None:
    """``POST /containers/{id}/wait?condition=``: the head at once, ``{StatusCode, Error}`` when
    the condition holds. A client that goes away (``run -d``) ends it."""
    condition = ctx.req.arg("condition") or "not-running"
    if condition not in ("not-running", "next-exit", "removed"):
        raise HttpError(400, f"invalid condition: {condition!r}")
    await ctx.conn.drain_body()
    async with ctx.rpc() as rpc:
        c = await lookup(ctx, ref, rpc)
        async with rpc.stream("container.wait", {"id": c["id"], "condition": condition}) as notes:
            await rpc.call("system.info")  # accepted in order: the wait is registered now
            await ctx.conn.start_stream(200, "application/json")
            async with watch_disconnect(ctx.conn):
                try:
                    result = await notes.result()
                except errors.NotFound:
                    result = {"exit_code": c.get("exit_code") or 0}
                code = result.get("exit_code")
                error = (
                    None if code is not None else {"Message": result.get("reason") or "exit status unknown"}
                )
                await ctx.conn.send_chunk(
                    json.dumps({"StatusCode": -1 if code is None else code, "Error": error}).encode() + b"\n"
                )
                await ctx.conn.end_stream()


def _rfc3339(unix: str) -> str:
    sec, _, frac = unix.partition(".")
    if not sec.isdigit() or (frac and not frac.isdigit()):
        raise HttpError(400, f"invalid time {unix!r}: want unix seconds")
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(sec))) + f".{(frac + '000000000')[:9]}Z"


async def logs(ctx: Ctx, ref: str) -> None:
    """``GET /containers/{id}/logs``: frames (raw for a TTY), chunked, ``follow`` until exit."""
    want = {streams.STDOUT: ctx.req.flag("stdout"), streams.STDERR: ctx.req.flag("stderr")}
    if not any(want.values()):
        raise HttpError(400, "Bad parameters: you must choose at least one stream")
    follow, stamps = ctx.req.flag("follow"), ctx.req.flag("timestamps")
    tail_text = ctx.req.arg("tail") or "all"
    tail: int | None = None
    if tail_text != "all":
        try:
            tail = int(tail_text)
        except ValueError:
            raise HttpError(400, f"invalid tail {tail_text!r}") from None
        tail = None if tail < 0 else tail
    since = ctx.req.arg("since")
    since_ts = _rfc3339(since) if since and since != "0" else None
    until = ctx.req.arg("until")
    until_ts = _rfc3339(until).encode() if until and until != "0" else None
    async with ctx.rpc() as rpc:
        c = await lookup(ctx, ref, rpc)
        tty = bool((c.get("config") or {}).get("tty"))
        mux = not tty
        ctype = streams.MULTIPLEXED if mux and ctx.at_least("1.42") else None
        await ctx.conn.start_stream(200, ctype)
        async with watch_disconnect(ctx.conn):
            output = streams.container_output(
                rpc,
                c["id"],
                follow=follow,
                tail=tail,
                since=since_ts,
                timestamps=stamps,
                until=until_ts,
            )
            async for stream, data in output:
                if not want.get(stream, True):
                    continue
                await ctx.conn.send_chunk(streams.encode(stream, data, mux))
            await ctx.conn.end_stream()


# ----------------------------------------------------------------------------------- attach


async def wait_running(rpc: jsonrpc.RpcClient, cid: str) -> None:
    """Return once container ``cid`` runs (at once if it does): stdin sent before ``start``
    (``docker run -i`` attaches first) waits for it."""
    async with rpc.stream("events.subscribe", {"filters": {"container": cid, "event": "start"}}) as notes:
        c = await rpc.call("container.inspect", {"id": cid})  # after the subscription: no gap
        if c.get("state") in ("running", "paused"):
            return
        async for _ in notes:
            return


async def pump_stdin(
    ctx: Ctx, raw: anyio.abc.ByteStream, first: bytes, cid: str, tg: anyio.abc.TaskGroup
) -> None:
    """Client bytes to the container's stdin; the client's half-close closes it."""
    async with ctx.rpc() as rpc:
        started = False
        data = first
        while True:
            if data:
                if not started:
                    await wait_running(rpc, cid)
                    started = True
                await streams.send_container_stdin(rpc, cid, data)
            data = await read_raw(raw)
            if not data:
                break
        if peer_closed(raw):
            tg.cancel_scope.cancel()  # the client went away: stop following for it
            return
        if not started:
            await wait_running(rpc, cid)
        try:
            await rpc.call("container.close_stdin", {"id": cid})
        except errors.FailedPrecondition:
            pass  # exited already, or a terminal (no EOF to send)


async def drop_input(raw: anyio.abc.ByteStream, tg: anyio.abc.TaskGroup) -> None:
    """Without stdin, read and drop what the client sends. A half-close is no sign that it went
    away (the CLI half-closes at once when it attaches no stdin); a whole close is: the attach
    then ends, its tugd connection with it."""
    while await read_raw(raw):
        pass
    if peer_closed(raw):
        tg.cancel_scope.cancel()


async def attach_output(
    rpc: jsonrpc.RpcClient, c: dict[str, Any], replay: bool
) -> AsyncGenerator[tuple[int, bytes], None]:
    """What an attached client sees: first ``(-1, b"")`` once nothing that follows can be
    missed, then the output. A new container's log from its start (empty before it); a running
    one's from now on; a stopped one's from its next start (``docker start -a``): its log is
    followed from now, once its ``start`` event has come."""
    cid = c["id"]
    if c.get("state") in ("created", "running", "paused") or replay:
        fresh = c.get("state") == "created"
        tail = None if replay or fresh else 0
        async for item in streams.container_output(rpc, cid, follow=True, tail=tail, barrier=True):
            yield item
        return
    since = shapes.rfc3339_ns(time.time_ns())
    async with rpc.stream("events.subscribe", {"filters": {"container": cid, "event": "start"}}) as notes:
        await rpc.call("container.inspect", {"id": cid})  # after the subscription: no gap
        yield -1, b""
        async for _ in notes:
            break
    async for stream, data in streams.container_output(rpc, cid, follow=True, since=since):
        yield stream, data


async def attach(ctx: Ctx, ref: str) -> None:
    """``POST /containers/{id}/attach?stream=1&stdin=&stdout=&stderr=``, hijacked: ``101
    UPGRADED``, then the output (frames, or raw for a TTY) until the container exits, and the
    client's bytes to its stdin (a half-close is EOF)."""
    want = {streams.STDOUT: ctx.req.flag("stdout"), streams.STDERR: ctx.req.flag("stderr")}
    use_stdin = ctx.req.flag("stdin")
    replay = ctx.req.flag("logs")
    async with ctx.rpc() as rpc:
        c = await lookup(ctx, ref, rpc)
        cid = c["id"]
        tty = bool((c.get("config") or {}).get("tty"))
        mux = not tty
        ctype = streams.MULTIPLEXED if mux and ctx.at_least("1.42") else streams.RAW
        output = attach_output(rpc, c, replay)
        await anext(output)  # the follower is registered: start may come now
        raw, first = await ctx.conn.hijack(ctype)
        async with anyio.create_task_group() as tg:
            if use_stdin and (c.get("config") or {}).get("stdin"):
                tg.start_soon(pump_stdin, ctx, raw, first, cid, tg)
            else:
                tg.start_soon(drop_input, raw, tg)
            try:
                async for stream, data in output:
                    if want.get(stream, True):
                        await raw.send(streams.encode(stream, data, mux))
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                pass
            finally:
                await output.aclose()
            tg.cancel_scope.cancel()
