"""tugd's root task tree: signals, the listener, recovery, and an orderly shutdown.

Shutdown is cancellation of the root scope. Shims and their containers are never touched by it:
they are not our children and outlive us (``KillMode=process`` in the unit); the next tugd finds
them again from the state directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import logging
import os
import signal
import socket
import struct
from collections.abc import Callable
from functools import partial

import anyio
import anyio.abc
from anyio.abc import SocketAttribute

from tugwire import jsonrpc

from . import shims
from .api import Api
from .config import Config
from .containers import Containers
from .events import EventBus
from .images import Images
from .store import Store

log = logging.getLogger("tugboat")


class AlreadyRunning(Exception):
    pass


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


def lock_root(cfg: Config) -> int:
    fd = os.open(os.path.join(cfg.root, "tugd.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise AlreadyRunning(f"another tugd is already using {cfg.root}") from None
    return fd


async def make_listener(cfg: Config, gid: int | None) -> anyio.abc.SocketListener:
    with contextlib.suppress(FileNotFoundError):
        # A stale socket from a tugd that died; the root lock says no other tugd is alive.
        os.unlink(cfg.socket)
    listener = await anyio.create_unix_listener(cfg.socket, mode=0o660)
    if gid is not None:
        os.chown(cfg.socket, 0, gid)
    return listener


def peer_allowed(gid: int | None) -> Callable[[anyio.abc.SocketStream], bool]:
    """Root, and members of the tugboat group, checked with SO_PEERCRED (not only the mode)."""

    def check(stream: anyio.abc.SocketStream) -> bool:
        sock: socket.socket = stream.extra(SocketAttribute.raw_socket)
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, peer_gid = struct.unpack("3i", creds)
        if uid == 0 or (gid is not None and peer_gid == gid):
            return True
        if gid is not None:
            with contextlib.suppress(OSError, KeyError):
                import pwd

                name = pwd.getpwuid(uid).pw_name
                return name in grp.getgrgid(gid).gr_mem
        return False

    return check


def sd_notify(message: str) -> None:
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(addr)
        s.sendall(message.encode())


async def _signals(scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("got %s: shutting down (containers keep running)", signal.Signals(signum).name)
            sd_notify("STOPPING=1")
            scope.cancel()
            return


async def main(cfg: Config, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
    gid = _group_id(cfg.group) if cfg.group else None
    prepare_dirs(cfg, gid)
    lock_fd = lock_root(cfg)
    store = Store(cfg.db_path)
    bus = EventBus()
    images = Images(cfg, store)
    launcher: shims.ShimLauncher
    if cfg.shim_birth == "template":
        launcher = shims.TemplateLauncher(cfg.template_socket, cfg.shim_timeout, cfg.backend)
    else:
        launcher = shims.ExecLauncher(cfg.shim_timeout)
    try:
        async with anyio.create_task_group() as tg:
            containers = Containers(cfg, store, images, launcher, bus, tg)
            await containers.recover()
            api = Api(cfg, containers, images, bus, cfg.shim_birth)
            listener = await make_listener(cfg, gid)
            tg.start_soon(_signals, tg.cancel_scope)
            tg.start_soon(partial(jsonrpc.serve_listener, accept=peer_allowed(gid)), listener, api.dispatcher)
            log.info(
                "tugd ready on %s (root %s, state %s, runtime %s)",
                cfg.socket,
                cfg.root,
                cfg.state,
                cfg.runtime,
            )
            sd_notify(f"READY=1\nSTATUS=serving {containers.counts()['running']} running containers")
            task_status.started()
    finally:
        with anyio.CancelScope(shield=True):
            await launcher.aclose()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(cfg.socket)
        store.close()
        os.close(lock_fd)
