"""Pods (the CRI's sandboxes): pinned namespaces, an address on the pod network, and the
containers that join them. See docs/api.md, "Pods", and docs/cri.md.

A pod's life: ``creating`` (recorded first, so that a tugd that dies while making it finds and
removes what it made), ``ready`` (its namespaces pinned, its address wired), ``notready``
(stopped: its containers stopped, its namespaces unmounted and its address released; or found
without its namespaces after a crash or a reboot). Containers join a pod by the namespace paths
of ``pod.inspect`` and carry its id (``pod_id``); the pod stops and removes them through the
containers service's public methods.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import time
from typing import TYPE_CHECKING, Any

import anyio

from tugwire.errors import FailedPrecondition, InvalidArgument, NotFound, RuntimeFailed

from ..containers.state import ACTIVE
from ..failpoints import failpoint
from ..network import attached, ipam, nft
from ..network import ports as ports_
from ..network.requests import NetworkCreateRequest
from . import cni, namespaces, stats
from .records import (
    CREATING,
    NODE,
    NOTREADY,
    POD,
    READY,
    PodCreateRequest,
    PodRecord,
    PodStore,
    check,
    pod_key,
)

if TYPE_CHECKING:
    from ..config import Config
    from ..containers import Containers
    from ..events import EventBus
    from ..network import Networks
    from ..store import Store

log = logging.getLogger("tugboat.pods")

POD_NETWORK = "cri"  # the bridge network of the pods, made on demand
POD_CIDR_KEY = "pod_cidr"
STOP_TIMEOUT = 10  # seconds a pod's container gets to stop when pod.stop gives none


class Pods:
    """The pods of one tugd. Implements :class:`supervisor.network.attached.Owners`."""

    def __init__(
        self,
        cfg: Config,
        store: Store,
        containers: Containers,
        networks: Networks,
        bus: EventBus | None = None,
    ) -> None:
        self.cfg = cfg
        self.bus = bus
        self.store = store
        self.containers = containers
        self.networks = networks
        self.db = PodStore(store.db)
        self.dir = os.path.join(cfg.state, "pods")
        self.cni = cni.Cni(cfg.cni_conf_dir, cfg.cni_bin_dirs, os.path.join(cfg.state, "cni"))
        self.net_lock = anyio.Lock()  # the pod network: made once, its subnet changed
        self._locks: dict[str, anyio.Lock] = {}  # per pod: its create, stop and remove in turn
        networks.owners = self

    # ----------------------------------------------------------------- the Owners protocol

    def owner_ids(self) -> set[str]:
        return self.db.ids()

    def live_ids(self) -> set[str]:
        return {
            p.id for p in self.db.all() if p.state != NOTREADY and namespaces.alive(self._path(p.id, "net"))
        }

    def forwards(self) -> list[nft.Forward]:
        out = []
        for p in self.db.all():
            ports = [ipam.Port.from_json(d) for d in p.config.get("ports") or [] if d["host_port"]]
            if p.state == NOTREADY or not ports:
                continue
            addr = attached.address(self.networks, p.id)
            if addr is not None:
                out += ports_.forwards(addr[0], ports)
        return out

    def name_of(self, owner: str) -> str:
        rec = self.db.get(owner)
        return f"pod {rec.name}" if rec is not None else ""

    # ---------------------------------------------------------------------------- helpers

    def _path(self, pid: str, name: str = "") -> str:
        return os.path.join(self.dir, pid, name) if name else os.path.join(self.dir, pid)

    def get(self, ref: Any) -> PodRecord:
        if not isinstance(ref, str) or not ref:
            raise InvalidArgument("a pod id or name is required", field="id")
        found = self.db.find(ref)
        exact = [p for p in found if p.id == ref]
        if exact:
            return exact[0]
        if not found:
            raise NotFound(f"pod {ref} not found")
        if len(found) > 1:
            raise InvalidArgument(f"multiple pods match {ref!r}; give more of the id")
        return found[0]

    def publish(self, action: str, rec: PodRecord) -> None:
        """The event ``pod.<action>`` (create, stop, destroy) of ``rec``: its metadata and labels
        among the attributes."""
        if self.bus is None:
            return
        from ..events import Event

        c = rec.config
        attributes = {**c["labels"], "name": c["name"], "namespace": c["namespace"], "uid": c["uid"]}
        self.bus.publish(Event("pod", action, rec.id, rec.name, "", attributes))

    def members(self, pid: str) -> list[str]:
        """The ids of the containers that belong to pod ``pid``."""
        return [r.id for r in self.containers.records() if r.settings.pod_id == pid]

    # ----------------------------------------------------------------------- the network

    def network_config(self) -> dict[str, Any]:
        """The pod network: built in (a Tugboat bridge network), its configured pod CIDR (from
        kubelet's UpdateRuntimeConfig; none: a subnet tugd picks) and the network if made."""
        cidr = self.db.setting(POD_CIDR_KEY) or ""
        if self.cfg.pod_network == "cni":
            conf, why = self.cni.status()
            return {
                "mode": "cni",
                "ready": conf is not None,
                "message": why,
                "network": conf.name if conf else "",
                "conf_file": conf.path if conf else "",
                "conf_dir": self.cni.conf_dir,
                "bin_dirs": list(self.cni.bin_dirs),
                "pod_cidr": cidr,
                "subnet": "",
                "gateway": "",
            }
        found = [n for n in self.networks.db.find_networks(POD_NETWORK) if n.name == POD_NETWORK]
        return {
            "mode": "builtin",
            "ready": True,
            "message": "",
            "network": POD_NETWORK,
            "pod_cidr": cidr,
            "subnet": found[0].subnet if found else "",
            "gateway": found[0].gateway if found else "",
        }

    async def set_network_config(self, pod_cidr: str) -> dict[str, Any]:
        """Record the node's pod CIDR; the pod network takes it as its subnet when it is made (by
        the first pod: nothing touches the host before). A pod network made with another subnet
        is removed if no pod uses it; else kept while pods use it, and said so in the log."""
        if pod_cidr:  # dual stack gives "v4,v6" (either order): the pod network is IPv4
            v4 = [c.strip() for c in pod_cidr.split(",") if c.strip() and ":" not in c]
            if not v4:
                raise InvalidArgument(f"pod CIDR {pod_cidr!r} has no IPv4 subnet", field="pod_cidr")
            pod_cidr = str(ipam.parse_subnet(v4[0], "pod_cidr"))
        async with self.net_lock:
            self.db.set_setting(POD_CIDR_KEY, pod_cidr)
            found = [n for n in self.networks.db.find_networks(POD_NETWORK) if n.name == POD_NETWORK]
            if found and pod_cidr and found[0].subnet != pod_cidr:
                if self.networks.db.endpoints(network_id=found[0].id):
                    log.warning(
                        "pod CIDR %s: the pod network keeps %s while pods use it", pod_cidr, found[0].subnet
                    )
                else:  # made again with the new subnet by the next pod
                    await self.networks.remove(found[0].id)
        return self.network_config()

    async def _ensure_network(self) -> str:
        async with self.net_lock:
            found = [n for n in self.networks.db.find_networks(POD_NETWORK) if n.name == POD_NETWORK]
            if found:
                return found[0].id
            cidr = self.db.setting(POD_CIDR_KEY) or None
            req = NetworkCreateRequest(name=POD_NETWORK, subnet=cidr, labels={"io.tugboat.pods": "true"})
            return (await self.networks.create(req)).id

    def _lock(self, pid: str) -> anyio.Lock:
        return self._locks.setdefault(pid, anyio.Lock())

    # ------------------------------------------------------------------------------ verbs

    async def create(self, req: PodCreateRequest) -> PodRecord:
        """RunPodSandbox: the pod recorded (``creating``), its namespaces pinned, its address
        wired and ports forwarded, its files written; then ``ready``. On any failure everything
        made is undone and the record deleted."""
        check(req)
        pid = secrets.token_hex(32)
        hostname = req.hostname or req.name[:63]
        config: dict[str, Any] = {
            "name": req.name,
            "namespace": req.namespace,
            "uid": req.uid,
            "attempt": req.attempt,
            "labels": dict(req.labels),
            "annotations": dict(req.annotations),
            "hostname": hostname,
            "log_directory": req.log_directory,
            "dns": {
                "servers": list(req.dns.servers) if req.dns else [],
                "searches": list(req.dns.searches) if req.dns else [],
                "options": list(req.dns.options) if req.dns else [],
            },
            "ports": [
                ipam.Port(pm.host_ip, pm.host_port, pm.container_port, pm.protocol).to_json()
                for pm in req.ports
            ],
            "cgroup_parent": req.cgroup_parent,
            "namespace_options": {"network": req.network, "pid": req.pid, "ipc": req.ipc},
            "sysctls": dict(req.sysctls),
        }
        rec = PodRecord(id=pid, key=pod_key(req), state=CREATING, created_ns=time.time_ns(), config=config)
        async with self._lock(rec.id):
            self.db.insert(rec)  # AlreadyExists for a second pod of the same name/ns/uid/attempt
            try:
                await self._make(rec, req)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await self._unmake(rec.id)
                    await anyio.to_thread.run_sync(namespaces.remove, self._path(rec.id))
                    self.db.delete(rec.id)
                raise
            rec.state = READY
            self.db.update(rec)
        log.info("pod %s (%s) ready", rec.name, rec.id[:12])
        self.publish("create", rec)
        return rec

    async def _make(self, rec: PodRecord, req: PodCreateRequest) -> None:
        kinds = []
        if req.network == POD:
            kinds += ["net", "uts"]  # a host-network pod has the host's name too (as kubelet asks)
        if req.ipc == POD:
            kinds.append("ipc")
        hostname = str(rec.config["hostname"])
        await anyio.to_thread.run_sync(namespaces.make, self._path(rec.id), kinds, hostname)
        await anyio.to_thread.run_sync(namespaces.set_sysctls, self._path(rec.id), dict(req.sysctls))
        if req.pid == POD:
            parent = req.cgroup_parent or ""
            await anyio.to_thread.run_sync(namespaces.start_infra, self._path(rec.id), parent)
        failpoint("pod.create.after_namespaces")
        ip = ""
        if req.network == POD and self.cfg.pod_network == "cni":
            ip = await self._cni_add(rec)
        elif req.network == POD:
            await self._ensure_network()
            ports = [ipam.Port.from_json(d) for d in rec.config["ports"] if d["host_port"]]
            ep = await attached.attach(self.networks, rec.id, POD_NETWORK, self._path(rec.id, "net"), ports)
            ip = ep.ip
        failpoint("pod.create.after_network")
        dns = rec.config["dns"]
        resolv = namespaces.resolv_text(dns["servers"], dns["searches"], dns["options"])
        await anyio.to_thread.run_sync(namespaces.write_files, self._path(rec.id), hostname, ip, resolv)

    async def _cni_add(self, rec: PodRecord) -> str:
        """The pod's network by CNI (ADD of the configured chain, its loopback up): its IP."""
        netns = self._path(rec.id, "net")
        await anyio.to_thread.run_sync(cni.loopback_up, netns)
        c = rec.config
        args = cni.PodArgs(
            id=rec.id,
            netns=netns,
            name=c["name"],
            namespace=c["namespace"],
            uid=c["uid"],
            port_mappings=cni.port_mappings(c["ports"]),
        )
        conf, result = await self.cni.add(args)
        addr = cni.address(result)
        if addr is None:
            raise RuntimeFailed(f"the CNI result has no IPv4 address for the pod: {json.dumps(result)}")
        c["cni"] = {"network": conf.name, "ip": addr[0], "prefixlen": addr[1]}
        return addr[0]

    async def _unmake(self, pid: str) -> None:
        """Release the pod's address and forwards (CNI: DEL of its chain, from its cache) and
        unmount its namespaces (the files stay)."""
        net = self._path(pid, "net")
        await self.cni.delete(pid, net if namespaces.alive(net) else "")
        await attached.detach(self.networks, pid)
        await anyio.to_thread.run_sync(namespaces.unmount, self._path(pid))

    async def stop(self, ref: str, timeout: int | None = None) -> PodRecord:
        """StopPodSandbox: every container of the pod stopped, the address released, the
        namespaces unmounted; ``notready``. Stopping a stopped pod changes nothing."""
        rec = self.get(ref)
        for cid in self.members(rec.id):
            with contextlib.suppress(NotFound):
                await self.containers.stop(cid, STOP_TIMEOUT if timeout is None else timeout)
        async with self._lock(rec.id):
            await self._unmake(rec.id)
            failpoint("pod.stop.after_unmount")
            found = self.db.get(rec.id)
            if found is None:
                raise NotFound(f"pod {ref} not found")
            rec = found
            if rec.state != NOTREADY:
                rec.state = NOTREADY
                self.db.update(rec)
                self.publish("stop", rec)
        return rec

    async def remove(self, ref: str) -> PodRecord:
        """RemovePodSandbox: stopped if it is not, every container of the pod removed, then
        its directory and record."""
        rec = await self.stop(ref, 0)
        for cid in self.members(rec.id):
            with contextlib.suppress(NotFound):
                await self.containers.delete(cid, force=True)
        async with self._lock(rec.id):
            await anyio.to_thread.run_sync(namespaces.remove, self._path(rec.id))
            failpoint("pod.remove.after_dir")
            self.db.delete(rec.id)
        self._locks.pop(rec.id, None)
        log.info("pod %s (%s) removed", rec.name, rec.id[:12])
        self.publish("destroy", rec)
        return rec

    # ------------------------------------------------------------------------------ stats

    async def stats(self, ref: str) -> dict[str, Any]:
        """``pod.stats``: the pod's figures (docs/api.md): the sum of its running containers'
        cgroup samples, its process count (theirs and the infra process), its network devices'
        bytes and errors, and each running container's sample."""
        rec = self.get(ref)
        samples = []
        for r in self.containers.records():
            if r.settings.pod_id != rec.id or r.run.state not in ACTIVE:
                continue
            try:
                sample = await self.containers.shim(r.id).stats()
            except (FailedPrecondition, NotFound, RuntimeFailed, OSError):
                continue  # stopped or removed meanwhile
            upper = os.path.join(self.cfg.container_dir(r.id), "upper")
            layer = await anyio.to_thread.run_sync(stats.writable_layer, upper)
            samples.append({"id": r.id, "name": r.name, "started_at": r.run.started_at, **sample, **layer})
        ready = rec.state == READY
        infra = 1 if ready and namespaces.infra_pid(self._path(rec.id)) is not None else 0
        net = (
            self._path(rec.id, "net") if ready and rec.config["namespace_options"]["network"] == POD else None
        )
        figures = await anyio.to_thread.run_sync(stats.pod_figures, samples, infra, net)
        return {"id": rec.id, "state": rec.state, **figures, "containers": samples}

    # ------------------------------------------------------------------------- describing

    def describe(self, rec: PodRecord, members: dict[str, list[str]] | None = None) -> dict[str, Any]:
        """``pod.inspect``'s record (docs/api.md); ``members``: every pod's containers, when
        many pods are described at once."""
        c = rec.config
        opts = c["namespace_options"]
        ready = rec.state == READY

        def ns(kind: str, mode: str) -> str | None:
            return self._path(rec.id, kind) if ready and mode == POD else None

        addr = attached.address(self.networks, rec.id) if ready else None
        if ready and c.get("cni"):
            addr = (c["cni"]["ip"], c["cni"]["prefixlen"], c["cni"]["network"])
        files = {name: self._path(rec.id, name) for name in ("hostname", "hosts", "resolv.conf")}
        return {
            "id": rec.id,
            "name": c["name"],
            "namespace": c["namespace"],
            "uid": c["uid"],
            "attempt": c["attempt"],
            "state": rec.state,
            "created_ns": rec.created_ns,
            "labels": c["labels"],
            "annotations": c["annotations"],
            "hostname": c["hostname"],
            "log_directory": c["log_directory"],
            "dns": c["dns"],
            "ports": c["ports"],
            "cgroup_parent": c["cgroup_parent"],
            "sysctls": c.get("sysctls", {}),
            "namespace_options": opts,
            "namespaces": {
                "network": ns("net", opts["network"]),
                "ipc": ns("ipc", opts["ipc"]),
                "uts": ns("uts", opts["network"]),
                "pid": ns("pid", opts["pid"]),
            },
            "network": {
                "name": addr[2] if addr else "",
                "ip": addr[0] if addr else "",
                "prefixlen": addr[1] if addr else 0,
                "host": opts["network"] == NODE,
            },
            "files": files if ready else {},
            "containers": members.get(rec.id, []) if members is not None else self.members(rec.id),
        }

    def inspect(self, ref: str) -> dict[str, Any]:
        return self.describe(self.get(ref))

    def list(
        self, *, ids: list[str] | None = None, state: str | None = None, labels: dict[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """Every pod (but those being made), or those matching all the filters: an id prefix of
        ``ids``, ``state`` (ready or notready), every label of ``labels``."""
        if state is not None and state not in (READY, NOTREADY):
            raise InvalidArgument(f"invalid state filter {state!r}: ready or notready", field="state")
        out: list[PodRecord] = []
        for rec in self.db.all():
            if rec.state == CREATING:
                continue
            if ids and not any(rec.id.startswith(i) for i in ids):
                continue
            if state is not None and rec.state != state:
                continue
            have = rec.config["labels"]
            if labels and any(have.get(k) != v for k, v in labels.items()):
                continue
            out.append(rec)
        members: dict[str, list[str]] = {}
        if out:  # one pass over the containers (kubelet lists pods every second)
            for r in self.containers.records():
                if r.settings.pod_id:
                    members.setdefault(r.settings.pod_id, []).append(r.id)
        return [self.describe(rec, members) for rec in out]

    # --------------------------------------------------------------------------- recovery

    async def recover(self) -> None:
        """After a (re)start: a pod tugd died making is undone and forgotten; a ready pod whose
        namespaces are gone (a reboot, someone unmounted them) is ``notready``, its address
        released. Call before the containers' recovery (whose network reconcile keeps the veths
        of the pods that are still whole)."""
        for rec in self.db.all():
            if rec.state == CREATING:
                log.info("pod %s (%s): half made when tugd stopped: removed", rec.name, rec.id[:12])
                await self._recover_unmake(rec.id)
                await anyio.to_thread.run_sync(namespaces.remove, self._path(rec.id))
                self.db.delete(rec.id)
            elif rec.state == READY and not self._whole(rec):
                log.info("pod %s (%s): its namespaces are gone: not ready", rec.name, rec.id[:12])
                await self._recover_unmake(rec.id)
                rec.state = NOTREADY
                self.db.update(rec)
        # Directories no pod record names (tugd died removing one).
        known = self.db.ids()
        for entry in await anyio.to_thread.run_sync(_listdir, self.dir):
            if entry not in known:
                await anyio.to_thread.run_sync(namespaces.remove, os.path.join(self.dir, entry))
        # CNI attachments no pod record names (a DEL that failed at a recovery before).
        for pid in await anyio.to_thread.run_sync(self.cni.cached_ids):
            if pid not in known:
                try:
                    await self.cni.delete(pid, "")
                except RuntimeFailed as exc:
                    log.warning("pod %s: CNI DEL failed (tried again at the next start): %s", pid[:12], exc)

    async def _recover_unmake(self, pid: str) -> None:
        """:meth:`_unmake` at start: a CNI DEL that fails is logged (its cache stays: tried again
        by the pod's stop, or at the next start) and the namespaces unmounted all the same."""
        try:
            await self._unmake(pid)
        except RuntimeFailed as exc:
            log.warning("pod %s: CNI DEL failed: %s", pid[:12], exc)
            await attached.detach(self.networks, pid)
            await anyio.to_thread.run_sync(namespaces.unmount, self._path(pid))

    def _whole(self, rec: PodRecord) -> bool:
        opts = rec.config["namespace_options"]
        kinds = (["net", "uts"] if opts["network"] == POD else []) + (["ipc"] if opts["ipc"] == POD else [])
        if opts["pid"] == POD:
            if namespaces.infra_pid(self._path(rec.id)) is None:
                return False
            kinds.append("pid")
        return all(namespaces.alive(self._path(rec.id, k)) for k in kinds)


def _listdir(path: str) -> list[str]:
    try:
        return [e for e in os.listdir(path) if not e.startswith(".")]
    except FileNotFoundError:
        return []


__all__ = ["Pods"]
