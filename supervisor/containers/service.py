"""Containers: desired state, lifecycle, and the reconciliation of what the shims report.

The store holds each container's truth; a :class:`~.state.Live` holds what only a running tugd
needs (a lock that serialises verbs, an event that wakes waiters on every change, and the count of
log streams that auto-remove must wait for). Every state change goes: store first, then wake
waiters, then publish the event.

The service is put together from its parts: :mod:`.exits` (exits and the restart policy),
:mod:`.logs` (wait and logs), :mod:`.inspect` (records for clients), :mod:`.recovery` (after a
restart of tugd), and the lifecycle verbs here (create, start, kill, stop, pause, delete).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import secrets
import signal as signals
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc

from tugwire.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, TugError, Unavailable
from tugwire.timefmt import rfc3339

from .. import spec
from ..failpoints import failpoint
from ..images import ResolvedImage
from ..records import ContainerSettings, RunState
from ..store import ContainerRecord
from ..task import Task
from . import health
from .exits import images_of
from .inspect import Inspect
from .logs import FrameSink, Logs
from .options import CreateRequest, generate_name, parse_create, parse_signal
from .recovery import Recovery
from .state import (
    ACTIVE,
    CREATED,
    EXITED,
    PAUSED,
    REMOVED,
    RUNNING,
    UNKNOWN,
    Move,
    allowed,
    transition,
)

log = logging.getLogger("tugboat.containers")

KILL_WAIT = 30.0  # after SIGKILL, how long until a container that did not go is an error


class Containers(Recovery, Logs, Inspect):
    """The containers service: the lifecycle verbs, on the parts it is made of."""

    # ------------------------------------------------------------------------------- create

    async def create(self, req: CreateRequest) -> ContainerRecord:
        """Validate, resolve the image, write the bundle, then record the container."""
        settings = parse_create(req, self.cfg)
        image = self.images.resolve(settings.image)
        stop_signal = settings.stop_signal
        if not stop_signal:
            stop_signal = image.config.get("StopSignal") or "SIGTERM"
            parse_signal(stop_signal, int(signals.SIGTERM))
        labels = settings.labels
        if settings.pod_id is None:  # a pod's container (the CRI's) keeps exactly the labels it was given
            image_labels = image.config.get("Labels") or {}  # under the user's, as docker does
            labels = {**{k: v for k, v in image_labels.items() if isinstance(v, str)}, **labels}
        endpoint = req.network
        joined_net = settings.namespaces.get("network")
        if joined_net:  # a pod's namespace (or the host's): no endpoint of tugd's networks
            endpoint = dataclasses.replace(endpoint, network="host" if joined_net == "host" else "none")
        settings = dataclasses.replace(
            settings,
            stop_signal=stop_signal,
            health=health.parse(req.health, image.config),
            labels=labels,
            **self.networks.parse_create(endpoint, image.config),
        )
        name = settings.name or generate_name(self.store, self.creating_names)
        if name in self.creating_names or self.store.name_taken(name):
            raise AlreadyExists(f"the container name {name!r} is already in use", field="name")
        self.creating_names.add(name)
        try:
            return await self._create(req, settings, image, name)
        finally:
            self.creating_names.discard(name)

    async def _create(
        self, req: CreateRequest, settings: ContainerSettings, image: ResolvedImage, name: str
    ) -> ContainerRecord:
        cid = secrets.token_hex(32)
        task = self.task(cid)
        settings = dataclasses.replace(settings, volumes=await self._image_volumes(settings.volumes, task))
        layers = await self.images.ensure_unpacked(image.record)
        oci = spec.build(
            cid,
            settings,
            image.config,
            task.rootfs,
            layers,
            self.networks.spec_for(cid, settings, task.dir),
        )
        args = oci["process"]["args"]  # what runs, with the image's Entrypoint and Cmd
        if settings.init:
            args = args[len(spec.init_prefix()) :]  # the command, not tini's
        user = oci["process"]["user"]  # PID 1's identity, resolved against the image's files
        process_user = {
            "uid": user["uid"],
            "gid": user["gid"],
            "additional_gids": user.get("additionalGids", []),
        }
        settings = dataclasses.replace(settings, name=name, args=args, process_user=process_user)
        try:
            # In a worker thread: its mkdirs and files wait for the disk's journal on a busy host
            # (cProfile of 100 `run --rm`: 8.8 ms per container on the event loop), and parallel
            # creates should not queue behind them. Inside the try: cancelled once the thread is
            # done, the bundle is nobody's (nothing refers to it before the record below).
            await anyio.to_thread.run_sync(functools.partial(task.write_bundle, oci, own_upper=True))
            failpoint("container.create.after_bundle")
            rec = ContainerRecord(
                id=cid,
                name=name,
                image=image.ref,
                image_id=image.record.id,
                created_at=rfc3339(),
                settings=settings,
                run=RunState(CREATED),
            )
            with self.store.transaction():  # the container and its addresses, or neither
                self.networks.allocate(rec, task.dir)  # sets the host ports in rec.settings
                self.store.insert_container(rec)
        except BaseException:
            task.remove_bundle()
            raise  # a name taken meanwhile: AlreadyExists, from the store
        failpoint("container.create.after_db")
        self.networks.refresh_hosts(self.networks.network_ids_of(cid), self.cfg.container_dir)
        self.publish("create", rec)
        return rec

    # ---------------------------------------------------------------------------------- run

    async def run(
        self,
        req: CreateRequest,
        sink: FrameSink,
        started: Callable[[ContainerRecord], Awaitable[None]],
    ) -> dict[str, Any]:
        """A foreground ``run`` in one call (``container.run``): create; then, before the start,
        the wait (``removed`` for an auto-removed container, else ``next-exit``) and the log's
        follow, which holds an auto-removal back until its last byte is read; start;
        ``started(rec)`` (where the API switches its connection to frames: no byte is passed
        to ``sink`` before it returns); the log to ``sink`` until the exit; then the wait's
        answer with ``dropped_bytes`` (and ``log_error`` if the log broke off). A start that
        fails removes an auto-removed container before its error is raised, as ``tug run``
        used to with a ``container.delete`` of its own. What it saves over the four calls:
        two round trips and a connection per ``tug run`` (docs/benchmarks.md)."""
        rec = await self.create(req)
        live = self.live(rec.id)
        waiting = self.wait(rec.id, REMOVED if rec.settings.auto_remove else "next-exit")
        opened = anyio.Event()
        logged: dict[str, Any] = {"dropped_bytes": 0}

        async def gated(kind: int, data: bytes) -> None:
            await opened.wait()
            await sink(kind, data)

        async def follow(*, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
            live.holds += 1  # from here, not from the reader's first step: before the start
            try:
                task_status.started()
                logged.update(await self.logs_raw(rec.id, gated, follow=True))
            except TugError as exc:  # the log broke off: the exit is still told
                logged["log_error"] = exc.message
            finally:
                live.holds -= 1
                live.changed()

        failed: TugError | None = None
        async with anyio.create_task_group() as tg:
            await tg.start(follow)
            try:
                await self.start(rec.id)
            except TugError as exc:
                failed = exc
                tg.cancel_scope.cancel()
            else:
                await started(rec)
                opened.set()
        if failed is not None:
            await self._start_failed(rec, failed)
            raise failed
        return {**await waiting, **logged}

    async def run_detached(self, req: CreateRequest) -> ContainerRecord:
        """``run -d`` in one call (``container.run {detach}``): create, then start; a start that
        fails as in :meth:`run`."""
        rec = await self.create(req)
        try:
            return await self.start(rec.id)
        except TugError as exc:
            await self._start_failed(rec, exc)
            raise

    async def _start_failed(self, rec: ContainerRecord, exc: TugError) -> None:
        """A start in a ``run`` failed: its error says which container (a start's error, not a
        create's), and an auto-removed container goes before the error is answered."""
        exc.details.setdefault("container_id", rec.id)
        if rec.settings.auto_remove:
            with anyio.CancelScope(shield=True), contextlib.suppress(TugError):
                await self.delete(rec.id, force=True)

    async def _image_volumes(self, volumes: list[dict[str, Any]], task: Task) -> list[dict[str, Any]]:
        """``volumes`` with each image volume's image resolved (NotFound for an image not
        here: the caller pulls first) and its bind mount's source set: its overlay's mount
        point in the bundle (mounted at start), or the ``subpath`` under it, which must exist
        in the image (InvalidArgument)."""
        out = []
        index = 0
        for vol in volumes:
            if vol.get("type") != "image":
                out.append(vol)
                continue
            rec = self.images.resolve(vol["image"]).record
            subpath = vol.get("subpath") or ""
            if subpath:
                lowers = await self.images.ensure_unpacked(rec)
                if not any(os.path.lexists(os.path.join(lower, subpath)) for lower in lowers):
                    raise InvalidArgument(
                        f"image volume subpath {subpath!r} is not in image {vol['image']}", field="volumes"
                    )
            source = os.path.join(task.image_volume(index), subpath) if subpath else task.image_volume(index)
            out.append({**vol, "image_id": rec.id, "source": source})
            index += 1
        return out

    async def _mount_image_volumes(self, rec: ContainerRecord, task: Task) -> None:
        """Mount ``rec``'s image volumes (their images' snapshots, read-only) before it starts;
        a subpath that is not a plain directory or file of the image (a symbolic link, which the
        runtime would follow on the host) is refused."""
        vols = [v for v in rec.settings.volumes if v.get("type") == "image"]
        if not vols:
            return
        lowers = []
        for vol in vols:
            image = self.store.get_image(vol["image_id"])
            if image is None:
                raise NotFound(f"the image {vol['image']} of an image volume of container {rec.name} is gone")
            lowers.append(await self.images.ensure_unpacked(image))
        await task.mount_images(lowers)
        for vol in vols:
            src = vol["source"]
            if os.path.realpath(src) != src or not os.path.exists(src):
                raise InvalidArgument(
                    f"image volume subpath {vol.get('subpath')!r} is not a path inside image {vol['image']}",
                    field="volumes",
                )

    # -------------------------------------------------------------------------------- start

    async def start(self, ref: str, *, by_policy: bool = False) -> ContainerRecord:
        """Start a created or exited container. A start the user asks for (not ``by_policy``)
        cancels a pending restart and resets the restart count."""
        rec = self.get(ref)
        live = self.live(rec.id)
        if not by_policy:
            live.cancel_restart()
        async with live.lock:
            rec = self.reload(rec.id)
            if rec.run.state in ACTIVE:
                raise FailedPrecondition(f"container {rec.name} is already running", state=rec.run.state)
            if not by_policy:
                live.restart_delay = 0.0
                rec.run.restart_count = 0
                rec.run.stopped_by_user = False
            if rec.run.state == UNKNOWN and not by_policy:
                raise FailedPrecondition(
                    f"container {rec.name} is in an unknown state ({rec.run.reason}); remove it",
                    state=rec.run.state,
                )
            t0 = anyio.current_time()
            task = self.task(rec.id)
            await task.mount_with_new_shim_dir(await self.lower_layers(rec))
            try:
                await self._mount_image_volumes(rec, task)
            except BaseException:
                await task.abandon()
                raise
            failpoint("container.start.after_mount")
            config = task.shim_config(
                name=rec.name,
                image=rec.image,
                log_max_size=rec.settings.log_max_size or 0,
                log_max_files=rec.settings.log_max_files or 0,
                metrics_address=rec.settings.metrics_address or "",
                tty=rec.settings.tty,
                stdin=rec.settings.stdin,
                log_path=rec.settings.log_path,
                cgroup_parent=rec.settings.cgroup_parent,
            )
            if rec.settings.log_path:  # the CRI's: its directory (under the pod's) may be new
                os.makedirs(os.path.dirname(config.log_path), mode=0o755, exist_ok=True)
            try:
                await self.networks.setup(rec)
                failpoint("container.start.after_network")
                reply = await task.launch(self.launcher, config)
            except BaseException:
                await task.abandon()
                with anyio.CancelScope(shield=True):
                    await self.networks.teardown(rec.id)
                raise
            failpoint("container.start.after_launch")
            transition(rec, Move.START)
            rec.run.pid = reply.pid
            rec.run.shim_pid = reply.shim_pid
            rec.run.started_at = rfc3339()
            rec.run.exit_code = None
            rec.run.exit_signal = None
            rec.run.oom_killed = False
            rec.run.finished_at = None
            rec.run.reason = ""
            self.save(rec)
            self.publish("start", rec)
            self.spawn(rec.id, self._watch, rec.id)
            if rec.settings.health:
                self.health.watch(rec.id, rec.settings.health)
            if self._on_start_latency is not None:
                self._on_start_latency(anyio.current_time() - t0)
        return rec

    # ------------------------------------------------------------------- kill, stop, delete

    async def kill(self, ref: str, sig: int, *, all_processes: bool = False) -> ContainerRecord:
        rec = self.get(ref)
        # Under the container's lock, like the exit's handling: the ``kill`` event always comes
        # before the ``die`` it causes (per-container order of events).
        async with self.live(rec.id).lock:
            rec = self.reload(rec.id)
            if rec.run.state not in ACTIVE:
                raise FailedPrecondition(f"container {rec.name} is not running", state=rec.run.state)
            try:
                await self.shim(rec.id).kill(sig, all_processes=all_processes)
            except FailedPrecondition as exc:
                raise FailedPrecondition(f"container {rec.name} is not running", state=EXITED) from exc
            self.publish(
                "kill",
                rec,
                signal=signals.Signals(sig).name if sig in signals.Signals._value2member_map_ else sig,
            )
        return rec

    async def _wait_not_active(self, cid: str) -> None:
        live = self.live(cid)
        while True:
            rec = self.store.get_container(cid)
            if rec is None or rec.run.state not in ACTIVE:
                return
            await live.wait_changed()

    async def stop(self, ref: str, timeout: int | None, signal: int | None = None) -> ContainerRecord:
        """The stop signal (``signal``, else the container's), then SIGKILL after ``timeout``
        seconds; returns once the exit is recorded. Stopping a container that is not running
        changes nothing."""
        rec = self.get(ref)
        await self._stopped_by_user(rec.id)
        rec = self.reload(rec.id)
        if rec.run.state not in ACTIVE:
            return rec
        if rec.run.state == PAUSED:
            # A frozen process acts on no signal: thaw it first, so that it can stop cleanly.
            with contextlib.suppress(FailedPrecondition):
                await self.set_paused(rec.id, False)
        grace = rec.settings.stop_timeout if timeout is None else timeout
        sig = signal
        if sig is None:
            sig = parse_signal(rec.settings.stop_signal, int(signals.SIGTERM))
        with contextlib.suppress(FailedPrecondition):
            await self.kill(rec.id, sig)
        failpoint("container.stop.after_signal")
        with anyio.move_on_after(grace):
            await self._wait_not_active(rec.id)
            self.publish("stop", rec)
            return self.reload(rec.id)
        with contextlib.suppress(FailedPrecondition):
            await self.kill(rec.id, int(signals.SIGKILL))
        try:
            with anyio.fail_after(KILL_WAIT):
                await self._wait_not_active(rec.id)
        except TimeoutError:
            raise Unavailable(f"container {rec.name} did not stop {KILL_WAIT:g}s after SIGKILL") from None
        self.publish("stop", rec)
        return self.reload(rec.id)

    async def _stopped_by_user(self, cid: str) -> None:
        """Record that the user stopped the container (its restart policy leaves it alone) and
        cancel a pending restart."""
        live = self.live(cid)
        live.cancel_restart()
        async with live.lock:
            rec = self.reload(cid)
            if not rec.run.stopped_by_user:
                rec.run.stopped_by_user = True
                self.save(rec)

    async def reopen_log(self, ref: str) -> ContainerRecord:
        """Have the shim open the container's log file again at its path (kubelet renamed it:
        ReopenContainerLog). Only for a container created with a ``log_path``: tugd rotates its
        own logs itself. FailedPrecondition unless it is running."""
        rec = self.get(ref)
        if not rec.settings.log_path:
            raise FailedPrecondition(
                f"container {rec.name} has tugd's own log, which tugd rotates: there is nothing to reopen"
            )
        if rec.run.state not in ACTIVE:
            raise FailedPrecondition(f"container {rec.name} is not running", state=rec.run.state)
        try:
            await self.shim(rec.id).reopen_log()
        except FailedPrecondition as exc:
            raise FailedPrecondition(f"container {rec.name}: {exc.message}", state=EXITED) from exc
        return rec

    async def set_paused(self, ref: str, paused: bool) -> ContainerRecord:
        """Pause (freeze, ``runc pause``) or unpause a container; events ``pause``/``unpause``.
        FailedPrecondition, changing nothing, unless it is running (pause) or paused (unpause)."""
        rec = self.get(ref)
        verb = "pause" if paused else "unpause"
        async with self.live(rec.id).lock:
            rec = self.reload(rec.id)
            move = Move.PAUSE if paused else Move.UNPAUSE
            if not allowed(rec.run.state, move):
                if rec.run.state == PAUSED:
                    raise FailedPrecondition(f"container {rec.name} is already paused", state=rec.run.state)
                if rec.run.state == RUNNING:
                    raise FailedPrecondition(f"container {rec.name} is not paused", state=rec.run.state)
                raise FailedPrecondition(
                    f"cannot {verb} container {rec.name}: container is {rec.run.state}", state=rec.run.state
                )
            try:
                shim = self.shim(rec.id)
                await (shim.pause() if paused else shim.resume())
            except FailedPrecondition as exc:
                raise FailedPrecondition(
                    f"cannot {verb} container {rec.name}: {exc.message}", state=rec.run.state
                ) from exc
            transition(rec, move)
            self.save(rec)
            self.publish(verb, rec)
        return rec

    async def delete(self, ref: str, *, force: bool) -> ContainerRecord:
        rec = self.get(ref)
        self.live(rec.id).cancel_restart()
        self.health.forget(rec.id)
        if rec.run.state in ACTIVE:
            if not force:
                raise FailedPrecondition(
                    f"cannot remove container {rec.name}: container is running: stop the container "
                    "before removing or use force",
                    state=rec.run.state,
                )
            with contextlib.suppress(FailedPrecondition, Unavailable):
                await self.kill(rec.id, int(signals.SIGKILL))
            with anyio.move_on_after(KILL_WAIT):
                await self._wait_not_active(rec.id)
        live = self.live(rec.id)
        async with live.lock:
            rec = self.reload(rec.id)
            await self._release(rec.id)
            task = self.task(rec.id)
            await task.unmount()
            if task.is_mounted():
                raise FailedPrecondition(f"the root filesystem of {rec.name} is still mounted")
            failpoint("container.delete.after_release")
            peers = self._forget(rec, live)
        self.publish("destroy", rec)
        # What is left (the peers' hosts files, the bundle) is quick now; an auto-removal leaves
        # its release to this half too, and does not wait for it (exits.py, _remove_now).
        await self._finish_removal(rec.id, images_of(rec), live, peers)
        return rec
