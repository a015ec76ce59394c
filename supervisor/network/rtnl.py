"""rtnetlink by hand, for the hot path of a container's wiring: a few requests, batched.

pyroute2 (netlink.py) serves the rare paths (bridges, the host's addresses and routes, sweeps);
wiring a container is the path every ``tug run`` on a bridge takes, and there pyroute2 cost more
than the kernel's work: each ``IPRoute`` runs an asyncio loop of its own, and one made in a
fresh thread (to reach a container's namespace) cost ~10 ms to set up and take down under load.
Here a request is a few ``struct.pack`` calls, and all the requests of one step go to the kernel
in one ``sendmsg`` (the kernel runs them in order) and come back as one ack each.

A socket stays bound to the network namespace it was made in: :func:`host` is one long-lived
socket in tugd's own namespace; :func:`open_socket` in a thread that entered a container's
namespace makes one there (``netlink.in_netns``). Blocking.
"""

from __future__ import annotations

import errno
import ipaddress
import itertools
import os
import socket
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass

NETLINK_ROUTE = 0
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_NEWROUTE = 20, 24
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
NLMSG_ERROR = 2
IFF_UP = 0x1
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_MASTER = 1, 3, 4, 10
IFLA_LINKINFO, IFLA_IFALIAS, IFLA_NET_NS_FD = 18, 20, 28
IFLA_INFO_KIND, IFLA_INFO_DATA, VETH_INFO_PEER = 1, 2, 1
IFA_ADDRESS, IFA_LOCAL, IFA_BROADCAST = 1, 2, 4
RTA_OIF, RTA_GATEWAY = 4, 5
RT_TABLE_MAIN, RTPROT_BOOT, RTN_UNICAST = 254, 3, 1
LOOPBACK_INDEX = 1  # fixed in every namespace

_HDR = struct.Struct("=IHHII")  # nlmsghdr
_IFINFO = struct.Struct("=BxHiII")  # ifinfomsg
_IFADDR = struct.Struct("=BBBBI")  # ifaddrmsg
_RTMSG = struct.Struct("=BBBBBBBBI")  # rtmsg


def _attr(kind: int, payload: bytes) -> bytes:
    size = 4 + len(payload)
    return struct.pack("=HH", size, kind) + payload + b"\0" * (-size % 4)


def _str(kind: int, text: str) -> bytes:
    return _attr(kind, text.encode() + b"\0")


def _u32(kind: int, value: int) -> bytes:
    return _attr(kind, struct.pack("=I", value))


def _ifinfo(index: int = 0, up: bool = False) -> bytes:
    return _IFINFO.pack(socket.AF_UNSPEC, 0, index, IFF_UP if up else 0, IFF_UP if up else 0)


@dataclass
class Request:
    """One rtnetlink message; ``ok`` are the errnos that count as success (ENODEV for a
    delete of what may not exist)."""

    kind: int
    flags: int
    body: bytes
    ok: tuple[int, ...] = ()


# ------------------------------------------------------------------------------ requests


def veth_add(host_if: str, peer: str, netns_fd: int, mac: str, mtu: int) -> Request:
    """A veth pair: ``host_if`` here, its peer ``peer`` made directly in the namespace of
    ``netns_fd`` with the MAC address ``mac`` (nothing is moved between namespaces)."""
    peer_msg = (
        _ifinfo()
        + _str(IFLA_IFNAME, peer)
        + _u32(IFLA_NET_NS_FD, netns_fd)
        + _attr(IFLA_ADDRESS, bytes.fromhex(mac.replace(":", "")))
        + _u32(IFLA_MTU, mtu)
    )
    info = _str(IFLA_INFO_KIND, "veth") + _attr(IFLA_INFO_DATA, _attr(VETH_INFO_PEER, peer_msg))
    body = _ifinfo() + _str(IFLA_IFNAME, host_if) + _u32(IFLA_MTU, mtu) + _attr(IFLA_LINKINFO, info)
    return Request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body)


def link_set(
    name: str = "", index: int = 0, *, up: bool = False, master: int = 0, alias: str = ""
) -> Request:
    """Change a link found by ``index`` or ``name``: up, on bridge ``master``, ``alias``."""
    body = _ifinfo(index, up) + (_str(IFLA_IFNAME, name) if name else b"")
    body += (_u32(IFLA_MASTER, master) if master else b"") + (_str(IFLA_IFALIAS, alias) if alias else b"")
    return Request(RTM_NEWLINK, 0, body)


def link_del(name: str) -> Request:
    """Delete the link ``name`` (a veth takes its peer along); none by that name is fine."""
    return Request(RTM_DELLINK, 0, _ifinfo() + _str(IFLA_IFNAME, name), ok=(errno.ENODEV,))


def addr_add(index: int, address: str, prefixlen: int, flags: int = 0) -> Request:
    ip = ipaddress.ip_address(address)
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    body = _IFADDR.pack(family, prefixlen, flags, 0, index)
    body += _attr(IFA_LOCAL, ip.packed) + _attr(IFA_ADDRESS, ip.packed)
    if ip.version == 4:
        net = ipaddress.IPv4Network(f"{address}/{prefixlen}", strict=False)
        body += _attr(IFA_BROADCAST, net.broadcast_address.packed)
    return Request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, body)


def default_route(gateway: str, oif: int) -> Request:
    gw = ipaddress.ip_address(gateway)
    family = socket.AF_INET if gw.version == 4 else socket.AF_INET6
    body = _RTMSG.pack(family, 0, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, 0, RTN_UNICAST, 0)
    body += _attr(RTA_GATEWAY, gw.packed) + _u32(RTA_OIF, oif)
    return Request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, body)


# ------------------------------------------------------------------------------- sockets


class Rtnl:
    """A NETLINK_ROUTE socket; its requests are serialised by a lock of its own."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lock = threading.Lock()
        self.seq = itertools.count(1)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def batch(self, requests: Iterable[Request]) -> None:
        """Send every request in one ``sendmsg`` and wait for all their acks; the first error
        (in request order) is raised as OSError. The kernel runs them in order and runs every
        one: a failed request does not stop the ones after it."""
        reqs = list(requests)
        if not reqs:
            return
        with self.lock:
            seqs = {next(self.seq): r for r in reqs}
            data = b"".join(
                _HDR.pack(_HDR.size + len(r.body), r.kind, NLM_F_REQUEST | NLM_F_ACK | r.flags, s, 0) + r.body
                for s, r in seqs.items()
            )
            self.sock.send(data)
            errors: dict[int, int] = {}
            while len(errors) < len(seqs):
                for kind, seq, payload in self._messages():
                    if kind == NLMSG_ERROR and seq in seqs:
                        errors[seq] = -struct.unpack_from("=i", payload)[0]
        for seq, req in seqs.items():
            err = errors[seq]
            if err and err not in req.ok:
                raise OSError(err, f"rtnetlink request {req.kind}: {os.strerror(err)}")

    def link_index(self, name: str) -> int:
        """The index of the link ``name`` (OSError ENODEV if there is none)."""
        with self.lock:
            seq = next(self.seq)
            body = _ifinfo() + _str(IFLA_IFNAME, name)
            self.sock.send(_HDR.pack(_HDR.size + len(body), RTM_GETLINK, NLM_F_REQUEST, seq, 0) + body)
            while True:
                for kind, got, payload in self._messages():
                    if got != seq:
                        continue
                    if kind == NLMSG_ERROR:
                        err = -struct.unpack_from("=i", payload)[0]
                        raise OSError(err, f"link {name}: {os.strerror(err)}")
                    if kind == RTM_NEWLINK:
                        return int(_IFINFO.unpack_from(payload)[2])

    def _messages(self) -> list[tuple[int, int, bytes]]:
        data = self.sock.recv(65536)
        out = []
        offset = 0
        while offset + _HDR.size <= len(data):
            length, kind, _flags, seq, _pid = _HDR.unpack_from(data, offset)
            if length < _HDR.size:
                break
            out.append((kind, seq, data[offset + _HDR.size : offset + length]))
            offset += (length + 3) & ~3
        return out


def open_socket() -> Rtnl:
    """A new socket in the calling thread's network namespace."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
    try:
        sock.bind((0, 0))
    except BaseException:
        sock.close()
        raise
    return Rtnl(sock)


_host: Rtnl | None = None
_host_lock = threading.Lock()


def host() -> Rtnl:
    """tugd's one socket in its own namespace, made on first use. Call it from a thread in
    tugd's namespace (any worker thread: only the short-lived threads of netlink.py move)."""
    global _host
    with _host_lock:
        if _host is None:
            _host = open_socket()
        return _host
