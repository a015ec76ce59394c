"""Links, addresses, routes and network namespaces, over netlink with pyroute2 (never ``ip``).

Every function here blocks (netlink round trips, a mount): the service calls them through
``anyio.to_thread``. pyroute2 costs ~125 ms to import, so it is imported on first use only: a
tugd whose containers never join a network never loads it.

A container's network namespace is a file under tugd's state root (``<state>/netns/<id>``), a
bind mount of a namespace made by ``unshare(CLONE_NEWNET)`` in a short-lived thread of ours
(namespaces are per thread: tugd's other threads never leave its own). The same trick, ``setns``
in a fresh thread, opens a netlink socket inside a container's namespace: the socket stays bound
to the namespace it was opened in.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
MS_BIND = 0x1000
MNT_DETACH = 0x2
_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def in_thread(fn: Callable[[], T]) -> T:
    """Run ``fn`` in a thread of its own and wait for it (it may change the thread's network
    namespace; pyroute2 runs an asyncio loop of its own, which a thread running one cannot)."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=run, name="tug-netns")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def iproute() -> Any:
    from pyroute2 import IPRoute  # lazy: ~125 ms

    return IPRoute()


# ------------------------------------------------------------------------------ namespaces


def create_netns(path: str) -> None:
    """A new network namespace bind-mounted at ``path`` (which must not exist)."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
    os.close(fd)

    def make() -> None:
        _check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
        src = f"/proc/self/task/{threading.get_native_id()}/ns/net".encode()
        _check(_libc.mount(src, path.encode(), b"none", MS_BIND, None), f"bind mount of {path}")

    try:
        in_thread(make)  # the thread ends in the new namespace: nothing else ever uses it
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise


def delete_netns(path: str) -> None:
    """Unmount and remove a namespace file; gone already is fine."""
    ret = _libc.umount2(path.encode(), MNT_DETACH)
    if ret != 0 and ctypes.get_errno() not in (errno.EINVAL, errno.ENOENT):
        err = ctypes.get_errno()
        raise OSError(err, f"umount {path}: {os.strerror(err)}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def is_netns(path: str) -> bool:
    try:
        return os.stat(path).st_dev != os.stat(os.path.dirname(path)).st_dev
    except OSError:
        return False


def in_netns(path: str, fn: Callable[[], T]) -> T:
    """``fn()`` run in a fresh thread that has entered the namespace at ``path``."""

    def run() -> T:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _check(_libc.setns(fd, CLONE_NEWNET), f"setns({path})")
        finally:
            os.close(fd)
        return fn()

    return in_thread(run)


# ---------------------------------------------------------------------------------- links


def _write_sysctl(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


IFA_F_NODAD = 0x02  # an IPv6 address usable at once, without duplicate address detection


def ensure_bridge(
    name: str,
    gateway: str,
    prefixlen: int,
    mtu: int,
    route_localnet: bool,
    v6: tuple[str, int] | None = None,
    alias: str = "",
) -> tuple[bool, int]:
    """The bridge ``name`` up with ``gateway/prefixlen`` and the owner's ``alias``: whether it
    was made now, and its index. Turns on IPv4 forwarding (the NAT of outbound traffic needs it) and, on the
    bridge only, route_localnet (published ports on 127.0.0.1 are DNATed out of it)."""
    made = False
    with iproute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            with contextlib.suppress(Exception):
                ipr.link("add", ifname=name, kind="bridge")
            made = True
            found = ipr.link_lookup(ifname=name)
        index = found[0]
        ipr.link("set", index=index, mtu=mtu, **({"ifalias": alias} if alias else {}))
        have = {(a.get("address"), a["prefixlen"]) for a in ipr.get_addr(index=index, family=2)}
        if (gateway, prefixlen) not in have:
            ipr.addr("add", index=index, address=gateway, prefixlen=prefixlen)
        if v6 is not None:
            have6 = {(a.get("address"), a["prefixlen"]) for a in ipr.get_addr(index=index, family=10)}
            if v6 not in have6:
                ipr.addr("add", index=index, address=v6[0], prefixlen=v6[1], family=10, flags=IFA_F_NODAD)
        ipr.link("set", index=index, state="up")
    _write_sysctl("/proc/sys/net/ipv4/ip_forward", "1")
    if v6 is not None:
        _write_sysctl("/proc/sys/net/ipv6/conf/all/forwarding", "1")
    if route_localnet:
        _write_sysctl(f"/proc/sys/net/ipv4/conf/{name}/route_localnet", "1")
    return made, int(index)


def attach(
    netns: str,
    host_if: str,
    bridge_index: int,
    idx: int,
    ip: str,
    prefixlen: int,
    gateway: str,
    mac: str,
    mtu: int,
    default_route: bool,
    v6: tuple[str, int, str] | None = None,
    alias: str = "",
) -> None:
    """A veth pair: ``host_if`` on the bridge of index ``bridge_index``, up, with ``alias``; its
    peer ``eth<idx>`` made directly in ``netns`` with the address, up, loopback up, and the
    default route through the gateway if asked. Three batches of rtnetlink requests in all
    (:mod:`.rtnl`): one on tugd's socket, two on a socket made inside the namespace."""
    from . import rtnl

    inner = f"eth{idx}"
    ns_fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        rtnl.host().batch(
            [
                rtnl.link_del(host_if),  # a leftover of a crash in the middle of this
                rtnl.veth_add(host_if, inner, ns_fd, mac, mtu),
                rtnl.link_set(host_if, up=True, master=bridge_index, alias=alias),
            ]
        )
    finally:
        os.close(ns_fd)
    with in_netns(netns, rtnl.open_socket) as sock:
        eth = sock.link_index(inner)
        reqs = [
            rtnl.link_set(index=rtnl.LOOPBACK_INDEX, up=True),
            rtnl.addr_add(eth, ip, prefixlen),
            rtnl.link_set(index=eth, up=True),
        ]
        if default_route:
            reqs.append(rtnl.default_route(gateway, eth))
        if v6 is not None:  # (address, prefix length, gateway)
            reqs.append(rtnl.addr_add(eth, v6[0], v6[1], IFA_F_NODAD))
            if default_route:
                reqs.append(rtnl.default_route(v6[2], eth))
        sock.batch(reqs)


def delete_links(names: list[str]) -> None:
    """Delete the links ``names`` that exist (a veth takes its peer along), in one batch."""
    from . import rtnl

    rtnl.host().batch([rtnl.link_del(n) for n in names])


def uplink_mtu(fallback: int = 1500) -> int:
    """The MTU of the link of this namespace's default route (what containers' packets leave
    through), capped at ``fallback``; ``fallback`` without a default route."""
    with iproute() as ipr:
        for route in ipr.get_default_routes(family=2):
            oif = route.get("oif") or route.get_attr("RTA_OIF")
            if oif:
                links = ipr.get_links(oif)
                if links:
                    return min(int(links[0].get("mtu") or links[0].get_attr("IFLA_MTU")), fallback)
    return fallback


def delete_link(name: str) -> bool:
    """Delete a link by name (a veth takes its peer with it); True if there was one."""
    with iproute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            return False
        with contextlib.suppress(Exception):
            ipr.link("del", index=found[0])
        return True


def link_names(prefix: str) -> list[str]:
    """The names of this namespace's links that start with ``prefix``."""
    with iproute() as ipr:
        names = [link.get("ifname") or "" for link in ipr.get_links()]
    return [n for n in names if n.startswith(prefix)]


def addresses() -> list[tuple[str, int, str]]:
    """(address, prefix length, link name) of every IPv4 address of this namespace."""
    with iproute() as ipr:
        names = {link["index"]: link.get("ifname") or "" for link in ipr.get_links()}
        return [
            (a.get("address") or "", int(a["prefixlen"]), names.get(a["index"], ""))
            for a in ipr.get_addr(family=2)
        ]


def links() -> list[tuple[str, str, str]]:
    """(name, name of its master or "", alias or "") of every link of this namespace."""
    with iproute() as ipr:
        found = ipr.get_links()
    names = {link["index"]: link.get("ifname") or "" for link in found}
    return [
        (
            link.get("ifname") or "",
            names.get(link.get_attr("IFLA_MASTER") or 0, ""),
            link.get_attr("IFLA_IFALIAS") or "",
        )
        for link in found
    ]


RT_TABLE_LOCAL = 255
RTN_UNICAST, RTN_BLACKHOLE, RTN_UNREACHABLE, RTN_PROHIBIT = 1, 6, 7, 8


def routes() -> list[tuple[str, int, str]]:
    """(destination, prefix length, link name or "") of the IPv4 routes of every table but
    ``local`` (unicast ones and those that refuse traffic: each claims its destination)."""
    with iproute() as ipr:
        names = {link["index"]: link.get("ifname") or "" for link in ipr.get_links()}
        out = []
        for r in ipr.get_routes(family=2):
            table = r.get_attr("RTA_TABLE") or r["table"]
            if table == RT_TABLE_LOCAL or r["type"] not in (
                RTN_UNICAST,
                RTN_BLACKHOLE,
                RTN_UNREACHABLE,
                RTN_PROHIBIT,
            ):
                continue
            dst = r.get_attr("RTA_DST")
            if dst:
                out.append((str(dst), int(r["dst_len"]), names.get(r.get_attr("RTA_OIF") or 0, "")))
        return out
