"""Exits: waiting for the shim to report one, recording it, releasing the task, and the
restart policy's scheduling after it."""

from __future__ import annotations

import logging
from functools import partial

import anyio

from tugwire.errors import NotFound, TugError
from tugwire.shimapi import ExitRecord
from tugwire.timefmt import epoch_seconds, rfc3339

from .. import diskfull, policy
from ..failpoints import failpoint
from ..store import ContainerRecord
from .base import ContainersBase
from .state import ACTIVE, EXITED, Move, allowed, transition, wait_result

log = logging.getLogger("tugboat.containers")

RELEASE_GRACE = 30.0
AUTO_REMOVE_GRACE = 10.0  # how long auto-remove waits for log streams to finish


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
        a delete) waits for the lock and finds the old shim gone."""
        live = self.live(cid)
        async with live.lock:
            rec = self.store.get_container(cid)
            if rec is None:
                return
            newly = allowed(rec.run.state, Move.EXIT)
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
            await self._release(cid)
            if newly:
                self._apply_policy(rec)
        if rec.settings.auto_remove:
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

    async def _release(self, cid: str) -> None:
        """Delete the task (the shim runs ``runc delete`` and exits), then unmount. Idempotent."""
        live = self.live(cid)

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
            await self.delete(cid, force=False)
        except NotFound:
            pass
        except Exception as exc:
            if not diskfull.is_disk_full(exc):
                raise
            log.warning("auto-remove of %s failed on a full disk: the next start of tugd retries", cid[:12])
