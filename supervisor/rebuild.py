"""``tugd --rebuild-store``: set a damaged ``tugboat.db`` aside and make it again from disk.

What comes back, from where:

- containers: ``containers/<id>/record.json`` (supervisor/ondisk.py): settings, state, exit code,
  restart count, addresses; the bundle and the logs are beside it. What happened while tugd was
  down (an exit the shim recorded in its ``exit.json``, a shim that lives on) is then found by the
  ordinary recovery of the start that follows, which re-attaches to every live shim.
- images: ``meta/images/<hex>.json`` (names, tags, repo digests) with the manifest and the config
  read back from the content store and verified against their digests; an image whose blobs are
  gone is left out (it could not run anyway) and said so.
- networks: ``meta/networks/<id>.json``; each container's address on it from its record.
- pods: ``meta/pods/<id>.json``, with the pod's address on the pod network. The start that
  follows recovers them as after any restart (a pod whose namespaces are gone is ``notready``).
  The node's pod CIDR (UpdateRuntimeConfig) is not kept: kubelet sends it again.

Lost: the event history (``tug events --since`` before the rebuild). The damaged file and its
``-wal`` and ``-shm`` stay beside the new one, renamed ``tugboat.db.damaged-<UTC time>``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tugwire import names
from tugwire.errors import AlreadyExists

from . import ondisk
from .store import ContainerRecord, ImageRecord, Store

if TYPE_CHECKING:
    from .config import Config

log = logging.getLogger("tugboat.rebuild")


@dataclass
class Summary:
    """What a rebuild did."""

    set_aside: list[str] = field(default_factory=list)
    containers: int = 0
    images: int = 0
    names: int = 0
    networks: int = 0
    endpoints: int = 0
    pods: int = 0
    skipped: list[str] = field(default_factory=list)  # what could not come back, and why

    def line(self, path: str) -> str:
        kept = f"; the old file is kept as {self.set_aside[0]}" if self.set_aside else ""
        skipped = f"; left out: {'; '.join(self.skipped)}" if self.skipped else ""
        return (
            f"rebuilt {path} from disk: {self.containers} containers, {self.images} images "
            f"({self.names} names), {self.networks} networks, {self.pods} pods, {self.endpoints} addresses"
            f"{kept}{skipped}"
        )


def set_aside(path: str) -> list[str]:
    """Rename the database and its ``-wal`` and ``-shm`` to ``<name>.damaged-<UTC time>...``."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    n = 1
    while any(os.path.exists(f"{path}.damaged-{stamp}{s}") for s in ("", "-wal", "-shm")):
        n += 1  # a second rebuild within the same second never overwrites the first's files
        stamp = f"{stamp.split('.')[0]}.{n}"
    moved = []
    for suffix in ("", "-wal", "-shm"):
        src = path + suffix
        if os.path.exists(src):
            dst = f"{path}.damaged-{stamp}{suffix}"
            os.rename(src, dst)
            moved.append(dst)
    return moved


def _blob(blobs_dir: str, digest: str) -> dict[str, Any]:
    """A JSON blob of the content store, verified against its digest."""
    algo, _, hexd = digest.partition(":")
    if algo != "sha256" or len(hexd) != 64:
        raise ValueError(f"bad digest {digest!r}")
    with open(os.path.join(blobs_dir, hexd), "rb") as f:
        data = f.read()
    if hashlib.sha256(data).hexdigest() != hexd:
        raise ValueError(f"blob {digest} does not match its digest")
    obj = json.loads(data)
    if not isinstance(obj, dict):
        raise ValueError(f"blob {digest} is not a JSON object")
    return obj


def rebuild(cfg: Config) -> Summary:
    """Set the store aside and rebuild it from disk (tugd holds the root's and the state's
    locks: nothing else writes meanwhile). Returns what was done."""
    from .network import ipam  # the network tables' schema and records
    from .pods.records import PodStore  # the pods' tables

    summary = Summary(set_aside=set_aside(cfg.db_path))
    layout = ondisk.Layout(cfg.root)
    store = Store(cfg.db_path)
    try:
        nets = ipam.NetStore(store.db)
        pods = PodStore(store.db)  # its schema before the transaction (executescript commits)
        with store.transaction():
            _images(cfg, layout, store, summary)
            known_nets = _networks(layout, nets, summary)
            _containers(cfg, layout, store, nets, known_nets, summary)
            _pods(layout, pods, nets, known_nets, summary)
            # At least as new as every record, so that the start's check takes them as its own.
            gens = [ondisk.generation_of(obj) for _k, _key, _p, obj in layout.records()]
            store.set_generation(max([g for g in gens if g is not None], default=0))
    finally:
        store.close()
    return summary


def _images(cfg: Config, layout: ondisk.Layout, store: Store, summary: Summary) -> None:
    for image_id, obj in layout.images():
        img = obj.get("image") if obj else None
        if not isinstance(img, dict):
            summary.skipped.append(f"image {image_id[:19]}: its record is unreadable")
            continue
        try:
            manifest = _blob(cfg.blobs_dir, str(img["digest"]))
            config = _blob(cfg.blobs_dir, image_id)
            if manifest.get("config", {}).get("digest") != image_id:
                raise ValueError("the manifest names another config")
            for layer in manifest.get("layers", []):
                if not os.path.exists(os.path.join(cfg.blobs_dir, str(layer["digest"]).partition(":")[2])):
                    raise ValueError(f"layer {layer['digest'][:19]} is missing")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            what = ", ".join(img.get("names") or []) or image_id[:19]
            summary.skipped.append(f"image {what}: {exc}")
            continue
        store.put_image(
            ImageRecord(
                id=image_id,
                digest=str(img["digest"]),
                manifest=manifest,
                config=config,
                size=int(img.get("size") or 0),
                created=str(img.get("created") or ""),
            )
        )
        summary.images += 1
        for name in img.get("names") or []:
            store.set_name(str(name), image_id)
            summary.names += 1
        for name in img.get("repo_digests") or []:
            store.set_repo_digest(str(name), image_id)


def _networks(layout: ondisk.Layout, nets: Any, summary: Summary) -> set[str]:
    from .network.ipam import NetworkRecord

    fields = {f.name for f in dataclasses.fields(NetworkRecord)}
    known: set[str] = set()
    for nid, obj in layout.networks():
        net = obj.get("network") if obj else None
        if not isinstance(net, dict):
            summary.skipped.append(f"network {nid[:12]}: its record is unreadable")
            continue
        try:
            nets.insert_network(NetworkRecord(**{k: v for k, v in net.items() if k in fields}))
        except (AlreadyExists, TypeError) as exc:
            summary.skipped.append(f"network {net.get('name', nid[:12])}: {exc}")
            continue
        known.add(nid)
        summary.networks += 1
    return known


def _pods(layout: ondisk.Layout, pods: Any, nets: Any, known_nets: set[str], summary: Summary) -> None:
    from .network.ipam import Endpoint
    from .pods.records import PodRecord

    ep_fields = {f.name for f in dataclasses.fields(Endpoint)}
    for pid, obj in layout.pods():
        rec = obj.get("pod") if obj else None
        if not isinstance(rec, dict) or rec.get("id") != pid:
            summary.skipped.append(f"pod {pid[:12]}: its record is unreadable")
            continue
        try:
            pod = PodRecord(
                id=pid,
                key=str(rec["key"]),
                state=str(rec["state"]),
                created_ns=int(rec["created_ns"]),
                config=dict(rec["config"]),
            )
            pods.insert(pod)
        except (AlreadyExists, TypeError, ValueError, KeyError) as exc:
            summary.skipped.append(f"pod {pid[:12]}: {exc}")
            continue
        summary.pods += 1
        for ep in obj.get("endpoints") or [] if obj else []:
            if not isinstance(ep, dict) or ep.get("network_id") not in known_nets:
                summary.skipped.append(f"the address of pod {pod.name}: its network is gone")
                continue
            nets.insert_endpoint(Endpoint(**{k: v for k, v in ep.items() if k in ep_fields}))
            summary.endpoints += 1


def _containers(
    cfg: Config, layout: ondisk.Layout, store: Store, nets: Any, known_nets: set[str], summary: Summary
) -> None:
    from .network.ipam import Endpoint

    ep_fields = {f.name for f in dataclasses.fields(Endpoint)}
    with_record: set[str] = set()
    for cid, obj in layout.containers():
        rec = obj.get("container") if obj else None
        if not isinstance(rec, dict) or rec.get("id") != cid:
            summary.skipped.append(f"container {cid[:12]}: its record is unreadable")
            continue
        try:
            store.insert_container(ContainerRecord.from_json(rec))
        except (AlreadyExists, TypeError, ValueError, KeyError) as exc:
            summary.skipped.append(f"container {rec.get('name', cid[:12])}: {exc}")
            continue
        with_record.add(cid)
        summary.containers += 1
        for ep in obj.get("endpoints") or [] if obj else []:
            if not isinstance(ep, dict) or ep.get("network_id") not in known_nets:
                summary.skipped.append(f"an address of container {rec['name']}: its network is gone")
                continue
            nets.insert_endpoint(Endpoint(**{k: v for k, v in ep.items() if k in ep_fields}))
            summary.endpoints += 1
    # Bundles without a usable record (made by a tugd older than the records, or the record
    # torn): nothing says what they were; kept under another name (their logs and writable
    # layer) rather than cleaned up as leftovers by the start that follows.
    top = cfg.containers_dir
    for entry in os.listdir(top) if os.path.isdir(top) else []:
        if names.is_id(entry) and entry not in with_record:
            os.rename(os.path.join(top, entry), os.path.join(top, "lost-" + entry))
            summary.skipped.append(f"container {entry[:12]}: no usable record (kept as lost-{entry})")
