"""What a container's /etc/hosts, resolv.conf and hostname say, read from the store (the files
themselves: files.py). A :class:`Snapshot` reads every endpoint once, not once per peer: the
/etc/hosts of many containers are built from one."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import files
from .ipam import HOST, Endpoint, NetStore

if TYPE_CHECKING:
    from ..store import ContainerRecord, Store


class Records:
    """Container records by id, each read from the store on first use."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.cache: dict[str, ContainerRecord | None] = {}

    def get(self, cid: str) -> ContainerRecord | None:
        if cid not in self.cache:
            self.cache[cid] = self.store.get_container(cid)
        return self.cache[cid]


@dataclass
class Snapshot:
    """Every endpoint by network and by container, and the containers by id. Records are read
    on first use: a create with ``--network none`` among 500 containers reads none of them
    (reading them all cost O(containers) per create: 12 ms each at 500)."""

    by_net: dict[str, list[Endpoint]]
    by_cid: dict[str, list[Endpoint]]
    recs: Records


def snapshot(db: NetStore, store: Store) -> Snapshot:
    snap = Snapshot({}, {}, Records(store))
    for ep in db.endpoints():
        snap.by_net.setdefault(ep.network_id, []).append(ep)
        snap.by_cid.setdefault(ep.container_id, []).append(ep)
    return snap


def etc_of(rec: ContainerRecord, snap: Snapshot) -> files.EtcFiles:
    """A container's /etc files: its own addresses and names, its peers' on each network."""
    settings = rec.settings
    hostname = settings.hostname or rec.id[:12]
    ef = files.EtcFiles(
        hostname=hostname,
        dns=list(settings.dns),
        host_mode=settings.network == HOST,
        extra=[files.HostsEntry(ip, [name]) for name, ip in settings.add_hosts],
    )
    for ep in snap.by_cid.get(rec.id, []):
        for ip in filter(None, (ep.ip, ep.ip6)):
            ef.own.append(files.HostsEntry(ip, _names(hostname, rec.name, *ep.aliases)))
        for peer in snap.by_net.get(ep.network_id, []):
            if peer.container_id == rec.id:
                continue
            other = snap.recs.get(peer.container_id)
            if other is not None:
                for ip in filter(None, (peer.ip, peer.ip6)):
                    ef.peers.append(files.HostsEntry(ip, _names(other.name, *peer.aliases, other.id[:12])))
    return ef


def _names(*names: str) -> list[str]:
    """Each name once, in order (compose gives the short id among a container's aliases)."""
    return list(dict.fromkeys(names))


def refresh_hosts(snap: Snapshot, network_ids: Iterable[str], dirs: Callable[[str], str]) -> None:
    """Rewrite /etc/hosts of every container on these networks; ``dirs(cid)`` is a
    container's bundle dir."""
    done: set[str] = set()
    for nid in network_ids:
        for ep in snap.by_net.get(nid, []):
            if ep.container_id in done:
                continue
            done.add(ep.container_id)
            rec = snap.recs.get(ep.container_id)
            if rec is not None:
                files.update_hosts(dirs(rec.id), etc_of(rec, snap))
