"""Published host ports: picking a free one (``-p 80``, ``-P``) and checking one is free before
a container's forwards are installed."""

from __future__ import annotations

import errno
import random
import socket
from collections.abc import Iterable
from typing import TYPE_CHECKING

from tugwire.errors import FailedPrecondition

from . import nft
from .ipam import Port

if TYPE_CHECKING:
    from ..store import Store

EPHEMERAL = (32768, 60999)  # where -P and -p CONTAINERPORT pick host ports


def used(store: Store, exclude: str = "") -> set[tuple[int, str]]:
    """(port, proto) of every container's published ports but ``exclude``'s."""
    out = set()
    for rec in store.list_containers():
        if rec.id != exclude:
            for d in rec.settings.ports:
                out.add((int(d["host_port"]), str(d["proto"])))
    return out


def pick(proto: str, taken: set[tuple[int, str]]) -> int:
    """A random ephemeral port that no container publishes and nothing on the host holds."""
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    for _ in range(200):
        port = random.randint(*EPHEMERAL)
        if (port, proto) in taken or not bindable("", port, kind):
            continue
        return port
    raise FailedPrecondition("no free host port found for a published port")


def check(store: Store, wired: Iterable[str], cid: str, ports: list[Port]) -> None:
    """FailedPrecondition if one of ``ports`` is forwarded to another wired container already,
    or held by a socket on the host."""
    for pt in ports:
        for other in wired:
            if other == cid:
                continue
            rec = store.get_container(other)
            for d in rec.settings.ports if rec else []:
                o = Port.from_json(d)
                if (
                    o.host_port == pt.host_port
                    and o.proto == pt.proto
                    and (not o.host_ip or not pt.host_ip or o.host_ip == pt.host_ip)
                ):
                    raise FailedPrecondition(
                        f"Bind for {pt.host_ip or '0.0.0.0'}:{pt.host_port} failed: port is already "
                        f"allocated (container {rec.name if rec else other[:12]})"
                    )
        kind = socket.SOCK_STREAM if pt.proto == "tcp" else socket.SOCK_DGRAM
        if not bindable(pt.host_ip, pt.host_port, kind):
            where = f"{pt.host_ip or '0.0.0.0'}:{pt.host_port}/{pt.proto}"
            raise FailedPrecondition(f"Bind for {where} failed: port is in use on the host")


def check_others(others: Iterable[tuple[str, str, int, str]], ports: list[Port]) -> None:
    """FailedPrecondition if one of ``ports`` is forwarded by another tugd already (``others``:
    (table, host address or "", port, proto) of its rules)."""
    for pt in ports:
        for table, host_ip, port, proto in others:
            if (
                port == pt.host_port
                and proto == pt.proto
                and (not host_ip or not pt.host_ip or host_ip == pt.host_ip)
            ):
                raise FailedPrecondition(
                    f"Bind for {pt.host_ip or '0.0.0.0'}:{pt.host_port} failed: port is already "
                    f"published by another tugd (nft table {table})"
                )


def bindable(host_ip: str, port: int, kind: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host_ip or "0.0.0.0", port))
        except OSError as exc:
            # EADDRNOTAVAIL: an address not (yet) ours, so nothing of ours listens there.
            return exc.errno == errno.EADDRNOTAVAIL
    return True


def forwards(ip: str, ports: Iterable[Port]) -> list[nft.Forward]:
    """The nft forwards of a container at ``ip`` publishing ``ports``."""
    return [nft.Forward(p.host_ip, p.host_port, p.proto, ip, p.container_port) for p in ports]
