"""Network routes: create, ls, inspect, rm, connect, disconnect (bridge networks only)."""

from __future__ import annotations

from typing import Any

from tugwire import dockerfilters, dockershapes, errors

from .http import HttpError
from .server import Ctx, Router
from .shapes import get_bool, get_obj, get_str, get_str_map

NET = r"(?P<ref>[^/]+)"


def register(r: Router) -> None:
    """Add the network routes."""
    r.add("GET", "/networks", list_networks)
    r.add("POST", "/networks/create", create)
    r.add("GET", f"/networks/{NET}", inspect)
    r.add("DELETE", f"/networks/{NET}", remove)
    r.add("POST", f"/networks/{NET}/connect", connect)
    r.add("POST", f"/networks/{NET}/disconnect", disconnect)


def not_found(ref: str) -> HttpError:
    return HttpError(404, f"network {ref} not found")


async def list_networks(ctx: Ctx) -> None:
    """``GET /networks?filters=``: name, id, driver, label, dangling, type, scope filters."""
    from .system import docker_filters

    filters = dockerfilters.check(docker_filters(ctx.req.json_arg("filters")), dockerfilters.NETWORK_KEYS)
    shaped = (dockershapes.network(n) for n in await ctx.call("network.list"))
    out = [s for s in shaped if dockerfilters.match_network(s, filters)]
    await ctx.conn.respond_json(200, out)


async def inspect(ctx: Ctx, ref: str) -> None:
    """``GET /networks/{id}``."""
    try:
        n = await ctx.call("network.inspect", {"id": ref})
    except (errors.NotFound, errors.InvalidArgument):
        raise not_found(ref) from None
    await ctx.conn.respond_json(200, dockershapes.network(n))


async def create(ctx: Ctx) -> None:
    """``POST /networks/create``: 201 ``{Id, Warning}``; 409 for a taken name."""
    body = await ctx.body_json(required=True)
    if not isinstance(body, dict):
        raise HttpError(400, "the network config must be a JSON object")
    name = get_str(body, "Name")
    if not name:
        raise HttpError(400, "network name is required")
    driver = get_str(body, "Driver") or "bridge"
    if driver != "bridge":
        raise HttpError(400, f"network driver {driver!r} is not supported: only bridge")
    params: dict[str, Any] = {"name": name, "internal": get_bool(body, "Internal")}
    labels = get_str_map(body, "Labels")
    if labels:
        params["labels"] = labels
    ipam = get_obj(body, "IPAM")
    configs = ipam.get("Config") or []
    if not isinstance(configs, list):
        raise HttpError(400, "json: cannot unmarshal field IPAM.Config: want a list")
    for cfg in configs:
        if not isinstance(cfg, dict):
            raise HttpError(400, "json: cannot unmarshal field IPAM.Config: want objects")
        subnet = get_str(cfg, "Subnet")
        six = bool(subnet and ":" in subnet)
        if subnet:
            params["subnet6" if six else "subnet"] = subnet
        gateway = get_str(cfg, "Gateway")
        if gateway:
            params["gateway6" if six else "gateway"] = gateway
        ip_range = get_str(cfg, "IPRange")
        if ip_range and not six:
            params["ip_range"] = ip_range
    if get_bool(body, "EnableIPv6"):
        params["ipv6"] = True
    mtu = get_str_map(body, "Options").get("com.docker.network.driver.mtu")
    if mtu:
        params["mtu"] = int(mtu) if mtu.isdigit() else mtu
    try:
        result = await ctx.call("network.create", params)
    except errors.AlreadyExists:
        raise HttpError(409, f"network with name {name} already exists") from None
    await ctx.conn.respond_json(201, {"Id": result["id"], "Warning": ""})


async def remove(ctx: Ctx, ref: str) -> None:
    """``DELETE /networks/{id}``: 204; 403 while containers are on it."""
    try:
        n = await ctx.call("network.inspect", {"id": ref})
    except (errors.NotFound, errors.InvalidArgument):
        raise not_found(ref) from None
    if n.get("builtin"):
        raise HttpError(403, f"{n['name']} is a pre-defined network and cannot be removed")
    try:
        await ctx.call("network.delete", {"id": n["id"]})
    except errors.FailedPrecondition:
        names = ", ".join(c.get("name", "") for c in (n.get("containers") or {}).values())
        raise HttpError(
            403,
            f"error while removing network: network {n['name']} id {n['id']} has active endpoints ({names})",
        ) from None
    await ctx.conn.respond(204)


async def connect(ctx: Ctx, ref: str) -> None:
    """``POST /networks/{id}/connect`` ``{Container, EndpointConfig}``: 200."""
    body = await ctx.body_json(required=True)
    if not isinstance(body, dict):
        raise HttpError(400, "the body must be a JSON object")
    container = get_str(body, "Container")
    if not container:
        raise HttpError(400, "a container is required")
    endpoint = get_obj(body, "EndpointConfig")
    params: dict[str, Any] = {"network": ref, "container": container}
    ip = get_str(get_obj(endpoint, "IPAMConfig"), "IPv4Address")
    if ip:
        params["ip"] = ip
    aliases = endpoint.get("Aliases")
    if aliases:
        params["aliases"] = aliases
    try:
        await ctx.call("network.connect", params)
    except errors.AlreadyExists as exc:
        raise HttpError(403, exc.message) from None
    except errors.NotFound as exc:
        raise HttpError(404, exc.message) from None
    await ctx.conn.respond(200, b"", None)


async def disconnect(ctx: Ctx, ref: str) -> None:
    """``POST /networks/{id}/disconnect`` ``{Container, Force}``: 200."""
    body = await ctx.body_json(required=True)
    if not isinstance(body, dict):
        raise HttpError(400, "the body must be a JSON object")
    container = get_str(body, "Container")
    if not container:
        raise HttpError(400, "a container is required")
    get_bool(body, "Force")
    try:
        await ctx.call("network.disconnect", {"network": ref, "container": container})
    except errors.NotFound as exc:
        raise HttpError(404, exc.message) from None
    await ctx.conn.respond(200, b"", None)
