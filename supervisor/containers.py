"""Containers: desired state, lifecycle, and the reconciliation of what the shims report.

The store holds each container's truth; a :class:`Live` holds what only a running tugd needs
(a lock that serialises verbs, an event that wakes waiters on every change, and the count of
log streams that auto-remove must wait for). Every state change goes: store first, then wake
waiters, then publish the event.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import random
import secrets
import signal as signals
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc

from tugwire import crilog, fsutil, httpserve, jsonrpc, names
from tugwire.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    TugError,
    Unavailable,
)
from tugwire.shimapi import ExitRecord, LogsParams, ShimConfig, TaskState

from . import health, mounts, policy, security, shims, spec
from .config import Config
from .events import Event, EventBus
from .failpoints import failpoint
from .images import Images, now_rfc3339
from .network import Networks
from .store import ContainerRecord, Store

log = logging.getLogger("tugboat.containers")

CREATED, RUNNING, PAUSED, EXITED, UNKNOWN = "created", "running", "paused", "exited", "unknown"
ACTIVE = (RUNNING, PAUSED)
LOG_CHUNK = 256 * 1024
RELEASE_GRACE = 30.0
AUTO_REMOVE_GRACE = 10.0  # how long auto-remove waits for log streams to finish
KILL_WAIT = 30.0  # after SIGKILL, how long until a container that did not go is an error


def parse_signal(value: Any, default: int = int(signals.SIGKILL)) -> int:
    """``SIGTERM``, ``TERM``, ``term``, ``15`` or 15."""
    if value is None or value == "":
        return default
    if isinstance(value, int) and not isinstance(value, bool):
        num = value
    elif isinstance(value, str) and value.isdigit():
        num = int(value)
    elif isinstance(value, str):
        name = value.upper()
        name = name if name.startswith("SIG") else "SIG" + name
        try:
            num = int(signals.Signals[name])
        except KeyError:
            raise InvalidArgument(f"invalid signal: {value}", field="signal") from None
    else:
        raise InvalidArgument(f"invalid signal: {value!r}", field="signal")
    if not 0 < num < 65:
        raise InvalidArgument(f"invalid signal: {value}", field="signal")
    return num


_ADJ = [
    "brave",
    "calm",
    "eager",
    "fond",
    "keen",
    "lucid",
    "merry",
    "nimble",
    "quiet",
    "sharp",
    "steady",
    "swift",
    "tender",
    "vivid",
    "witty",
    "zealous",
    "bold",
    "gentle",
    "jolly",
    "proud",
]
_NOUN = [
    "otter",
    "heron",
    "marlin",
    "puffin",
    "walrus",
    "gull",
    "seal",
    "orca",
    "pelican",
    "tern",
    "narwhal",
    "dolphin",
    "beaver",
    "crab",
    "skate",
    "cormorant",
    "manatee",
    "plover",
    "eel",
    "kelp",
]


@dataclass
class Live:
    """A container's in-memory companion (rebuilt on every tugd start)."""

    lock: anyio.Lock = field(default_factory=anyio.Lock)
    release_lock: anyio.Lock = field(default_factory=anyio.Lock)
    holds: int = 0
    exits: int = 0  # exits seen by this tugd, for wait(condition=next-exit)
    last_result: dict[str, Any] = field(default_factory=dict)
    restart: anyio.CancelScope | None = None  # a pending restart of the restart policy
    restart_delay: float = 0.0  # the last backoff delay of the restart policy
    _changed: anyio.Event = field(default_factory=anyio.Event)

    def cancel_restart(self) -> None:
        """Cancel a pending restart of the restart policy, if any."""
        if self.restart is not None:
            self.restart.cancel()
            self.restart = None

    def changed(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_changed(self) -> None:
        await self._changed.wait()


def wait_result(rec: ContainerRecord) -> dict[str, Any]:
    return {
        "id": rec.id,
        "state": rec.state,
        "exit_code": rec.exit_code if rec.state == EXITED else None,
        "signal": rec.exit_signal if rec.state == EXITED else None,
        "oom_killed": rec.oom_killed,
    }


class Containers:
    def __init__(
        self,
        cfg: Config,
        store: Store,
        images: Images,
        launcher: shims.ShimLauncher,
        bus: EventBus,
        tg: anyio.abc.TaskGroup,
        on_start_latency: Callable[[float], None] | None = None,
        on_exit: Callable[[int | None, bool], None] | None = None,
        on_restart: Callable[[], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.images = images
        self.launcher = launcher
        self.bus = bus
        self.tg = tg
        self._live: dict[str, Live] = {}
        self._on_start_latency = on_start_latency
        self._on_exit = on_exit  # (exit code or None when not known, OOM-killed): for the metrics
        self._on_restart = on_restart  # a restart by the restart policy: for the metrics
        self.health = health.Monitor(self)  # health checks, as execs of the shims
        self.networks = Networks(cfg, store, bus)  # namespaces, veths, addresses, ports
        os.makedirs(cfg.containers_dir, mode=0o700, exist_ok=True)
        os.makedirs(cfg.shims_dir, mode=0o700, exist_ok=True)
        os.makedirs(cfg.runtime_root, mode=0o700, exist_ok=True)

    # ------------------------------------------------------------------------------ helpers

    def live(self, cid: str) -> Live:
        live = self._live.get(cid)
        if live is None:
            live = self._live[cid] = Live()
        return live

    def get(self, ref: Any) -> ContainerRecord:
        if not isinstance(ref, str) or not ref:
            raise InvalidArgument("a container id or name is required", field="id")
        found = self.store.find_containers(ref)
        if not found:
            raise NotFound(f"no such container: {ref}")
        if len(found) > 1:
            exact = [r for r in found if r.name == ref or r.id == ref]
            if len(exact) != 1:
                raise InvalidArgument(f"multiple containers match {ref!r}; give more of the id")
            return exact[0]
        return found[0]

    def _publish(self, action: str, rec: ContainerRecord, **attributes: Any) -> None:
        self.bus.publish(Event("container", action, rec.id, rec.name, rec.image, attributes))

    def shim(self, cid: str) -> shims.ShimClient:
        """The client of container ``cid``'s shim (whether or not one runs)."""
        return shims.ShimClient(self.cfg.shim_dir(cid), self.cfg.shim_timeout)

    def rootfs(self, cid: str) -> str:
        """Where container ``cid``'s root filesystem is mounted (while it runs)."""
        return os.path.join(self.cfg.container_dir(cid), "rootfs")

    def _paths(self, cid: str) -> dict[str, str]:
        cdir = self.cfg.container_dir(cid)
        sdir = self.cfg.shim_dir(cid)
        return {
            "dir": cdir,
            "rootfs": os.path.join(cdir, "rootfs"),
            "upper": os.path.join(cdir, "upper"),
            "work": os.path.join(cdir, "work"),
            "spec": os.path.join(cdir, "config.json"),
            "log": os.path.join(cdir, "container.log"),
            "shim": sdir,
        }

    def _log_files(self, rec: ContainerRecord) -> list[str]:
        max_files = int(rec.config.get("log_max_files") or self.cfg.log_max_files)
        return crilog.rotated_paths(self._paths(rec.id)["log"], max_files)

    def _update(self, rec: ContainerRecord) -> None:
        self.store.update_container(rec)
        self.live(rec.id).changed()

    # ------------------------------------------------------------------------------- create

    def _parse_create(self, p: jsonrpc.Params) -> dict[str, Any]:
        opts: dict[str, Any] = {}
        opts["image"] = p.string("image", required=True)
        name = p.string("name")
        if name is not None:
            names.check_name(name)
        opts["name"] = name
        cmd = p.list_of_str("cmd")
        opts["cmd"] = cmd
        raw_ep = p.raw.get("entrypoint")
        if raw_ep is not None:
            opts["entrypoint"] = p.list_of_str("entrypoint")
        env = p.list_of_str("env")
        for item in env:
            if "=" not in item or item.startswith("="):
                raise InvalidArgument(f"invalid environment variable {item!r}: want KEY=VALUE", field="env")
            if "\x00" in item:
                raise InvalidArgument("environment variables may not contain NUL", field="env")
        opts["env"] = env
        workdir = p.string("workdir")
        if workdir is not None and (not workdir.startswith("/") or "\x00" in workdir):
            raise InvalidArgument(
                f"the working directory {workdir!r} must be an absolute path", field="workdir"
            )
        opts["workdir"] = workdir
        opts["user"] = p.string("user")
        hostname = p.string("hostname")
        if hostname is not None and not _valid_hostname(hostname):
            raise InvalidArgument(f"invalid hostname {hostname!r}", field="hostname")
        opts["hostname"] = hostname
        volumes = []
        for vol in p.list_of_dict("volumes"):
            src, dst = vol.get("source"), vol.get("destination")
            if not isinstance(src, str) or not os.path.isabs(src):
                raise InvalidArgument(f"volume source {src!r} must be an absolute host path", field="volumes")
            if not isinstance(dst, str) or not os.path.isabs(dst) or ".." in dst.split("/"):
                raise InvalidArgument(
                    f"volume destination {dst!r} must be an absolute path without '..'", field="volumes"
                )
            if dst.rstrip("/") in ("", "/proc", "/sys", "/dev"):
                raise InvalidArgument(f"cannot mount a volume on {dst}", field="volumes")
            if not os.path.exists(src):
                raise InvalidArgument(f"volume source {src} does not exist on the host", field="volumes")
            volumes.append(
                {
                    "source": os.path.normpath(src),
                    "destination": os.path.normpath(dst),
                    "readonly": bool(vol.get("readonly", False)),
                }
            )
        opts["volumes"] = volumes
        opts["read_only"] = p.boolean("read_only")
        opts["tty"] = p.boolean("tty")  # PID 1 on a terminal the shim holds (run -t)
        opts["stdin"] = p.boolean("stdin")  # PID 1's stdin open for attach (run -i)
        memory = p.integer("memory")
        if memory is not None and memory < 6 * 1024 * 1024:
            raise InvalidArgument("minimum memory limit allowed is 6MB", field="memory")
        opts["memory"] = memory
        cpus = p.number("cpus")
        if cpus is not None and not 0.01 <= cpus <= (os.cpu_count() or 1):
            raise InvalidArgument(
                f"range of CPUs is from 0.01 to {os.cpu_count() or 1}, as there are only "
                f"{os.cpu_count() or 1} CPUs available",
                field="cpus",
            )
        opts["cpus"] = cpus
        pids = p.integer("pids_limit")
        if pids is not None and pids < 1:
            raise InvalidArgument("pids limit must be positive", field="pids_limit")
        opts["pids_limit"] = pids
        opts["auto_remove"] = p.boolean("auto_remove")
        stop_signal = p.string("stop_signal")
        parse_signal(stop_signal, int(signals.SIGTERM))
        opts["stop_signal"] = stop_signal  # None: the image's StopSignal, else SIGTERM (see create)
        opts["restart"] = str(policy.parse(p.string("restart")))
        if opts["restart"] != policy.NO and opts["auto_remove"]:
            raise InvalidArgument(
                "conflicting options: a restart policy and auto-remove (--rm)", field="restart"
            )
        opts["init"] = p.boolean("init")
        if opts["init"] and not os.path.exists(spec.INIT_BINARY):
            raise InvalidArgument(
                f"--init needs {spec.INIT_BINARY} on the host (Debian package tini)", field="init"
            )
        opts["security"] = security.parse(
            p.boolean("privileged"),
            p.list_of_str("cap_add"),
            p.list_of_str("cap_drop"),
            p.list_of_str("security_opt"),
        )
        stop_timeout = p.integer("stop_timeout")
        if stop_timeout is not None and stop_timeout < 0:
            raise InvalidArgument("stop timeout must not be negative", field="stop_timeout")
        opts["stop_timeout"] = 10 if stop_timeout is None else stop_timeout
        size = p.integer("log_max_size")
        if size is not None and size < 4096:
            raise InvalidArgument("log max size must be at least 4096 bytes", field="log_max_size")
        opts["log_max_size"] = size or self.cfg.log_max_size
        files = p.integer("log_max_files")
        if files is not None and files < 1:
            raise InvalidArgument("log max files must be at least 1", field="log_max_files")
        opts["log_max_files"] = files or self.cfg.log_max_files
        metrics_address = p.string("metrics_address")
        if metrics_address:
            try:
                httpserve.parse_address(metrics_address)
            except httpserve.AddressError as exc:
                raise InvalidArgument(str(exc), field="metrics_address") from None
        opts["metrics_address"] = metrics_address or None
        return opts

    def _generate_name(self) -> str:
        for _ in range(100):
            name = f"{random.choice(_ADJ)}_{random.choice(_NOUN)}"
            if not self.store.name_taken(name):
                return name
        return f"tug_{secrets.token_hex(4)}"

    async def create(self, p: jsonrpc.Params) -> ContainerRecord:
        """Validate, resolve the image, write the bundle, then record the container."""
        opts = self._parse_create(p)
        image = self.images.resolve(opts["image"])
        if not opts["stop_signal"]:
            opts["stop_signal"] = image.config.get("StopSignal") or "SIGTERM"
            parse_signal(opts["stop_signal"], int(signals.SIGTERM))
        opts["health"] = health.parse(p, image.config)
        opts.update(self.networks.parse_create(p, image.config))
        name = opts["name"] or self._generate_name()
        if self.store.name_taken(name):
            raise AlreadyExists(f"the container name {name!r} is already in use", field="name")
        cid = secrets.token_hex(32)
        paths = self._paths(cid)
        layers = await self.images.ensure_unpacked(image.record)
        oci = spec.build(
            cid, opts, image.config, paths["rootfs"], layers, self.networks.spec_for(cid, opts, paths["dir"])
        )
        opts["name"] = name
        opts["args"] = oci["process"]["args"]  # what runs, with the image's Entrypoint and Cmd
        if opts["init"]:
            opts["args"] = opts["args"][len(spec.init_prefix()) :]  # the command, not tini's
        os.makedirs(paths["dir"], mode=0o700)
        try:
            for d in ("rootfs", "upper", "work"):
                os.mkdir(paths[d], 0o755)
            # Compact (the C encoder; indent= would take the pure-Python one) and not fsynced: the
            # record beside it is committed without fsync too (WAL, synchronous=NORMAL), so only a
            # power loss could lose either, and runc refuses a torn config.json with its own error.
            # Measured: two fsyncs cost 0.8 ms on an idle disk and 10-20 ms on a busy one.
            fsutil.write_atomic(paths["spec"], json.dumps(oci).encode(), mode=0o600, durable=False)
            failpoint("container.create.after_bundle")
            rec = ContainerRecord(
                id=cid,
                name=name,
                image=image.ref,
                image_id=image.record.id,
                created_at=now_rfc3339(),
                config=opts,
                state=CREATED,
            )
            with self.store.transaction():  # the container and its addresses, or neither
                self.networks.allocate(rec, paths["dir"])  # sets the host ports in rec.config
                self.store.insert_container(rec)
        except BaseException as exc:
            fsutil.remove_tree(paths["dir"])
            if isinstance(exc, Exception) and "UNIQUE" in str(exc):
                raise AlreadyExists(f"the container name {name!r} is already in use", field="name") from exc
            raise
        failpoint("container.create.after_db")
        self.networks.refresh_hosts(self.networks.network_ids_of(cid), self.cfg.container_dir)
        self._publish("create", rec)
        return rec

    # -------------------------------------------------------------------------------- start

    async def start(self, ref: str, *, by_policy: bool = False) -> ContainerRecord:
        """Start a created or exited container. A start the user asks for (not ``by_policy``)
        cancels a pending restart and resets the restart count."""
        rec = self.get(ref)
        live = self.live(rec.id)
        if not by_policy:
            live.cancel_restart()
        async with live.lock:
            rec = self._reload(rec.id)
            if rec.state in ACTIVE:
                raise FailedPrecondition(f"container {rec.name} is already running", state=rec.state)
            if not by_policy:
                live.restart_delay = 0.0
                rec.config["restart_count"] = 0
                rec.config["stopped_by_user"] = False
            if rec.state == UNKNOWN and not by_policy:
                raise FailedPrecondition(
                    f"container {rec.name} is in an unknown state ({rec.reason}); remove it", state=rec.state
                )
            t0 = anyio.current_time()
            paths = self._paths(rec.id)
            image = self.store.get_image(rec.image_id)
            if image is None:
                raise NotFound(f"the image of container {rec.name} is gone")
            lower = await self.images.ensure_unpacked(image)
            if not mounts.is_mounted(paths["rootfs"]):
                # mount(2) of an overlay takes 1-5 ms: off the event loop, so that parallel starts
                # (and every other client) are not held up behind it.
                await anyio.to_thread.run_sync(
                    mounts.mount_overlay, lower, paths["upper"], paths["work"], paths["rootfs"]
                )
            fsutil.remove_tree(paths["shim"])
            os.makedirs(paths["shim"], mode=0o700)
            failpoint("container.start.after_mount")
            config = ShimConfig(
                id=rec.id,
                bundle=paths["dir"],
                dir=paths["shim"],
                runtime=self.cfg.runtime,
                runtime_root=self.cfg.runtime_root,
                runtime_timeout=self.cfg.runtime_timeout,
                log_path=paths["log"],
                log_max_size=int(rec.config.get("log_max_size") or self.cfg.log_max_size),
                log_max_files=int(rec.config.get("log_max_files") or self.cfg.log_max_files),
                cgroup_path=spec.cgroup_path(rec.id),
                name=rec.name,  # name and image label the container's metrics
                image=rec.image,
                metrics_address=rec.config.get("metrics_address") or "",
                tty=bool(rec.config.get("tty")),
                stdin=bool(rec.config.get("stdin")),
                backend=self.cfg.backend,  # shims run on the daemon's anyio backend
                requested_at=time.monotonic(),
            )
            try:
                await self.networks.setup(rec)
                failpoint("container.start.after_network")
                reply = await self.launcher.launch(config)
            except BaseException as exc:
                if not isinstance(exc, TugError) or exc.kind == "internal":
                    # The shim died (or went silent) without an answer, maybe after runc made the
                    # container: its runtime state and processes would be nobody's. A shim that
                    # answered with runc's error has cleaned up after runc itself.
                    with anyio.move_on_after(RELEASE_GRACE, shield=True):
                        try:
                            shim = self.shim(rec.id)
                            await shim.delete_dead(rec.id, self.cfg.runtime, self.cfg.runtime_root)
                        except Exception as cleanup_exc:
                            log.warning("cleanup after the shim of %s: %s", rec.id[:12], cleanup_exc)
                fsutil.remove_tree(paths["shim"])
                with anyio.CancelScope(shield=True):
                    with contextlib.suppress(OSError):
                        await anyio.to_thread.run_sync(mounts.unmount, paths["rootfs"])
                    await self.networks.teardown(rec.id)
                raise
            failpoint("container.start.after_launch")
            rec.state = RUNNING
            rec.pid = reply.pid
            rec.shim_pid = reply.shim_pid
            rec.started_at = now_rfc3339()
            rec.exit_code = None
            rec.exit_signal = None
            rec.oom_killed = False
            rec.finished_at = None
            rec.reason = ""
            self._update(rec)
            self._publish("start", rec)
            self.tg.start_soon(self._watch, rec.id)
            if rec.config.get("health"):
                self.health.watch(rec.id, rec.config["health"])
            if self._on_start_latency is not None:
                self._on_start_latency(anyio.current_time() - t0)
        return rec

    def _reload(self, cid: str) -> ContainerRecord:
        rec = self.store.get_container(cid)
        if rec is None:
            raise NotFound(f"no such container: {cid}")
        return rec

    # ------------------------------------------------------------------------ exits, shims

    async def _watch(self, cid: str) -> None:
        """Wait for the shim to report the exit; a shim that goes away first is reconciled."""
        shim = self.shim(cid)
        record: ExitRecord | None = None
        while True:
            try:
                record = await shim.wait()
                break
            except TugError as exc:
                record = shim.read_exit()
                if record is not None or not shim.alive():
                    log.info("shim of %s went away: %s", cid[:12], exc)
                    break
                # The connection failed but the shim lives (a loaded host): it is not lost.
                log.warning("lost the connection to the shim of %s (%s); again", cid[:12], exc)
                await anyio.sleep(0.5)
        if record is None:
            await self._shim_lost(cid)
        else:
            await self._handle_exit(cid, record)

    async def _handle_exit(self, cid: str, record: ExitRecord) -> None:
        """Record the exit, wake waiters, and release the task (the shim's ``runc delete``, the
        unmount) while still holding the container's lock: whoever acts on the exit (a restart,
        a delete) waits for the lock and finds the old shim gone."""
        live = self.live(cid)
        async with live.lock:
            rec = self.store.get_container(cid)
            if rec is None:
                return
            newly = rec.state in (*ACTIVE, UNKNOWN, CREATED)
            if newly:
                failpoint("container.exit.before_record")
                rec.state = EXITED
                rec.exit_code = record.exit_code
                rec.exit_signal = record.signal
                rec.oom_killed = record.oom_killed
                rec.config["log_dropped_bytes"] = record.log_dropped_bytes
                rec.finished_at = record.exited_at or now_rfc3339()
                rec.pid = 0
                rec.reason = ""
                self.store.update_container(rec)
                live.exits += 1
                live.last_result = wait_result(rec)
                self.health.forget(cid)
                live.changed()
                if rec.oom_killed:
                    # Read from the cgroup's own OOM counter by the shim before the cgroup went.
                    self._publish("oom", rec)
                dropped = {"log_dropped_bytes": rec.config["log_dropped_bytes"]}
                self._publish(
                    "die",
                    rec,
                    exit_code=rec.exit_code,
                    signal=rec.exit_signal,
                    oom_killed=rec.oom_killed,
                    **(dropped if rec.config["log_dropped_bytes"] else {}),
                )
                if self._on_exit is not None:
                    self._on_exit(rec.exit_code, rec.oom_killed)
                failpoint("container.exit.after_record")
            await self._release(cid)
            if newly:
                self._apply_policy(rec)
        if rec.config.get("auto_remove"):
            self.tg.start_soon(self._auto_remove, cid)

    def _apply_policy(self, rec: ContainerRecord) -> None:
        """After an exit: schedule the restart its policy asks for (cancelled by stop, rm, start)."""
        live = self.live(rec.id)
        ran_for = 0.0
        started, finished = _epoch(rec.started_at), _epoch(rec.finished_at)
        if started is not None and finished is not None:
            ran_for = max(finished - started, 0.0)
        decision = policy.decide(
            policy.parse(rec.config.get("restart")),
            exit_code=rec.exit_code if rec.state == EXITED else None,
            stopped_by_user=bool(rec.config.get("stopped_by_user")),
            restart_count=int(rec.config.get("restart_count") or 0),
            previous_delay=live.restart_delay,
            ran_for=ran_for,
        )
        if not decision.restart or rec.config.get("auto_remove"):
            return
        live.restart_delay = decision.delay
        self._schedule_restart(rec.id, decision.delay)

    def _schedule_restart(self, cid: str, delay: float) -> None:
        live = self.live(cid)
        live.cancel_restart()
        scope = live.restart = anyio.CancelScope()
        self.tg.start_soon(self._restart_later, cid, delay, scope)

    async def _restart_later(self, cid: str, delay: float, scope: anyio.CancelScope) -> None:
        with scope:
            await anyio.sleep(delay)
            live = self.live(cid)
            async with live.lock:
                rec = self.store.get_container(cid)
                if rec is None or rec.state in ACTIVE or rec.config.get("stopped_by_user"):
                    return
                rec.config["restart_count"] = int(rec.config.get("restart_count") or 0) + 1
                self._update(rec)
            if live.restart is scope:
                live.restart = None
            self._publish("restart", rec, restart_count=rec.config["restart_count"])
            if self._on_restart is not None:
                self._on_restart()
            try:
                await self.start(cid, by_policy=True)
            except TugError as exc:
                log.warning("restart of %s failed: %s", cid[:12], exc)
                # A start that fails is an exit too: the policy decides again, with its backoff.
                rec = self.store.get_container(cid)
                if rec is not None and rec.state not in ACTIVE:
                    rec.reason = f"restart failed: {exc.message}"
                    self._update(rec)
                    self._apply_policy(rec)

    async def _shim_lost(self, cid: str) -> None:
        rec = self.store.get_container(cid)
        if rec is None or rec.state not in ACTIVE:
            return
        rec.state = UNKNOWN
        rec.reason = (
            f"the shim (pid {rec.shim_pid}) went away without recording an exit; the exit code is not known"
        )
        self.live(cid).last_result = wait_result(rec)
        self.live(cid).exits += 1
        self._update(rec)
        self._publish("die", rec, exit_code=None, reason=rec.reason)
        if self._on_exit is not None:
            self._on_exit(None, False)

    async def _release(self, cid: str) -> None:
        """Delete the task (the shim runs ``runc delete`` and exits), then unmount. Idempotent."""
        paths = self._paths(cid)
        live = self.live(cid)
        with anyio.move_on_after(RELEASE_GRACE, shield=True):
            async with live.release_lock:
                if os.path.isdir(paths["shim"]):
                    # Under a deadline of its own: a runtime that hangs even in the cleanup must not
                    # keep the unmount and the network teardown below from happening.
                    # If the cleanup fails too, the shim dir stays: the next tugd start retries.
                    deleted = False
                    shim = self.shim(cid)
                    with anyio.move_on_after(RELEASE_GRACE * 2 / 3):
                        try:
                            await shim.delete(force=True)
                            deleted = True
                        except TugError as exc:
                            log.info("shim of %s did not delete (%s): cleaning up after it", cid[:12], exc)
                            try:
                                await shim.delete_dead(cid, self.cfg.runtime, self.cfg.runtime_root)
                                deleted = True
                            except Exception as cleanup_exc:
                                log.warning("cleanup after the shim of %s failed: %s", cid[:12], cleanup_exc)
                    if deleted:
                        fsutil.remove_tree(paths["shim"])
                # In a worker thread: unmounting an overlay syncs its upper filesystem, which
                # holds the log files too. Measured after a container wrote 100 MiB of output:
                # 80 ms, during which the event loop (every other client) used to stand still.
                with contextlib.suppress(OSError):
                    await anyio.to_thread.run_sync(mounts.unmount, paths["rootfs"])
                try:
                    await self.networks.teardown(cid)
                except Exception:
                    log.exception("network teardown of %s failed (the next start of tugd retries)", cid[:12])

    async def _auto_remove(self, cid: str) -> None:
        live = self.live(cid)
        with anyio.move_on_after(AUTO_REMOVE_GRACE):
            while live.holds > 0:
                await live.wait_changed()
        with contextlib.suppress(NotFound):
            await self.delete(cid, force=False)

    # ------------------------------------------------------------------- kill, stop, delete

    async def kill(self, ref: str, sig: int, *, all_processes: bool = False) -> ContainerRecord:
        rec = self.get(ref)
        # Under the container's lock, like the exit's handling: the ``kill`` event always comes
        # before the ``die`` it causes (per-container order of events).
        async with self.live(rec.id).lock:
            rec = self._reload(rec.id)
            if rec.state not in ACTIVE:
                raise FailedPrecondition(f"container {rec.name} is not running", state=rec.state)
            try:
                await self.shim(rec.id).kill(sig, all_processes=all_processes)
            except FailedPrecondition as exc:
                raise FailedPrecondition(f"container {rec.name} is not running", state="exited") from exc
            self._publish(
                "kill",
                rec,
                signal=signals.Signals(sig).name if sig in signals.Signals._value2member_map_ else sig,
            )
        return rec

    async def _wait_not_active(self, cid: str) -> None:
        live = self.live(cid)
        while True:
            rec = self.store.get_container(cid)
            if rec is None or rec.state not in ACTIVE:
                return
            await live.wait_changed()

    async def stop(self, ref: str, timeout: int | None) -> ContainerRecord:
        """The stop signal, then SIGKILL after ``timeout`` seconds; returns once the exit is
        recorded. Stopping a container that is not running changes nothing."""
        rec = self.get(ref)
        await self._stopped_by_user(rec.id)
        rec = self._reload(rec.id)
        if rec.state not in ACTIVE:
            return rec
        if rec.state == PAUSED:
            # A frozen process acts on no signal: thaw it first, so that it can stop cleanly.
            with contextlib.suppress(FailedPrecondition):
                await self.set_paused(rec.id, False)
        grace = rec.config.get("stop_timeout", 10) if timeout is None else timeout
        sig = parse_signal(rec.config.get("stop_signal"), int(signals.SIGTERM))
        with contextlib.suppress(FailedPrecondition):
            await self.kill(rec.id, sig)
        failpoint("container.stop.after_signal")
        with anyio.move_on_after(grace):
            await self._wait_not_active(rec.id)
            self._publish("stop", rec)
            return self._reload(rec.id)
        with contextlib.suppress(FailedPrecondition):
            await self.kill(rec.id, int(signals.SIGKILL))
        try:
            with anyio.fail_after(KILL_WAIT):
                await self._wait_not_active(rec.id)
        except TimeoutError:
            raise Unavailable(f"container {rec.name} did not stop {KILL_WAIT:g}s after SIGKILL") from None
        self._publish("stop", rec)
        return self._reload(rec.id)

    async def _stopped_by_user(self, cid: str) -> None:
        """Record that the user stopped the container (its restart policy leaves it alone) and
        cancel a pending restart."""
        live = self.live(cid)
        live.cancel_restart()
        async with live.lock:
            rec = self._reload(cid)
            if not rec.config.get("stopped_by_user"):
                rec.config["stopped_by_user"] = True
                self._update(rec)

    async def set_paused(self, ref: str, paused: bool) -> ContainerRecord:
        """Pause (freeze, ``runc pause``) or unpause a container; events ``pause``/``unpause``.
        FailedPrecondition, changing nothing, unless it is running (pause) or paused (unpause)."""
        rec = self.get(ref)
        verb = "pause" if paused else "unpause"
        async with self.live(rec.id).lock:
            rec = self._reload(rec.id)
            want = RUNNING if paused else PAUSED
            if rec.state != want:
                if rec.state == PAUSED:
                    raise FailedPrecondition(f"container {rec.name} is already paused", state=rec.state)
                if rec.state == RUNNING:
                    raise FailedPrecondition(f"container {rec.name} is not paused", state=rec.state)
                raise FailedPrecondition(
                    f"cannot {verb} container {rec.name}: container is {rec.state}", state=rec.state
                )
            try:
                shim = self.shim(rec.id)
                await (shim.pause() if paused else shim.resume())
            except FailedPrecondition as exc:
                raise FailedPrecondition(
                    f"cannot {verb} container {rec.name}: {exc.message}", state=rec.state
                ) from exc
            rec.state = PAUSED if paused else RUNNING
            self._update(rec)
            self._publish(verb, rec)
        return rec

    async def delete(self, ref: str, *, force: bool) -> ContainerRecord:
        rec = self.get(ref)
        self.live(rec.id).cancel_restart()
        self.health.forget(rec.id)
        if rec.state in ACTIVE:
            if not force:
                raise FailedPrecondition(
                    f"cannot remove container {rec.name}: container is running: stop the container "
                    "before removing or use force",
                    state=rec.state,
                )
            with contextlib.suppress(FailedPrecondition, Unavailable):
                await self.kill(rec.id, int(signals.SIGKILL))
            with anyio.move_on_after(KILL_WAIT):
                await self._wait_not_active(rec.id)
        live = self.live(rec.id)
        async with live.lock:
            rec = self._reload(rec.id)
            await self._release(rec.id)
            paths = self._paths(rec.id)
            with contextlib.suppress(OSError):
                await anyio.to_thread.run_sync(mounts.unmount, paths["rootfs"])
            if mounts.is_mounted(paths["rootfs"]):
                raise FailedPrecondition(f"the root filesystem of {rec.name} is still mounted")
            failpoint("container.delete.after_release")
            peers = self.networks.network_ids_of(rec.id)
            with self.store.transaction():  # the container and its addresses, or neither
                self.store.delete_container(rec.id)
                self.networks.db.delete_endpoints_of(rec.id)
            failpoint("container.delete.after_db")
            self.networks.refresh_hosts(peers, self.cfg.container_dir)
            # The container's upper dir holds whatever it wrote: removing it can take long, and
            # must not stall the event loop (the rename inside makes it vanish at once).
            await anyio.to_thread.run_sync(fsutil.remove_tree, paths["dir"])
            if not live.last_result:
                live.last_result = wait_result(rec)
            live.last_result = {**live.last_result, "state": "removed"}
            self._live.pop(rec.id, None)
            live.changed()
        self._publish("destroy", rec)
        self.images.gc_unused(rec.image_id)
        return rec

    # ---------------------------------------------------------------------- wait and logs

    async def wait(self, call: jsonrpc.Call) -> dict[str, Any]:
        rec = self.get(call.params.raw.get("id"))
        condition = call.params.string("condition", "not-running")
        if condition not in ("not-running", "next-exit", "removed"):
            raise InvalidArgument(f"unknown wait condition {condition!r}", field="condition")
        live = self.live(rec.id)
        seen = live.exits
        call.accept()
        while True:
            current = self.store.get_container(rec.id)
            if current is None:
                return live.last_result or wait_result(rec)
            if condition == "not-running" and current.state not in ACTIVE:
                return wait_result(current)
            if condition == "next-exit" and live.exits > seen:
                return live.last_result
            await live.wait_changed()

    async def logs(self, call: jsonrpc.Call) -> dict[str, Any]:
        p = call.params
        rec = self.get(p.raw.get("id"))
        follow = p.boolean("follow")
        tail = p.integer("tail")
        if tail is not None and tail < 0:
            tail = None
        since_raw = p.string("since")
        since = _since(since_raw) if since_raw else None
        live = self.live(rec.id)
        live.holds += 1
        call.accept()

        async def send_b64(text: str) -> None:
            await call.notify_data("container.logs.data", text)  # relayed from the shim: checked

        async def send(data: bytes) -> None:
            await call.notify_data("container.logs.data", base64.b64encode(data))

        try:
            if follow:
                while rec.state == CREATED:
                    await live.wait_changed()
                    current = self.store.get_container(rec.id)
                    if current is None:
                        return {"dropped_bytes": 0}
                    rec = current
            if follow and rec.state in ACTIVE:
                result = await self._follow_from_shim(rec, tail, since, send_b64)
                if result is not None:
                    return result
            if tail is None and since is None:
                # The whole log: whole records straight from the files, never split into lines.
                for chunk in crilog.iter_chunks(self._log_files(rec), LOG_CHUNK):
                    await send(chunk)
                return {"dropped_bytes": 0}
            records = crilog.select_records(
                self._log_files(rec), tail=tail, since=since.encode() if since else None
            )
            data = b"".join(r + b"\n" for r in records)
            for i in range(0, len(data), LOG_CHUNK):
                await send(data[i : i + LOG_CHUNK])
            return {"dropped_bytes": 0}
        finally:
            live.holds -= 1
            live.changed()

    async def _follow_from_shim(
        self,
        rec: ContainerRecord,
        tail: int | None,
        since: str | None,
        send_b64: Callable[[str], Awaitable[None]],
    ) -> dict[str, Any] | None:
        """Proxy the shim's follow stream; None if the shim is gone before it sent anything (the
        files are then complete: the exit is recorded only after the pipes are drained)."""
        sent = False
        try:
            async with self.shim(rec.id).logs(LogsParams(follow=True, tail=tail, since=since)) as stream:
                async for chunk in stream:
                    # Passed on as the shim encoded it: no decode and re-encode per chunk.
                    await send_b64(chunk)
                    sent = True
                return await stream.result()
        except Unavailable as exc:
            if sent:
                # Never end a broken stream as if it were complete: the client must know.
                raise Unavailable(f"the log stream from the shim broke off: {exc.message}") from exc
            return None

    # ------------------------------------------------------------------------- list, inspect

    def summary(self, rec: ContainerRecord) -> dict[str, Any]:
        return {
            "id": rec.id,
            "name": rec.name,
            "image": rec.image,
            "image_id": rec.image_id,
            "command": _command(rec),
            "state": rec.state,
            "exit_code": rec.exit_code if rec.state == EXITED else None,
            "pid": rec.pid if rec.state in ACTIVE else 0,
            "created_at": rec.created_at,
            "started_at": rec.started_at,
            "finished_at": rec.finished_at,
            "health": self.health.status(rec.id) if rec.state in ACTIVE else None,
            "restarting": self.live(rec.id).restart is not None,  # the restart policy's, pending
        }

    def inspect(self, rec: ContainerRecord) -> dict[str, Any]:
        paths = self._paths(rec.id)
        out = self.summary(rec)
        out.update(
            {
                "oom_killed": rec.oom_killed,
                "exit_signal": rec.exit_signal,
                "reason": rec.reason,
                "config": rec.config,
                "auto_remove": bool(rec.config.get("auto_remove")),
                "log_path": paths["log"],
                "bundle": paths["dir"],
                "rootfs": paths["rootfs"],
                "shim_pid": rec.shim_pid if rec.state in ACTIVE else 0,
                "restart_policy": rec.config.get("restart") or "no",
                "restart_count": int(rec.config.get("restart_count") or 0),
                # Output the log could not keep (a full disk) in the last run, recorded at its exit.
                "log_dropped_bytes": int(rec.config.get("log_dropped_bytes") or 0),
                "health_check": self.health.describe(rec.id) if rec.state in ACTIVE else None,
                "networks": self.networks.container_networks(rec),
                "ports": rec.config.get("ports") or [],
            }
        )
        return out

    def shim_clients(self) -> list[shims.ShimClient]:
        """The shims of running and paused containers (asked at a metrics scrape)."""
        return [self.shim(r.id) for r in self.store.list_containers() if r.state in ACTIVE]

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys((CREATED, RUNNING, PAUSED, EXITED, UNKNOWN), 0)
        for state, n in self.store.container_counts().items():
            counts[state] = counts.get(state, 0) + n
        counts["total"] = sum(counts.values())
        return counts

    # ------------------------------------------------------------------------------ recovery

    async def recover(self) -> None:
        """Rebuild from disk after a (re)start: re-attach to live shims, collect exits that
        happened while we were down, clean up what nothing owns. Shims in parallel, each under a
        deadline."""
        known = {rec.id: rec for rec in self.store.list_containers()}
        async with anyio.create_task_group() as tg:
            for rec in known.values():
                tg.start_soon(self._recover_one, rec)
            for entry in _listdir(self.cfg.shims_dir):
                if not entry.startswith(".") and entry not in known and names.is_id(entry):
                    tg.start_soon(self._remove_orphan, entry)
                elif entry.startswith(".deleting-"):
                    # A removal tugd died in (renamed, not yet deleted): its shim had exited.
                    fsutil.remove_tree(os.path.join(self.cfg.shims_dir, entry))
        # Bundles nothing refers to (tugd died between writing one and recording it, or in the
        # middle of a remove), and hidden leftovers of interrupted removals.
        for entry in _listdir(self.cfg.containers_dir):
            path = os.path.join(self.cfg.containers_dir, entry)
            if entry.startswith(".deleting-") or (names.is_id(entry) and entry not in known):
                with contextlib.suppress(OSError):
                    mounts.unmount(os.path.join(path, "rootfs"))
                fsutil.remove_tree(path)
        # Namespaces, veths, bridges and nft rules of containers that are gone or not running.
        keep = [r.id for r in self.store.list_containers() if r.state in (*ACTIVE, UNKNOWN)]
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
        paths = self._paths(rec.id)
        shim = self.shim(rec.id)
        try:
            if os.path.isdir(paths["shim"]):
                record = shim.read_exit()
                if record is not None:
                    await self._handle_exit(rec.id, record)
                    return
                state = await self._shim_state(rec.id)
                if state is None and (record := shim.read_exit()) is not None:
                    await self._handle_exit(rec.id, record)
                    return
                if state is None:
                    if rec.state in ACTIVE:
                        await self._shim_lost(rec.id)
                    else:
                        # tugd died in a start before the shim answered (or the shim died before
                        # it ran anything): nothing runs; leave no shim dir, mount or runc state.
                        await self._release(rec.id)
                    return
                if state.exit is not None:
                    await self._handle_exit(rec.id, state.exit)
                    return
                shim_state = PAUSED if state.status == "paused" else RUNNING
                if rec.state != shim_state:
                    # tugd died between the shim's start and the store's update (adopt it), or
                    # between a pause or unpause and its record: the shim knows.
                    rec.state = shim_state
                    rec.pid = state.pid
                    rec.shim_pid = state.shim_pid
                    rec.started_at = rec.started_at or now_rfc3339()
                    self._update(rec)
                self.tg.start_soon(self._watch, rec.id)
                if rec.config.get("health"):
                    self.health.watch(rec.id, rec.config["health"])
            elif rec.state in ACTIVE:
                # No shim dir at all: the state root was emptied (a reboot). Nothing recorded an exit.
                rec.state = UNKNOWN
                rec.reason = "the state directory was emptied (host reboot?) before the exit was recorded"
                self._update(rec)
                with contextlib.suppress(OSError):
                    mounts.unmount(paths["rootfs"])
                self._restart_on_boot(rec)
            else:
                with contextlib.suppress(OSError):
                    mounts.unmount(paths["rootfs"])
                if rec.state == EXITED and rec.config.get("auto_remove"):
                    self.tg.start_soon(self._auto_remove, rec.id)
                elif rec.state == EXITED and not self._restart_on_boot(rec):
                    self._apply_policy(rec)  # a restart that was pending when tugd stopped
        except Exception:
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
        rule = policy.parse(rec.config.get("restart"))
        if not policy.start_on_boot(rule, stopped_by_user=bool(rec.config.get("stopped_by_user"))):
            return False
        if rec.config.get("stopped_by_user"):
            rec.config["stopped_by_user"] = False
            self._update(rec)
        self._schedule_restart(rec.id, 0.0)
        return True

    async def _remove_orphan(self, cid: str) -> None:
        """A shim dir without a container (tugd died mid-create or mid-delete): kill and clean."""
        directory = self.cfg.shim_dir(cid)
        try:
            await self.shim(cid).delete_dead(cid, self.cfg.runtime, self.cfg.runtime_root)
        except Exception:
            log.exception("cleanup of orphan shim %s failed", cid[:12])
        fsutil.remove_tree(directory)
        rootfs = os.path.join(self.cfg.container_dir(cid), "rootfs")
        with contextlib.suppress(OSError):
            mounts.unmount(rootfs)


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def _command(rec: ContainerRecord) -> str:
    args = rec.config.get("args")
    if args is None:
        args = list(rec.config.get("entrypoint") or []) + list(rec.config.get("cmd") or [])
    return " ".join(args)


def _epoch(value: str | None) -> float | None:
    """Seconds since the epoch of an RFC 3339 UTC time as the store keeps them."""
    if not value:
        return None
    import calendar

    try:
        whole, _, frac = value.rstrip("Z").partition(".")
        secs = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None
    return secs + (float("0." + frac) if frac.isdigit() else 0.0)


def _valid_hostname(name: str) -> bool:
    if not 0 < len(name) <= 253:
        return False
    return all(
        0 < len(label) <= 63
        and label[0] != "-"
        and label[-1] != "-"
        and all(c.isalnum() or c == "-" for c in label)
        and label.isascii()
        for label in name.split(".")
    )


def _since(value: str) -> str:
    """An RFC 3339 UTC timestamp, made fixed-width like the log's own (nanoseconds, Z)."""
    import re

    m = re.fullmatch(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?Z", value)
    if m is None:
        raise InvalidArgument(
            f"invalid since {value!r}: want an RFC 3339 time in UTC like 2026-01-02T03:04:05Z", field="since"
        )
    return f"{m.group(1)}.{(m.group(2) or '').ljust(9, '0')}Z"
