"""The public JSON-RPC methods: thin, typed, each delegating to a service. See docs/api.md."""

from __future__ import annotations

import os
import platform
import subprocess
from typing import Any

import anyio

from tugwire import jsonrpc
from tugwire.errors import InvalidArgument, TugError

from .attach import Attach
from .config import Config
from .containers import ACTIVE, Containers, parse_signal
from .events import Event, EventBus, Filters, image_removal_events, parse_time
from .execs import Execs
from .images import Images
from .registry import RegistryService
from .system import System
from .verbs import Verbs

VERSION = "0.1.0"


def cgroup_version() -> str:
    if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        return "2"
    if os.path.isdir("/sys/fs/cgroup/unified"):
        return "1 (hybrid)"
    return "1"


def runtime_version(path: str) -> str:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.splitlines()[0] if out else "unknown"


class Api:
    def __init__(
        self, cfg: Config, containers: Containers, images: Images, bus: EventBus, shim_birth: str
    ) -> None:
        self.cfg = cfg
        self.containers = containers
        self.images = images
        self.bus = bus
        self.shim_birth = shim_birth
        self._runtime_version = runtime_version(cfg.runtime)
        self.system = System(cfg, containers.store, containers, images, bus)
        self.verbs = Verbs(containers)
        self.dispatcher = d = jsonrpc.Dispatcher()
        d.add("system.info", self.system_info)
        d.add("system.df", self.system_df)
        d.add("system.prune", self.system_prune)
        d.add("container.create", self.container_create)
        d.add("container.start", self.container_start)
        d.add("container.list", self.container_list)
        d.add("container.inspect", self.container_inspect)
        d.add("container.kill", self.container_kill)
        d.add("container.stop", self.container_stop)
        d.add("container.delete", self.container_delete)
        d.add("container.wait", self.container_wait, accept_late=True)
        d.add("container.pause", self.container_pause)
        d.add("container.unpause", self.container_unpause)
        d.add("container.top", self.container_top)
        d.add("container.stats", self.container_stats)
        d.add("container.update", self.container_update)
        d.add("container.rename", self.container_rename)
        d.add("container.restart", self.container_restart)
        d.add("container.copy_from", self.container_copy_from)
        d.add("container.copy_to", self.container_copy_to)
        d.add("container.logs", self.container_logs, accept_late=True)
        d.add("image.import", self.image_import)
        d.add("image.list", self.image_list)
        d.add("image.inspect", self.image_inspect)
        d.add("image.remove", self.image_remove)
        d.add("image.tag", self.image_tag)
        d.add("image.prune", self.image_prune)
        d.add("image.save", self.image_save)
        d.add("image.load", self.image_load)
        d.add("events.subscribe", self.events_subscribe, accept_late=True)
        self.execs = Execs(containers)
        self.execs.register(d)
        Attach(containers).register(d)
        from .network.api import NetworkApi

        NetworkApi(containers).register(d)
        registry = RegistryService(cfg, images, bus)
        registry.register(d)  # image.pull, image.push, auth.login/logout
        from .build.builder import Builder

        Builder(cfg, containers.store, images, containers.launcher, registry).register(d)  # image.build

    async def system_info(self, call: jsonrpc.Call) -> Any:
        """Versions, roots, runtime, cgroup version and counts."""
        return {
            "version": VERSION,
            "python": platform.python_version(),
            "backend": self.cfg.backend,
            "root": self.cfg.root,
            "state": self.cfg.state,
            "socket": self.cfg.socket,
            "runtime": self.cfg.runtime,
            "runtime_version": self._runtime_version,
            "cgroup_version": cgroup_version(),
            "shim_birth": self.shim_birth,
            "containers": self.containers.counts(),
            "images": self.images.store.image_count(),
            "pid": os.getpid(),
        }

    async def system_df(self, call: jsonrpc.Call) -> Any:
        """Space used by images, containers and logs, and what a prune would reclaim."""
        return await self.system.df()

    async def system_prune(self, call: jsonrpc.Call) -> Any:
        """Remove containers that are not running and unused images (``all``: named ones too)."""
        return await self.system.prune(all_images=call.params.boolean("all"))

    async def container_create(self, call: jsonrpc.Call) -> Any:
        """Create a container (no process yet). Returns ``{id, name}``."""
        rec = await self.containers.create(call.params)
        return {"id": rec.id, "name": rec.name}

    async def container_wait(self, call: jsonrpc.Call) -> Any:
        """Answers once container ``id`` meets ``condition``; accepted (the connection goes on)
        once the request is checked."""
        p = call.params
        waiting = self.containers.wait(p.raw.get("id"), p.string("condition", "not-running"))
        call.accept()
        return await waiting

    async def container_logs(self, call: jsonrpc.Call) -> Any:
        """The log of container ``id`` as ``container.logs.data`` notifications (base64)."""
        p = call.params

        async def sink(data: bytes | str) -> None:
            await call.notify_data("container.logs.data", data)

        reading = self.containers.logs(
            p.raw.get("id"), sink, follow=p.boolean("follow"), tail=p.integer("tail"), since=p.string("since")
        )
        call.accept()
        return await reading

    async def container_start(self, call: jsonrpc.Call) -> Any:
        """Start a created or exited container through a new shim. Returns ``{id, pid}``."""
        rec = await self.containers.start(call.params.string("id", required=True))
        return {"id": rec.id, "pid": rec.pid}

    async def container_list(self, call: jsonrpc.Call) -> Any:
        """Summaries of running containers (``all`` for every one)."""
        everything = call.params.boolean("all")
        return [
            self.containers.summary(r) for r in self.containers.records() if everything or r.state in ACTIVE
        ]

    async def container_inspect(self, call: jsonrpc.Call) -> Any:
        """Everything known about one container."""
        return self.containers.inspect(self.containers.get(call.params.string("id", required=True)))

    async def container_kill(self, call: jsonrpc.Call) -> Any:
        """Send a signal (SIGKILL by default) to a running container."""
        sig = parse_signal(call.params.raw.get("signal"))
        rec = await self.containers.kill(
            call.params.string("id", required=True), sig, all_processes=call.params.boolean("all")
        )
        return {"id": rec.id}

    async def container_stop(self, call: jsonrpc.Call) -> Any:
        """The stop signal, SIGKILL after ``timeout``; returns once the exit is recorded."""
        timeout = call.params.integer("timeout")
        if timeout is not None and timeout < 0:
            raise InvalidArgument("timeout must not be negative", field="timeout")
        rec = await self.containers.stop(call.params.string("id", required=True), timeout)
        return {"id": rec.id, "exit_code": rec.exit_code, "state": rec.state}

    async def container_delete(self, call: jsonrpc.Call) -> Any:
        """Remove a container (``force`` kills it first)."""
        rec = await self.containers.delete(
            call.params.string("id", required=True), force=call.params.boolean("force")
        )
        return {"id": rec.id}

    async def container_pause(self, call: jsonrpc.Call) -> Any:
        """Freeze every process of a running container (``runc pause``)."""
        rec = await self.containers.set_paused(call.params.string("id", required=True), True)
        return {"id": rec.id, "state": rec.state}

    async def container_unpause(self, call: jsonrpc.Call) -> Any:
        """Thaw a paused container (``runc resume``)."""
        rec = await self.containers.set_paused(call.params.string("id", required=True), False)
        return {"id": rec.id, "state": rec.state}

    async def container_top(self, call: jsonrpc.Call) -> Any:
        """The processes of a running container: ``{titles, processes}`` (host pids)."""
        return await self.verbs.top(call.params.string("id", required=True))

    async def container_stats(self, call: jsonrpc.Call) -> Any:
        """One sample of each container's cgroup figures (``id``: one container; else the running
        ones, ``all``: every one)."""
        ref = call.params.string("id")
        if ref:
            return [await self.verbs.stats(ref)]
        everything = call.params.boolean("all")
        recs = [r for r in self.containers.records() if everything or r.state in ACTIVE]
        results: list[Any] = [None] * len(recs)

        async def one(i: int, cid: str) -> None:
            try:
                results[i] = await self.verbs.stats(cid)
            except TugError:
                results[i] = None  # removed meanwhile

        async with anyio.create_task_group() as tg:
            for i, r in enumerate(recs):
                tg.start_soon(one, i, r.id)
        return [r for r in results if r is not None]

    async def container_update(self, call: jsonrpc.Call) -> Any:
        """New limits (``memory``, ``cpus``, ``pids_limit``) for a container, running or not."""
        rec = await self.verbs.update(call.params)
        return {"id": rec.id}

    async def container_rename(self, call: jsonrpc.Call) -> Any:
        """Rename a container (``id``, ``name``)."""
        rec = await self.verbs.rename(
            call.params.string("id", required=True), call.params.string("name", required=True)
        )
        return {"id": rec.id, "name": rec.name}

    async def container_restart(self, call: jsonrpc.Call) -> Any:
        """Stop (stop signal, SIGKILL after ``timeout``) then start a container."""
        timeout = call.params.integer("timeout")
        if timeout is not None and timeout < 0:
            raise InvalidArgument("timeout must not be negative", field="timeout")
        rec = await self.verbs.restart(call.params.string("id", required=True), timeout)
        return {"id": rec.id, "pid": rec.pid}

    async def container_copy_from(self, call: jsonrpc.Call) -> Any:
        """Copy ``path`` of a container to ``host_path`` (absolute, on tugd's host)."""
        p = call.params
        return await self.verbs.copy_from(
            p.string("id", required=True),
            p.string("path", required=True),
            p.string("host_path", required=True),
        )

    async def container_copy_to(self, call: jsonrpc.Call) -> Any:
        """Copy ``host_path`` (absolute, on tugd's host) to ``path`` in a container."""
        p = call.params
        return await self.verbs.copy_to(
            p.string("id", required=True),
            p.string("host_path", required=True),
            p.string("path", required=True),
        )

    async def image_import(self, call: jsonrpc.Call) -> Any:
        """Import a rootfs tarball as a one-layer OCI image."""
        p = call.params
        overrides = p.raw.get("config") or {}
        if not isinstance(overrides, dict):
            raise InvalidArgument("config must be an object", field="config")
        rec = await self.images.import_rootfs(
            p.string("path", required=True), p.string("ref", required=True), overrides
        )
        ref = rec.names[0] if rec.names else p.string("ref") or ""
        self.bus.publish(Event("image", "import", rec.id, ref, ref))
        return {"id": rec.id, "digest": rec.digest, "ref": rec.names[0] if rec.names else None}

    async def image_list(self, call: jsonrpc.Call) -> Any:
        """Every image with its names."""
        return [self.images.describe(r) for r in self.images.store.list_images()]

    async def image_inspect(self, call: jsonrpc.Call) -> Any:
        """One image, with its config and layers."""
        return self.images.describe(
            self.images.resolve(call.params.string("ref", required=True)).record, full=True
        )

    async def image_remove(self, call: jsonrpc.Call) -> Any:
        """Untag an image; its data goes once nothing refers to it."""
        ref = call.params.string("ref", required=True)
        image_id = self.images.resolve(ref).record.id
        removed = self.images.remove(ref, force=call.params.boolean("force"))
        self._image_events(image_id, removed)
        return {"removed": removed}

    async def image_tag(self, call: jsonrpc.Call) -> Any:
        """Name the image ``source`` also ``target`` (``repo[:tag]``)."""
        p = call.params
        target = p.string("target", required=True)
        rec = self.images.tag(p.string("source", required=True), target)
        self.bus.publish(Event("image", "tag", rec.id, target, target))
        return {"id": rec.id, "repo_tags": rec.names}

    async def image_prune(self, call: jsonrpc.Call) -> Any:
        """Remove the images no container uses (untagged ones; ``all``: every one), then free
        every blob and snapshot nothing references."""
        result = self.images.prune(all_images=call.params.boolean("all"))
        for image_id in result["deleted"]:
            self.bus.publish(Event("image", "delete", image_id, image_id, image_id))
        return result

    async def image_save(self, call: jsonrpc.Call) -> Any:
        """Write images to an archive on tugd's host: ``path`` (absolute), ``refs``, ``format``
        (``docker-archive``, the default, or ``oci-archive``)."""
        from . import archive

        p = call.params
        refs = p.list_of_str("refs")
        result = await archive.save(
            self.images, p.string("path", required=True), refs, fmt=p.string("format", "docker-archive")
        )
        for image_id, ref in zip(result["images"], refs, strict=True):
            self.bus.publish(Event("image", "save", image_id, ref, ref))
        return result

    async def image_load(self, call: jsonrpc.Call) -> Any:
        """Load every image of an archive on tugd's host (``path``, absolute; OCI archive or
        docker-archive, plain or gzipped); ``platform`` picks from multi-platform indexes."""
        from . import archive

        p = call.params
        path = p.string("path", required=True)
        loaded = await archive.load(self.images, path, platform=p.string("platform"))
        for item in loaded:
            ref = item["repo_tags"][0] if item["repo_tags"] else item["id"]
            self.bus.publish(Event("image", "load", item["id"], ref, ref))
        return {"images": loaded}

    def _image_events(self, image_id: str, removed: list[str]) -> None:
        """``untag`` for each name removed, ``delete`` if the image itself went (as docker)."""
        for event in image_removal_events(image_id, removed):
            self.bus.publish(event)

    async def events_subscribe(self, call: jsonrpc.Call) -> Any:
        """Stream events as ``event`` notifications: the stored ones from ``since`` (ns or RFC
        3339), then live ones, until ``until`` (then the response ends the stream) or until the
        client goes away. ``filters``: type, container, image, event (each a value or a list)."""
        p = call.params
        since = p.raw.get("since")
        until = p.raw.get("until")
        since_ns = None if since is None else parse_time(since, "since")
        until_ns = None if until is None else parse_time(until, "until")
        filters = Filters(p.raw.get("filters"), self._container_id)

        async def send(event: Event) -> None:
            await call.notify("event", event.to_json())

        async def stream() -> None:
            await self.bus.stream(filters, send, since_ns=since_ns, until_ns=until_ns, ready=call.accept)

        try:
            await call.until_disconnected(stream)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # the client went away
        return {}

    def _container_id(self, ref: str) -> str | None:
        try:
            return self.containers.get(ref).id
        except TugError:
            return None
