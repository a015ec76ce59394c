"""tugd's root task tree: signals, the listener, recovery, and an orderly shutdown.

Shutdown is cancellation of the root scope. Shims and their containers are never touched by it:
they are not our children and outlive us (``KillMode=process`` in the unit); the next tugd finds
them again from the state directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import grp
import logging
import os
import signal
import socket
from collections.abc import Callable
from functools import partial

import anyio
import anyio.abc
from anyio.abc import SocketAttribute

from tugwire import httpserve, jsonrpc, peers
from tugwire.errors import PermissionDenied

from . import diskfull, shims, systemd
from .api import Api
from .config import Config
from .core import Core
from .store import Store
from .storecheck import StartupError, open_store, startup_errors
from .system import VERSION

log = logging.getLogger("tugboat")


class AlreadyRunning(StartupError):
    """Another tugd holds the data root or the state directory."""


class ListenError(StartupError):
    """An address tugd was told to listen on cannot be had."""


def _group_id(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def prepare_dirs(cfg: Config, gid: int | None) -> None:
    os.makedirs(cfg.root, mode=0o700, exist_ok=True)
    os.makedirs(cfg.state, mode=0o700, exist_ok=True)
    os.chmod(cfg.root, 0o700)
    # Only root may enter the state dir; with a tugboat group, its members may reach the socket
    # (0710: traverse, not list).
    if gid is not None:
        os.chown(cfg.state, 0, gid)
        os.chmod(cfg.state, 0o710)
    else:
        os.chmod(cfg.state, 0o700)
    sock_dir = os.path.dirname(cfg.socket)
    if sock_dir != cfg.state:
        os.makedirs(sock_dir, mode=0o700, exist_ok=True)


def _lock(directory: str, what: str) -> int:
    fd = os.open(os.path.join(directory, "tugd.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise AlreadyRunning(
            f"another tugd is already using {what} {directory}; stop it first (or give this one "
            f"another --{'root' if what == 'the data root' else 'state'})"
        ) from None
    return fd


def lock_root(cfg: Config) -> int:
    """Hold the data root: one tugd per root (the lock goes with the process)."""
    return _lock(cfg.root, "the data root")


def lock_state(cfg: Config) -> int:
    """Hold the state directory too: two tugds on one state dir would take each other's shims."""
    return _lock(cfg.state, "the state directory")


async def make_listener(
    cfg: Config, gid: int | None, inherited: socket.socket | None = None
) -> anyio.abc.SocketListener:
    """The API listener: the socket systemd passed (``inherited``; its path, mode and owner are
    the socket unit's business, we leave them alone), else a new one bound at ``cfg.socket``."""
    if inherited is not None:
        return await anyio.abc.SocketListener.from_socket(inherited)
    with contextlib.suppress(FileNotFoundError):
        # A stale socket from a tugd that died; the root lock says no other tugd is alive.
        os.unlink(cfg.socket)
    listener = await anyio.create_unix_listener(cfg.socket, mode=0o660)
    if gid is not None:
        os.chown(cfg.socket, 0, gid)
    return listener


def bind_metrics(cfg: Config) -> socket.socket | None:
    """The ``--metrics-address`` socket (None when off), bound at once: an address in use stops
    tugd before it is ready, with a message that says which."""
    if not cfg.metrics_address:
        return None
    try:
        return httpserve.bind_tcp(*httpserve.parse_address(cfg.metrics_address))
    except OSError as exc:
        raise ListenError(
            f"cannot serve metrics on {cfg.metrics_address}: {exc.strerror or exc} "
            "(--metrics-address HOST:PORT, or off)"
        ) from exc


def peer_allowed(gid: int | None) -> Callable[[anyio.abc.SocketStream], bool]:
    """Root, and members of the tugboat group, checked with the peer's credentials (SO_PEERCRED
    and SO_PEERGROUPS, what the peer process really holds: :mod:`tugwire.peers`, shared with the
    Docker API front door), not only the socket's mode. A refused peer gets a
    ``permission_denied`` error, then the connection is closed."""

    def check(stream: anyio.abc.SocketStream) -> bool:
        sock: socket.socket = stream.extra(SocketAttribute.raw_socket)
        allowed, peer = peers.is_allowed(sock, gid)
        if allowed:
            return True
        log.warning("refused a connection from uid %d gid %d (pid %d)", peer.uid, peer.gid, peer.pid)
        raise PermissionDenied(
            f"permission denied: only {peers.who_may(gid)} may use tugd (you are uid {peer.uid})"
        )

    return check


async def _signals(scope: anyio.CancelScope, notifier: systemd.Notifier) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("got %s: shutting down (containers keep running)", signal.Signals(signum).name)
            notifier.stopping_now()
            scope.cancel()
            return


def status_line(store: Store) -> str:
    """The one line systemd shows as the service's STATUS."""
    states = store.container_states()
    images = store.count_images()
    total = sum(states.values())
    return f"{states.get('running', 0)} running, {total} containers, {images} images"


async def main(cfg: Config, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
    # First of all, before any child can inherit them: what systemd passed us.
    notifier = systemd.Notifier.from_environment()
    inherited = systemd.api_socket(systemd.listen_fds())
    if inherited is not None:
        bound = inherited.getsockname()  # a path; bytes or "" for an abstract or unnamed socket
        if isinstance(bound, str) and bound.startswith("/"):
            cfg = dataclasses.replace(cfg, socket=bound)
    gid = _group_id(cfg.group) if cfg.group else None
    locks: list[int] = []
    store: Store | None = None
    launcher: shims.ShimLauncher | None = None
    metrics_sock: socket.socket | None = None
    try:
        with startup_errors(cfg):
            prepare_dirs(cfg, gid)
            locks.append(lock_root(cfg))
            locks.append(lock_state(cfg))
            rebuilt = None
            if cfg.rebuild_store:  # --rebuild-store only: imported then
                from . import rebuild

                rebuilt = rebuild.rebuild(cfg)
            if rebuilt is not None:
                log.warning("%s", rebuilt.line(cfg.db_path))
            store = open_store(cfg)
            if rebuilt is not None:
                store.rebuilt = True
                store.rebuilt_from = rebuilt.set_aside[0] if rebuilt.set_aside else ""
            if cfg.shim_birth == "template":
                launcher = shims.TemplateLauncher(cfg.template_socket, cfg.shim_timeout, cfg.backend)
            else:
                launcher = shims.ExecLauncher(cfg.shim_timeout)
            metrics_sock = bind_metrics(cfg)
        metrics = None
        if metrics_sock is not None:
            from .metrics import Metrics  # prometheus_client costs ~50 ms to import: only when on

            metrics = Metrics(version=VERSION, runtime=cfg.runtime, backend=cfg.backend)
        async with anyio.create_task_group() as tg:
            tg.start_soon(notifier.run_watchdog)  # from the start: recovery may take a while
            with startup_errors(cfg):
                core = Core.build(cfg, store, launcher, tg, metrics)  # every service, once
                if store.mirror is not None:
                    # After the network store made its tables: their rows are mirrored too.
                    store.mirror.attach(store.db)
                await core.pods.recover()  # before the containers' (their network reconcile)
                await core.containers.recover()
                api = Api(core)  # the JSON-RPC front door
                api.dispatcher.map_error = diskfull.as_tug_error  # ENOSPC: a typed, clear error
                if metrics is not None and metrics_sock is not None:
                    api.dispatcher.on_call = metrics.observe_call
                    metrics_listener = await anyio.abc.SocketListener.from_socket(metrics_sock)
                    tg.start_soon(metrics.serve, metrics_listener, core.containers)
                    log.info("metrics on http://%s/metrics", httpserve.bound_address(metrics_listener))
                listener = await make_listener(cfg, gid, inherited)
            tg.start_soon(_signals, tg.cancel_scope, notifier)
            tg.start_soon(partial(jsonrpc.serve_listener, accept=peer_allowed(gid)), listener, api.dispatcher)
            log.info(
                "tugd ready on %s%s (root %s, state %s, runtime %s)",
                cfg.socket,
                " (socket activation)" if inherited is not None else "",
                cfg.root,
                cfg.state,
                cfg.runtime,
            )
            # Ready once the socket serves and every shim has been re-attached (recover above).
            status = status_line(store)
            notifier.notify(f"READY=1\nSTATUS={status}")
            tg.start_soon(notifier.run_status, partial(status_line, store), core.bus.next_change, status)
            task_status.started()
    finally:
        notifier.stopping_now()
        if launcher is not None:
            with anyio.CancelScope(shield=True):
                await launcher.aclose()
        if inherited is None and len(locks) == 2:  # ours (a socket systemd passed is the unit's)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(cfg.socket)
        if metrics_sock is not None:
            metrics_sock.close()  # closed already if it served; not if the start failed first
        if store is not None:
            store.close()
        for fd in locks:
            os.close(fd)
