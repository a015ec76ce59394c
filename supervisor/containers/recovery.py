"""Recovery after a (re)start of tugd: re-attach to live shims, collect the exits that happened
while it was down, clean up what nothing owns."""

from __future__ import annotations

import contextlib
import logging
import os

import anyio

from tugwire import fsutil, names
from tugwire.errors import TugError
from tugwire.shimapi import TaskState
from tugwire.timefmt import rfc3339

from .. import diskfull, mounts, policy
from ..store import ContainerRecord
from .exits import Exits
from .state import ACTIVE, EXITED, TRANSITIONS, UNKNOWN, Move, transition

log = logging.getLogger("tugboat.containers")


class Recovery(Exits):
    """Rebuilding the service's picture from disk and the shims."""

    async def recover(self) -> None:
        """Rebuild from disk after a (re)start: re-attach to live shims, collect exits that
        happened while we were down, clean up what nothing owns. Shims in parallel, each under a
        deadline."""
        known = {rec.id: rec for rec in self.store.list_containers()}
        async with anyio.create_task_group() as tg:
            for rec in known.values():
                tg.start_soon(self._recover_one, rec)
            for entry in fsutil.listdir(self.cfg.shims_dir):
                if not entry.startswith(".") and entry not in known and names.is_id(entry):
                    tg.start_soon(self.task(entry).remove_orphan)
                elif entry.startswith(".deleting-"):
                    # A removal tugd died in (renamed, not yet deleted): its shim had exited.
                    fsutil.remove_tree(os.path.join(self.cfg.shims_dir, entry))
        # Bundles nothing refers to (tugd died between writing one and recording it, or in the
        # middle of a remove), and hidden leftovers of interrupted removals.
        for entry in fsutil.listdir(self.cfg.containers_dir):
            path = os.path.join(self.cfg.containers_dir, entry)
            if entry.startswith(".deleting-") or (names.is_id(entry) and entry not in known):
                with contextlib.suppress(OSError):
                    mounts.unmount_bundle(path)
                fsutil.remove_tree(path)
        # Namespaces, veths, bridges and nft rules of containers that are gone or not running.
        keep = [r.id for r in self.store.list_containers() if r.run.state in (*ACTIVE, UNKNOWN)]
        try:
            await self.networks.reconcile(keep)
        except Exception:
            log.exception("network reconcile failed")
        # Blobs and snapshots of a pull, load or build that tugd died in (no image records them;
        # nothing is in flight yet at start), and the temp files it was writing.
        try:
            blobs, snaps = self.images.collect()
            if blobs or snaps:
                log.info("freed %d blobs and %d snapshots no image uses", blobs, snaps)
        except OSError:
            log.exception("collecting unused blobs and snapshots failed")

    async def _recover_one(self, rec: ContainerRecord) -> None:
        task = self.task(rec.id)
        shim = task.shim
        try:
            if os.path.isdir(task.shim_dir):
                record = shim.read_exit()
                if record is not None:
                    await self._handle_exit(rec.id, record)
                    return
                state = await self._shim_state(rec.id)
                if state is None and (record := shim.read_exit()) is not None:
                    await self._handle_exit(rec.id, record)
                    return
                if state is None:
                    if rec.run.state in ACTIVE:
                        await self._shim_lost(rec.id)
                    else:
                        # tugd died in a start before the shim answered (or the shim died before
                        # it ran anything): nothing runs; leave no shim dir, mount or runc state.
                        await self._release(rec.id)
                    return
                if state.exit is not None:
                    await self._handle_exit(rec.id, state.exit)
                    return
                adopt = Move.ADOPT_PAUSED if state.paused else Move.ADOPT_RUNNING
                if rec.run.state != TRANSITIONS[adopt][1]:
                    # tugd died between the shim's start and the store's update (adopt it), or
                    # between a pause or unpause and its record: the shim knows.
                    transition(rec, adopt)
                    rec.run.pid = state.pid
                    rec.run.shim_pid = state.shim_pid
                    rec.run.started_at = rec.run.started_at or rfc3339()
                    self.save(rec)
                self.spawn(rec.id, self._watch, rec.id)
                if rec.settings.health:
                    self.health.watch(rec.id, rec.settings.health)
            elif rec.run.state in ACTIVE:
                # No shim dir at all: the state root was emptied (a reboot). Nothing recorded an exit.
                transition(rec, Move.LOSE)
                rec.run.reason = "the state directory was emptied (host reboot?) before the exit was recorded"
                self.save(rec)
                with contextlib.suppress(OSError):
                    mounts.unmount_bundle(task.dir)
                self._restart_on_boot(rec)
            else:
                with contextlib.suppress(OSError):
                    mounts.unmount_bundle(task.dir)
                if rec.run.state == EXITED and rec.settings.auto_remove:
                    self.tg.start_soon(self._auto_remove, rec.id)
                elif rec.run.state == EXITED and not self._restart_on_boot(rec):
                    self._apply_policy(rec)  # a restart that was pending when tugd stopped
        except Exception as exc:
            if diskfull.is_disk_full(exc):  # not recorded yet: a watch records it once there is room
                self.spawn(rec.id, self._watch, rec.id)
                return
            log.exception("recovery of %s failed", rec.id[:12])

    async def _shim_state(self, cid: str) -> TaskState | None:
        """The shim's ``task.state`` at recovery, or None if it is gone. A shim whose process lives
        but does not answer (being born when tugd died: its socket not bound yet, or ``runc run``
        still going; or slow on a loaded host) is asked again until the shim deadline: taking it
        for lost would start a second shim beside it, or call a live container unknown."""
        shim = self.shim(cid)
        deadline = anyio.current_time() + self.cfg.shim_timeout
        warned = False
        while True:
            try:
                return await shim.state(timeout=5)
            except TugError:
                if not shim.alive() or anyio.current_time() > deadline:
                    return None
            if not warned:
                log.warning("shim of %s lives but does not answer yet; waiting for it", cid[:12])
                warned = True
            await anyio.sleep(0.2)

    def _restart_on_boot(self, rec: ContainerRecord) -> bool:
        """Start an ``always`` or ``unless-stopped`` container that is not running when tugd
        starts (after a reboot, or it was stopped); True if one is scheduled."""
        rule = policy.parse(rec.settings.restart)
        if not policy.start_on_boot(rule, stopped_by_user=rec.run.stopped_by_user):
            return False
        if rec.run.stopped_by_user:
            rec.run.stopped_by_user = False
            self.save(rec)
        self._schedule_restart(rec.id, 0.0)
        return True
