"""The ``container.*`` JSON-RPC methods (docs/api.md, "Containers"), the exec and attach ones
too: each reads its params into a typed request (:class:`CreateRequest`, :class:`UpdateRequest`,
:class:`ExecRequest`), calls the service, and turns its streams (logs, an exec's output) into
notifications."""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import socket
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import anyio
import anyio.abc

from tugwire import frames, jsonrpc
from tugwire.errors import InvalidArgument, InvalidParams, TugError
from tugwire.rawchannel import RawChannel

from ..containers import ACTIVE, parse_signal
from ..containers.health import HealthRequest
from ..containers.options import CreateRequest
from ..core import Core
from ..execs import ExecRequest, ExecSink
from ..limits import LimitsRequest
from ..store import ContainerRecord
from ..system import du
from ..verbs import UpdateRequest
from .networks import endpoint_request

_NAMES = {frames.STDOUT: "stdout", frames.STDERR: "stderr"}  # of container.exec.output


def create_request(p: jsonrpc.Params) -> CreateRequest:
    """``container.create``'s params, their types checked (their values: by the service)."""
    return CreateRequest(
        image=p.string("image", required=True),
        name=p.string("name"),
        cmd=p.list_of_str("cmd"),
        entrypoint=None if p.raw.get("entrypoint") is None else p.list_of_str("entrypoint"),
        env=p.list_of_str("env"),
        workdir=p.string("workdir"),
        user=p.string("user"),
        hostname=p.string("hostname"),
        volumes=p.list_of_dict("volumes"),
        read_only=p.boolean("read_only"),
        tty=p.boolean("tty"),
        stdin=p.boolean("stdin"),
        memory=p.integer("memory"),
        cpus=p.number("cpus"),
        pids_limit=p.integer("pids_limit"),
        limits=limits_request(p),
        auto_remove=p.boolean("auto_remove"),
        stop_signal=p.string("stop_signal"),
        restart=p.string("restart"),
        init=p.boolean("init"),
        privileged=p.boolean("privileged"),
        cap_add=p.list_of_str("cap_add"),
        cap_drop=p.list_of_str("cap_drop"),
        security_opt=p.list_of_str("security_opt"),
        stop_timeout=p.integer("stop_timeout"),
        log_max_size=p.integer("log_max_size"),
        log_max_files=p.integer("log_max_files"),
        metrics_address=p.string("metrics_address"),
        health=HealthRequest(
            health_cmd=p.string("health_cmd"),
            health_interval=p.number("health_interval"),
            health_timeout=p.number("health_timeout"),
            health_start_period=p.number("health_start_period"),
            health_retries=p.integer("health_retries"),
        ),
        network=endpoint_request(p),
        labels=p.dict_of_str("labels"),
        pod_id=p.string("pod_id"),
        namespaces=p.dict_of_str("namespaces"),
        cgroup_parent=p.string("cgroup_parent"),
        annotations=p.dict_of_str("annotations"),
        log_path=p.string("log_path"),
        log_directory=p.string("log_directory"),
        run_as_user=p.integer("run_as_user"),
        run_as_group=p.integer("run_as_group"),
        run_as_username=p.string("run_as_username"),
        supplemental_groups=list_of_int(p, "supplemental_groups"),
        supplemental_groups_policy=p.string("supplemental_groups_policy"),
        no_new_privileges=None if p.raw.get("no_new_privileges") is None else p.boolean("no_new_privileges"),
        seccomp=p.string("seccomp"),
        masked_paths=None if p.raw.get("masked_paths") is None else p.list_of_str("masked_paths"),
        readonly_paths=None if p.raw.get("readonly_paths") is None else p.list_of_str("readonly_paths"),
        sysctls=p.dict_of_str("sysctls"),
    )


def list_of_int(p: jsonrpc.Params, key: str) -> list[int]:
    """A list of integers (no booleans), or InvalidParams."""
    value = p.raw.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise InvalidParams(f"parameter {key!r} must be a list of integers", param=key)
    return list(value)


def limits_request(p: jsonrpc.Params) -> LimitsRequest:
    """The finer limits (docs/api.md, ``container.update``), their types checked."""
    return LimitsRequest(
        cpu_shares=p.integer("cpu_shares"),
        cpu_quota=p.integer("cpu_quota"),
        cpu_period=p.integer("cpu_period"),
        cpuset_cpus=p.string("cpuset_cpus"),
        cpuset_mems=p.string("cpuset_mems"),
        memory_swap=p.integer("memory_swap"),
        oom_score_adj=p.integer("oom_score_adj"),
        unified=None if p.raw.get("unified") is None else p.dict_of_str("unified"),
    )


class ContainerApi:
    def __init__(self, core: Core) -> None:
        self.core = core
        self.containers = core.containers
        self.verbs = core.verbs

    def register(self, d: jsonrpc.Dispatcher) -> None:
        d.add("container.create", self.container_create)
        d.add("container.start", self.container_start)
        d.add("container.run", self.container_run, accept_late=True)
        d.add("container.list", self.container_list)
        d.add("container.inspect", self.container_inspect)
        d.add("container.kill", self.container_kill)
        d.add("container.stop", self.container_stop)
        d.add("container.delete", self.container_delete)
        d.add("container.wait", self.container_wait, accept_late=True)
        d.add("container.pause", self.container_pause)
        d.add("container.unpause", self.container_unpause)
        d.add("container.top", self.container_top)
        d.add("container.changes", self.container_changes)
        d.add("container.stats", self.container_stats)
        d.add("container.update", self.container_update)
        d.add("container.rename", self.container_rename)
        d.add("container.restart", self.container_restart)
        d.add("container.archive_get", self.container_archive_get, accept_late=True)
        d.add("container.archive_put", self.container_archive_put, accept_late=True)
        d.add("container.stat_path", self.container_stat_path)
        d.add("container.logs", self.container_logs, accept_late=True)
        d.add("container.reopen_log", self.container_reopen_log)
        # Accepted once switched (the reader must not take the first frame as a line), or at once.
        d.add("container.exec", self.container_exec, accept_late=True)
        d.add("exec.create", self.exec_create)
        d.add("exec.start", self.exec_start, accept_late=True)
        d.add("exec.inspect", self.exec_inspect)
        # Accepted once forwarded: the input from one connection reaches the exec or the
        # container in the order it was sent.
        d.add("container.exec.stdin", self.exec_stdin, accept_late=True)
        d.add("container.exec.close_stdin", self.exec_close_stdin, accept_late=True)
        d.add("container.exec.resize", self.exec_resize, accept_late=True)
        d.add("container.stdin", self.container_stdin, accept_late=True)
        d.add("container.close_stdin", self.container_close_stdin, accept_late=True)
        d.add("container.resize", self.container_resize, accept_late=True)

    async def container_create(self, call: jsonrpc.Call) -> Any:
        """Create a container (no process yet). Returns ``{id, name}``."""
        rec = await self.containers.create(create_request(call.params))
        return {"id": rec.id, "name": rec.name}

    async def container_run(self, call: jsonrpc.Call) -> Any:
        """``container.create``'s params with ``"stream": "raw"``: create, start and follow in
        one call; the connection switches to frames once the container runs, its output comes
        as stdout and stderr frames, and the ``end`` frame has the wait's answer (docs/api.md).
        A create or start that fails is the call's error, before any switch. With ``detach``:
        create and start, answered as ``container.start`` (and ``name``), no stream."""
        if call.params.boolean("detach"):
            rec = await self.containers.run_detached(create_request(call.params))
            return {"id": rec.id, "name": rec.name, "pid": rec.run.pid}
        if not call.wants_raw():
            raise InvalidParams(
                'container.run is a raw stream: want "stream": "raw" (or "detach": true)', param="stream"
            )

        async def started(rec: ContainerRecord) -> None:
            await call.switch({"id": rec.id, "name": rec.name})

        return await self.containers.run(create_request(call.params), self._frame_sink(call), started)

    async def container_wait(self, call: jsonrpc.Call) -> Any:
        """Answers once container ``id`` meets ``condition``; accepted (the connection goes on)
        once the request is checked."""
        p = call.params
        waiting = self.containers.wait(p.raw.get("id"), p.string("condition", "not-running"))
        call.accept()
        return await waiting

    async def container_logs(self, call: jsonrpc.Call) -> Any:
        """The log of container ``id`` as ``container.logs.data`` notifications (base64 CRI
        records), or with ``"stream": "raw"`` as stdout and stderr frames of its bytes
        (docs/api.md, "Raw streams"); the client's stdin and control frames on it go to the
        container's input (attach), and its closing ends the stream."""
        p = call.params
        if call.wants_raw():
            cid = p.raw.get("id")
            reading_raw = self.containers.logs_raw(
                cid,
                self._frame_sink(call),
                follow=p.boolean("follow"),
                tail=p.integer("tail"),
                since=p.string("since"),
                timestamps=p.boolean("timestamps"),
            )
            channel = await call.switch()
            done, result = False, None
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._raw_input, channel, cid, tg.cancel_scope)
                result = await reading_raw
                done = True
                tg.cancel_scope.cancel()
            if not done:
                raise anyio.BrokenResourceError("the client closed the stream")
            return result

        async def sink(data: bytes | str) -> None:
            await call.notify_data("container.logs.data", data)

        reading = self.containers.logs(
            p.raw.get("id"), sink, follow=p.boolean("follow"), tail=p.integer("tail"), since=p.string("since")
        )
        call.accept()
        return await reading

    async def container_reopen_log(self, call: jsonrpc.Call) -> Any:
        """Open the log of running container ``id`` (created with ``log_path``) again at its path."""
        rec = await self.containers.reopen_log(call.params.string("id", required=True))
        return {"id": rec.id}

    async def _raw_input(self, channel: RawChannel, cid: Any, scope: anyio.CancelScope) -> None:
        """An attached client's frames: stdin (an empty one closes it) and control (resize),
        relayed to the container's shim as frames (opened at the first); the end of the
        connection (or a malformed frame) cancels ``scope``. Input a container cannot take is
        dropped, as the notifications' was."""
        async with contextlib.AsyncExitStack() as stack:
            send: Callable[[int, bytes], Awaitable[None]] | None = None
            while True:
                try:
                    kind, data = await channel.receive()
                except (anyio.EndOfStream, frames.MalformedFrame):
                    scope.cancel()
                    return
                if kind not in (frames.STDIN, frames.CONTROL):
                    continue
                if send is None:
                    try:
                        send = await stack.enter_async_context(self.core.attach.stream(cid))
                    except TugError:
                        continue  # not running (yet, or any more): the input has nowhere to go
                await send(kind, data)

    @staticmethod
    def _frame_sink(call: jsonrpc.Call) -> Callable[[int, bytes], Awaitable[None]]:
        async def sink(kind: int, data: bytes) -> None:
            assert call.channel is not None  # switched before the first byte
            await call.channel.send(kind, data)

        return sink

    async def container_start(self, call: jsonrpc.Call) -> Any:
        """Start a created or exited container through a new shim. Returns ``{id, pid}``."""
        rec = await self.containers.start(call.params.string("id", required=True))
        return {"id": rec.id, "pid": rec.run.pid}

    async def container_list(self, call: jsonrpc.Call) -> Any:
        """Summaries of running containers (``all`` for every one), newest first, that pass
        docker's ``filters`` (``{"status": ["exited"], "label": ["a=b"]}``); with ``size``, each
        with ``size_rw``, the bytes of its writable layer."""
        everything = call.params.boolean("all")
        raw = call.params.raw.get("filters")
        pods = None  # tugd's own filter: the containers of these pods (pod.create)
        if isinstance(raw, dict) and "pod" in raw:
            raw = dict(raw)
            pods = jsonrpc.Params({"pod": raw.pop("pod")}).list_of_str("pod")
        filters: dict[str, list[str]] = {}
        if raw is not None:  # docker's filter rules, imported at their first use
            from tugwire import dockerfilters

            filters = dockerfilters.check(raw, dockerfilters.CONTAINER_KEYS)
        records = self.containers.records()
        if pods is not None:
            records = [r for r in records if r.settings.pod_id in pods]
        created = {r.id: r.created_at for r in records}
        by_name = {r.name: r.created_at for r in records}

        def created_of(ref: str) -> str | None:
            if ref.lstrip("/") in by_name:
                return by_name[ref.lstrip("/")]
            found = [t for cid, t in created.items() if cid.startswith(ref)]
            return found[0] if len(found) == 1 and ref else None

        if filters.get("status") or filters.get("exited"):
            everything = True  # docker: a status filter looks at every container
        refs = self.containers.networks.network_refs()  # two queries, not two per container
        out = [
            (s.get("created_at") or "", i, s)
            for i, s in enumerate(
                self.containers.summary(r, refs) for r in records if everything or r.run.state in ACTIVE
            )
            if not filters or _match(s, filters, created_of)
        ]
        out.sort(key=lambda t: t[:2], reverse=True)  # newest first, as docker lists them
        listed = [s for _, _, s in out]
        if call.params.boolean("size"):  # docker's ps -s: the writable layer's bytes (a walk)
            for s in listed:
                upper = os.path.join(self.core.cfg.container_dir(s["id"]), "upper")
                s["size_rw"] = await anyio.to_thread.run_sync(du, upper)
        return listed

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
        """The stop signal (or ``signal``), SIGKILL after ``timeout``; returns once the exit is
        recorded."""
        timeout = call.params.integer("timeout")
        if timeout is not None and timeout < 0:
            raise InvalidArgument("timeout must not be negative", field="timeout")
        raw = call.params.raw.get("signal")
        sig = None if raw is None else parse_signal(raw)
        rec = await self.containers.stop(call.params.string("id", required=True), timeout, sig)
        return {"id": rec.id, "exit_code": rec.run.exit_code, "state": rec.run.state}

    async def container_delete(self, call: jsonrpc.Call) -> Any:
        """Remove a container (``force`` kills it first)."""
        rec = await self.containers.delete(
            call.params.string("id", required=True), force=call.params.boolean("force")
        )
        return {"id": rec.id}

    async def container_pause(self, call: jsonrpc.Call) -> Any:
        """Freeze every process of a running container (``runc pause``)."""
        rec = await self.containers.set_paused(call.params.string("id", required=True), True)
        return {"id": rec.id, "state": rec.run.state}

    async def container_unpause(self, call: jsonrpc.Call) -> Any:
        """Thaw a paused container (``runc resume``)."""
        rec = await self.containers.set_paused(call.params.string("id", required=True), False)
        return {"id": rec.id, "state": rec.run.state}

    async def container_top(self, call: jsonrpc.Call) -> Any:
        """The processes of a running container: ``{titles, processes}`` (host pids)."""
        return await self.verbs.top(call.params.string("id", required=True))

    async def container_changes(self, call: jsonrpc.Call) -> Any:
        """What a container changed in its root filesystem: ``[{path, kind}]`` (docker's kinds:
        0 changed, 1 added, 2 deleted), sorted by path."""
        found = await self.verbs.changes(call.params.string("id", required=True))
        return [{"path": c.path, "kind": c.kind} for c in found]

    async def container_stats(self, call: jsonrpc.Call) -> Any:
        """One sample of each container's cgroup figures (``id``: one container; else the running
        ones, ``all``: every one)."""
        ref = call.params.string("id")
        if ref:
            return [await self.verbs.stats(ref)]
        everything = call.params.boolean("all")
        recs = [r for r in self.containers.records() if everything or r.run.state in ACTIVE]
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
        """New limits (``memory``, ``cpus``, ``pids_limit`` and the finer ones of
        :func:`limits_request`) for a container, running or not."""
        p = call.params
        req = UpdateRequest(
            id=p.raw.get("id"),
            memory=p.integer("memory"),
            cpus=p.number("cpus"),
            pids_limit=p.integer("pids_limit"),
            limits=limits_request(p),
        )
        rec = await self.verbs.update(req)
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
        raw = call.params.raw.get("signal")
        sig = None if raw is None else parse_signal(raw)
        rec = await self.verbs.restart(call.params.string("id", required=True), timeout, sig)
        return {"id": rec.id, "pid": rec.run.pid}

    @staticmethod
    def _need_raw(call: jsonrpc.Call, method: str) -> None:
        if not call.wants_raw():
            raise InvalidParams(f'{method} needs "stream": "raw"', param="stream")

    async def container_archive_get(self, call: jsonrpc.Call) -> Any:
        """A tar of ``path`` in a container as stdout frames, once switched (``"stream": "raw"``)."""
        self._need_raw(call, "container.archive_get")
        p = call.params

        async def started() -> None:
            channel = await call.switch()
            with contextlib.suppress(OSError, anyio.TypedAttributeLookupError):
                # fewer, larger hand-offs to the client (capped by net.core.wmem_max)
                sock = channel.stream.extra(anyio.abc.SocketAttribute.raw_socket)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)

        return await self.verbs.archive_get(
            p.string("id", required=True), p.string("path", required=True), self._data_sink(call), started
        )

    async def container_archive_put(self, call: jsonrpc.Call) -> Any:
        """The client's stdin frames, a tar (an empty frame ends it), unpacked into directory
        ``path`` of a container once switched (``"stream": "raw"``), all or nothing."""
        self._need_raw(call, "container.archive_put")
        p = call.params

        async def started() -> None:
            await call.switch()

        async def source() -> bytes:
            assert call.channel is not None  # switched before the first read
            while True:
                try:
                    kind, data = await call.channel.receive()
                except anyio.EndOfStream:
                    raise anyio.BrokenResourceError("the client left before the archive's end") from None
                if kind == frames.STDIN:
                    return data

        return await self.verbs.archive_put(
            p.string("id", required=True), p.string("path", required=True), source, started
        )

    async def container_stat_path(self, call: jsonrpc.Call) -> Any:
        """docker's stat of ``path`` in a container: ``{name, size, mode, mtime, link_target}``."""
        p = call.params
        return await self.verbs.stat_path(p.string("id", required=True), p.string("path", required=True))

    @staticmethod
    def _data_sink(call: jsonrpc.Call) -> Callable[[list[bytes]], Coroutine[Any, Any, None]]:
        async def sink(parts: list[bytes]) -> None:
            """One stdout frame of ``parts`` (the only sender on this channel: the header and
            the pieces go out one after the other, none copied into another)."""
            channel = call.channel
            assert channel is not None  # switched before the first byte
            await channel.send_framed(frames.header(frames.STDOUT, sum(map(len, parts))))
            for part in parts:
                await channel.send_framed(part)

        return sink

    # ------------------------------------------------------------------------- exec, attach

    @staticmethod
    def _exec_request(p: jsonrpc.Params) -> ExecRequest:
        return ExecRequest(
            id=p.raw.get("id"),
            cmd=p.list_of_str("cmd"),
            env=p.list_of_str("env"),
            workdir=p.string("workdir"),
            user=p.string("user"),
            stdin=p.boolean("stdin"),
            detach=p.boolean("detach"),
            tty=p.boolean("tty"),
            rows=p.integer("rows", 24),
            cols=p.integer("cols", 80),
            timeout=p.number("timeout"),
            stdout=p.boolean("stdout", True),
            stderr=p.boolean("stderr", True),
        )

    async def exec_create(self, call: jsonrpc.Call) -> Any:
        """Record an exec of ``cmd`` in running container ``id``, not started: its record."""
        return self.core.execs.create(self._exec_request(call.params)).to_json()

    async def exec_inspect(self, call: jsonrpc.Call) -> Any:
        """The record of exec ``exec_id``."""
        return self.core.execs.inspect(call.params.string("exec_id", required=True)).to_json()

    async def container_exec(self, call: jsonrpc.Call) -> Any:
        """Run ``cmd`` in running container ``id`` (or, given ``exec_id``, start that created
        exec: ``exec.start``), then the exec's result (docs/api.md). With ``"stream": "raw"``
        its frames (control ``started``, stdout, stderr) and the client's (stdin, control
        ``resize``) travel on the switched connection, whose closing leaves the exec running
        unread; else its notes are ``container.exec.started`` and ``container.exec.output``
        notifications (base64)."""
        p = call.params
        if p.string("exec_id") is not None:
            return await self.exec_start(call)
        req = self._exec_request(p)
        if call.wants_raw() and not req.detach:
            return await self._exec_raw(call, lambda sink: self.core.execs.exec(req, sink))
        call.accept()  # its input may come on this connection while it runs
        return await self.core.execs.exec(req, self._exec_notes(call))

    async def exec_start(self, call: jsonrpc.Call) -> Any:
        """Start created exec ``exec_id``: the frames (``"stream": "raw"``) or notifications and
        the result of ``container.exec``."""
        p = call.params
        eid = p.string("exec_id", required=True)
        detach = p.boolean("detach") if "detach" in p.raw else None
        rows, cols = p.integer("rows"), p.integer("cols")
        execs = self.core.execs
        if call.wants_raw() and not (execs.inspect(eid).request.detach if detach is None else detach):
            return await self._exec_raw(
                call, lambda sink: execs.start(eid, sink, detach=detach, rows=rows, cols=cols)
            )
        call.accept()  # its input may come on this connection while it runs
        return await execs.start(eid, self._exec_notes(call), detach=detach, rows=rows, cols=cols)

    @staticmethod
    def _exec_notes(call: jsonrpc.Call) -> ExecSink:
        """The sink of an exec whose client did not ask for frames: its ``container.exec.started``
        and ``container.exec.output`` (base64) notifications."""
        eid = ""

        async def sink(kind: int, data: bytes) -> None:
            nonlocal eid
            if kind == frames.CONTROL:
                if started := frames.started_of(data):
                    eid = str(started.get("exec_id") or "")
                    await call.notify("container.exec.started", started)
            elif kind in _NAMES:
                note = {"exec_id": eid, "stream": _NAMES[kind], "data": base64.b64encode(data).decode()}
                await call.notify("container.exec.output", note)

        return sink

    async def _exec_raw(self, call: jsonrpc.Call, run: Callable[[ExecSink], Awaitable[Any]]) -> Any:
        """An exec (``run`` with its sink) on a raw stream, switched at once (before the reader takes another
        line; an error then comes in the end frame): the shim's frames relayed, the client's
        frames to the exec's input once it runs; the client's closing ends the relay (not the
        exec)."""
        channel = await call.switch()
        started = anyio.Event()
        eid = ""

        async def sink(kind: int, data: bytes) -> None:
            nonlocal eid
            if kind == frames.CONTROL and (info := frames.started_of(data)):
                eid = str(info.get("exec_id") or "")
                started.set()
            await channel.send(kind, data)

        async def relay_input(scope: anyio.CancelScope) -> None:
            await started.wait()
            execs = self.core.execs
            while True:
                try:
                    kind, data = await channel.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    scope.cancel()  # the client went away: the relay ends, not the exec
                    return
                except frames.MalformedFrame:
                    scope.cancel()
                    return
                try:
                    if kind == frames.STDIN and data:
                        await execs.stdin(eid, data)
                    elif kind == frames.STDIN:
                        await execs.close_stdin(eid)
                    elif kind == frames.CONTROL and (size := frames.resize_of(data)):
                        await execs.resize(eid, *size)
                except (TugError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                    pass  # it has ended meanwhile (its shim stream closed): the input has nowhere to go

        done, result, error = False, None, None
        async with anyio.create_task_group() as tg:
            tg.start_soon(relay_input, tg.cancel_scope)
            try:
                result = await run(sink)
            except TugError as exc:
                error = exc  # raised as itself, not in a group
            done = True
            tg.cancel_scope.cancel()
        if error is not None:
            raise error
        if not done:
            raise anyio.BrokenResourceError("the client closed the stream")
        return result

    async def exec_stdin(self, call: jsonrpc.Call) -> Any:
        """Forward ``data`` (base64) to the stdin of exec ``exec_id``."""
        eid = call.params.string("exec_id", required=True)
        try:
            data = base64.b64decode(call.params.string("data", ""), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidArgument(f"data is not base64: {exc}", field="data") from exc
        await self.core.execs.stdin(eid, data)
        return {}

    async def exec_resize(self, call: jsonrpc.Call) -> Any:
        """Set the window size (``rows``, ``cols``) of exec ``exec_id``'s terminal."""
        p = call.params
        eid = p.string("exec_id", required=True)
        await self.core.execs.resize(eid, p.integer("rows", 24), p.integer("cols", 80))
        return {}

    async def exec_close_stdin(self, call: jsonrpc.Call) -> Any:
        """Close the stdin of exec ``exec_id`` after the data sent before."""
        await self.core.execs.close_stdin(call.params.string("exec_id", required=True))
        return {}

    async def container_stdin(self, call: jsonrpc.Call) -> Any:
        """Write ``data`` (base64) to the terminal or stdin of running container ``id``."""
        p = call.params
        try:
            data = base64.b64decode(p.string("data", ""), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidArgument(f"data is not base64: {exc}", field="data") from exc
        await self.core.attach.stdin(p.raw.get("id"), data)
        return {}

    async def container_close_stdin(self, call: jsonrpc.Call) -> Any:
        """Close the stdin of running container ``id`` (created with ``stdin`` and no ``tty``)."""
        await self.core.attach.close_stdin(call.params.raw.get("id"))
        return {}

    async def container_resize(self, call: jsonrpc.Call) -> Any:
        """Set the terminal of running container ``id`` to ``rows`` x ``cols``."""
        p = call.params
        await self.core.attach.resize(p.raw.get("id"), p.integer("rows", 24), p.integer("cols", 80))
        return {}


def _match(s: dict[str, Any], filters: dict[str, list[str]], created_of: Callable[[str], str | None]) -> bool:
    from tugwire import dockerfilters

    return dockerfilters.match_container(s, filters, created_of)
