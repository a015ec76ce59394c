"""Exits: waiting for the shim to report one, recording it, releasing the task, and the
restart policy's scheduling after it."""

from __future__ import annotations

import logging
from functools import partial

import anyio

from tugwire.errors import TugError
from tugwire.shimapi import ExitRecord
from tugwire.timefmt import epoch_seconds, rfc3339

from .. import diskfull, policy
from ..failpoints import failpoint
from ..store import ContainerRecord
from .base import ContainersBase
from .state import ACTIVE, EXITED, REMOVED, Live, Move, allowed, transition, wait_result

log = logging.getLogger("tugboat.containers")

RELEASE_GRACE = 30.0
AUTO_REMOVE_GRACE = 10.0  # how long auto-remove waits for log streams to finish


def images_of(rec: ContainerRecord) -> list[str]:
    """The images container ``rec`` uses: its own, then its image volumes'."""
    vols = [v["image_id"] for v in rec.settings.volumes if v.get("type") == "image" and v.get("image_id")]
    return list(dict.fromkeys([rec.image_id, *vols]))


class Exits(ContainersBase):
    """What happens when a container's PID 1 exits, or its shim goes away."""

    async def _watch(self, cid: str) -> None:
        """Wait for the shim to report the exit; a shim that goes away first is reconciled."""
        record = await self.task(cid).wait()
        # A full disk must not lose the exit nor end tugd: recorded once there is room (issue 19).
        if record is None:
            await diskfull.retry_while_full(f"the lost shim of {cid[:12]}", partial(self._shim_lost, cid))
        else:
            done = partial(self._handle_exit, cid, record)
            await diskfull.retry_while_full(f"the exit of {cid[:12]}", done)

    async def _handle_exit(self, cid: str, record: ExitRecord) -> None:
        """Record the exit, wake waiters, and release the task (the shim's ``runc delete``, the
        unmount) while still holding the container's lock: whoever acts on the exit (a restart,
        a delete) waits for the lock and finds the old shim gone. An auto-removed container is
        removed instead, its release in the removal's second half (docs/design.md, "Removal")."""
        live = self.live(cid)
        async with live.lock:
            rec = self.store.get_container(cid)
            if rec is None:
                return
            newly = allowed(rec.run.state, Move.EXIT)
            auto_remove = rec.settings.auto_remove
            # Auto-remove with no log stream to wait for: the row goes at once, in place of the
            # exit's record (one write instead of two; a crash before it: the shim's exit record
            # is still there, and recovery handles the exit again).
            remove_now = newly and auto_remove and live.holds == 0
            if newly:
                failpoint("container.exit.before_record")
                transition(rec, Move.EXIT)
                rec.run.exit_code = record.exit_code
                rec.run.exit_signal = record.signal
                rec.run.oom_killed = record.oom_killed
                rec.run.log_dropped_bytes = record.log_dropped_bytes
                rec.run.finished_at = record.exited_at or rfc3339()
                rec.run.pid = 0
                rec.run.reason = ""
                if not remove_now:
                    self.store.update_container(rec)
                live.exits += 1
                live.last_result = wait_result(rec)
                self.health.forget(cid)
                live.changed()
                if rec.run.oom_killed:
                    # Read from the cgroup's own OOM counter by the shim before the cgroup went.
                    self.publish("oom", rec)
                dropped = {"log_dropped_bytes": rec.run.log_dropped_bytes}
                self.publish(
                    "die",
                    rec,
                    exit_code=rec.run.exit_code,
                    signal=rec.run.exit_signal,
                    oom_killed=rec.run.oom_killed,
                    **(dropped if rec.run.log_dropped_bytes else {}),
                )
                if self._on_exit is not None:
                    self._on_exit(rec.run.exit_code, rec.run.oom_killed)
                failpoint("container.exit.after_record")
            if remove_now:
                peers = self._forget(rec, live)
                # At once, with no checkpoint between: _forget cancelled the container's tasks,
                # this watcher among them.
                self.publish("destroy", rec)
                self.tg.start_soon(self._finish_removal, cid, images_of(rec), live, peers)
            elif not auto_remove:
                await self._release(cid)
                if newly:
                    self._apply_policy(rec)
        if auto_remove and not remove_now:
            # Its release is the removal's (off the critical path: _finish_removal); meanwhile
            # the shim serves the log streams that auto-remove waits for.
            self.tg.start_soon(self._auto_remove, cid)

    def _apply_policy(self, rec: ContainerRecord) -> None:
        """After an exit: schedule the restart its policy asks for (cancelled by stop, rm, start)."""
        live = self.live(rec.id)
        ran_for = 0.0
        started, finished = epoch_seconds(rec.run.started_at), epoch_seconds(rec.run.finished_at)
        if started is not None and finished is not None:
            ran_for = max(finished - started, 0.0)
        decision = policy.decide(
            policy.parse(rec.settings.restart),
            exit_code=rec.run.exit_code if rec.run.state == EXITED else None,
            stopped_by_user=rec.run.stopped_by_user,
            restart_count=rec.run.restart_count,
            previous_delay=live.restart_delay,
            ran_for=ran_for,
        )
        if not decision.restart or rec.settings.auto_remove:
            return
        live.restart_delay = decision.delay
        self._schedule_restart(rec.id, decision.delay)

    def _schedule_restart(self, cid: str, delay: float) -> None:
        live = self.live(cid)
        live.cancel_restart()
        scope = live.restart = anyio.CancelScope()
        self.spawn(cid, self._restart_later, cid, delay, scope)

    async def _restart_later(self, cid: str, delay: float, scope: anyio.CancelScope) -> None:
        with scope:
            await anyio.sleep(delay)
            live = self.live(cid)
            async with live.lock:
                rec = self.store.get_container(cid)
                if rec is None or rec.run.state in ACTIVE or rec.run.stopped_by_user:
                    return
                rec.run.restart_count += 1
                try:
                    self.save(rec)
                except Exception as exc:
                    if not diskfull.is_disk_full(exc):
                        raise
                    log.warning("restart of %s waits for disk space", cid[:12])  # issue 19
                    self._schedule_restart(cid, max(delay, 1.0))
                    return
            if live.restart is scope:
                live.restart = None
            self.publish("restart", rec, restart_count=rec.run.restart_count)
            if self._on_restart is not None:
                self._on_restart()
            try:
                await self.start(cid, by_policy=True)
            except TugError as exc:
                log.warning("restart of %s failed: %s", cid[:12], exc)
                # A start that fails is an exit too: the policy decides again, with its backoff.
                rec = self.store.get_container(cid)
                if rec is not None and rec.run.state not in ACTIVE:
                    rec.run.reason = f"restart failed: {exc.message}"
                    self.save(rec)
                    self._apply_policy(rec)

    async def _shim_lost(self, cid: str) -> None:
        rec = self.store.get_container(cid)
        if rec is None or not allowed(rec.run.state, Move.LOSE):
            return
        transition(rec, Move.LOSE)
        rec.run.reason = (
            f"the shim (pid {rec.run.shim_pid}) went away without recording an exit; "
            "the exit code is not known"
        )
        self.live(cid).last_result = wait_result(rec)
        self.live(cid).exits += 1
        self.save(rec)
        self.publish("die", rec, exit_code=None, reason=rec.run.reason)
        if self._on_exit is not None:
            self._on_exit(None, False)

    async def _release(self, cid: str, live: Live | None = None) -> None:
        """Delete the task (the shim runs ``runc delete`` and exits), then unmount. Idempotent.
        ``live``: the container's companion, once it is no longer in the table (a removal)."""
        live = live or self.live(cid)

        async def task_and_rootfs() -> None:
            await self.task(cid).release(RELEASE_GRACE * 2 / 3)

        async def network() -> None:
            # Beside the task's deletion, not after it: the container's processes are gone, and
            # deleting a veth waits ~18 ms for the kernel (RCU); measured, the default bridge's
            # cost over --network none fell from +22 to +5 ms (docs/benchmarks.md). A crash
            # here is swept by the next start's reconcile, as before.
            try:
                await self.networks.teardown(cid)
            except Exception:
                log.exception("network teardown of %s failed (the next start of tugd retries)", cid[:12])

        with anyio.move_on_after(RELEASE_GRACE, shield=True):
            async with live.release_lock, anyio.create_task_group() as tg:
                tg.start_soon(task_and_rootfs)
                tg.start_soon(network)

    async def _auto_remove(self, cid: str) -> None:
        live = self.live(cid)
        with anyio.move_on_after(AUTO_REMOVE_GRACE):
            while live.holds > 0:
                await live.wait_changed()
        try:
            await self._remove_now(cid)
        except Exception as exc:
            if not diskfull.is_disk_full(exc):
                raise
            log.warning("auto-remove of %s failed on a full disk: the next start of tugd retries", cid[:12])
            await self._release(cid)  # the container stays, exited: its task need not

    async def _remove_now(self, cid: str) -> None:
        """Auto-remove: the container's row goes at once (the removal is durable, the container
        invisible, ``wait {removed}`` answers); its release and the rest follow off the critical
        path (:meth:`_finish_removal`)."""
        live = self.live(cid)
        async with live.lock:
            rec = self.store.get_container(cid)
            if rec is None or rec.run.state in ACTIVE:  # removed, or started again meanwhile
                return
            self.health.forget(cid)
            peers = self._forget(rec, live)
        self.publish("destroy", rec)
        self.tg.start_soon(self._finish_removal, cid, images_of(rec), live, peers)

    def _forget(self, rec: ContainerRecord, live: Live) -> list[str]:
        """The first half of a removal, under the container's lock: its row and its addresses
        go, in one transaction (with them, the container is invisible, its name free, its
        networks free to be removed), and its waiters are told ``removed``. Returns the networks
        it was on (their peers' hosts files are the second half's). A crash before the second
        half is swept by recovery (orphan shim dirs, bundles, namespaces)."""
        peers = self.networks.network_ids_of(rec.id)
        if peers:
            with self.store.transaction():
                self.store.delete_container(rec.id)
                self.networks.db.delete_endpoints_of(rec.id)
        else:
            self.store.delete_container(rec.id)  # one statement: its own transaction
        self.removing[rec.id] = rec.image_id
        failpoint("container.delete.after_db")
        if not live.last_result:
            live.last_result = wait_result(rec)
        live.last_result = {**live.last_result, "state": REMOVED}
        self._live.pop(rec.id, None)
        live.cancel_tasks()  # what is left of its watcher, restart timer and health checks
        live.changed()
        return peers

    async def _finish_removal(self, cid: str, image_ids: list[str], live: Live, peers: list[str]) -> None:
        """The second half of a removal, off the critical path: the task (``runc delete``), the
        unmount, the network's teardown, the peers' hosts files, the bundle, then the images (its
        own and its image volumes') that nothing else uses. Shielded: tugd's shutdown waits for
        it. If it fails, the container stays counted in ``removing`` (``system.info``) and the
        next start of tugd finishes it."""
        task = self.task(cid)
        done = False
        with anyio.move_on_after(RELEASE_GRACE * 2, shield=True):
            try:
                await self._release(cid, live)
                failpoint("container.remove.after_release")
                if task.is_mounted():
                    log.warning("the rootfs of %s is still mounted: the next start of tugd retries", cid[:12])
                    return
                if peers:
                    self.networks.refresh_hosts(peers, self.cfg.container_dir)
                # Its upper dir holds whatever it wrote: removing it can take long, and must not
                # stall the event loop (the rename inside makes it vanish at once).
                await anyio.to_thread.run_sync(task.remove_bundle)
                done = True
            except Exception:
                log.exception("removal of %s failed (the next start of tugd finishes it)", cid[:12])
        if done:
            self.removing.pop(cid, None)
            for image_id in image_ids:
                self.images.gc_unused(image_id)
