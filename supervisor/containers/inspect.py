"""Containers as records for clients: summaries (``container.list``), ``inspect``, counts."""

from __future__ import annotations

from typing import Any

from .. import security, shims
from ..store import ContainerRecord
from .base import ContainersBase
from .state import ACTIVE, EXITED, State


class Inspect(ContainersBase):
    """Records to dicts."""

    def summary(
        self, rec: ContainerRecord, refs: dict[str, tuple[list[str], list[str]]] | None = None
    ) -> dict[str, Any]:
        """``container.list``'s entry; ``refs`` is :meth:`Networks.network_refs` when listing
        many (else this container's networks are looked up)."""
        return {
            "id": rec.id,
            "name": rec.name,
            "image": rec.image,
            "image_id": rec.image_id,
            "command": _command(rec),
            "state": rec.run.state,
            "exit_code": rec.run.exit_code if rec.run.state == EXITED else None,
            "pid": rec.run.pid if rec.run.state in ACTIVE else 0,
            "created_at": rec.created_at,
            "started_at": rec.run.started_at,
            "finished_at": rec.run.finished_at,
            "health": self.health.status(rec.id) if rec.run.state in ACTIVE else None,
            "restarting": self.live(rec.id).restart is not None,  # the restart policy's, pending
            "labels": rec.settings.labels,
            "pod_id": rec.settings.pod_id,
            "annotations": rec.settings.annotations,
            "ports": rec.settings.ports,
            **self._network_refs(rec, refs),
        }

    def _network_refs(
        self, rec: ContainerRecord, refs: dict[str, tuple[list[str], list[str]]] | None
    ) -> dict[str, list[str]]:
        if refs is None:
            refs = {rec.id: self.networks.network_refs().get(rec.id, ([], []))}
        names, ids = refs.get(rec.id, ([], []))
        mode = rec.settings.network or "none"
        pairs = list(zip(names, ids, strict=True))
        if mode in ("host", "none") and mode not in names:
            pairs.append((mode, self.networks.builtin_ids.get(mode, "")))
        pairs.sort()  # in the same order (by name): network_ids[i] is network_names[i]'s
        return {"network_names": [n for n, _ in pairs], "network_ids": [i for _, i in pairs]}

    def inspect(self, rec: ContainerRecord) -> dict[str, Any]:
        task = self.task(rec.id)
        out = self.summary(rec)
        out.update(
            {
                "oom_killed": rec.run.oom_killed,
                "exit_signal": rec.run.exit_signal,
                "reason": rec.run.reason,
                "config": rec.stored_config(),
                "auto_remove": rec.settings.auto_remove,
                "log_path": self.log_path(rec),
                "bundle": task.dir,
                "rootfs": task.rootfs,
                "shim_pid": rec.run.shim_pid if rec.run.state in ACTIVE else 0,
                "restart_policy": rec.settings.restart or "no",
                "restart_count": rec.run.restart_count,
                # Output the log could not keep (a full disk) in the last run, recorded at its exit.
                "log_dropped_bytes": rec.run.log_dropped_bytes,
                "health_check": self.health.describe(rec.id) if rec.run.state in ACTIVE else None,
                "networks": self.networks.container_networks(rec),
                "ports": rec.settings.ports,
                **self._sandbox(rec),
            }
        )
        return out

    def _sandbox(self, rec: ContainerRecord) -> dict[str, Any]:
        """What docker's inspect shows of the namespaces and the security settings: the network
        namespace's path (``sandbox_key``: tugd's for a bridge network, the process's own with
        ``none``, "" with ``host`` or when not running), the capabilities added to and dropped
        from the default set, the masked and read-only paths."""
        mode = rec.settings.network or "none"
        key = ""
        if mode not in ("host", "none"):
            key = self.networks.netns_path(rec.id)
        elif mode == "none" and rec.run.state in ACTIVE and rec.run.pid:
            key = f"/proc/{rec.run.pid}/ns/net"
        sec = rec.settings.security or {}
        caps = set(sec.get("caps") or security.DEFAULT_CAPS)
        default = set(security.DEFAULT_CAPS)
        privileged = bool(sec.get("privileged"))
        return {
            "sandbox_key": key,
            "cap_add": [] if privileged else sorted(caps - default),
            "cap_drop": [] if privileged else sorted(default - caps),
            "masked_paths": [] if privileged else sec.get("masked_paths", security.MASKED_PATHS),
            "readonly_paths": [] if privileged else sec.get("readonly_paths", security.READONLY_PATHS),
        }

    def shim_clients(self) -> list[shims.ShimClient]:
        """The shims of running and paused containers (asked at a metrics scrape)."""
        return [self.shim(r.id) for r in self.store.list_containers() if r.run.state in ACTIVE]

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {str(state): 0 for state in State}
        for state, n in self.store.container_counts().items():
            counts[state] = counts.get(state, 0) + n
        counts["total"] = sum(counts.values())
        counts["removing"] = len(self.removing)  # gone from the list, their removal finishing
        return counts


def _command(rec: ContainerRecord) -> str:
    args = rec.settings.args
    if args is None:
        args = [*(rec.settings.entrypoint or []), *rec.settings.cmd]
    return " ".join(args)
