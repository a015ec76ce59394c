"""tug-cri's server: grpc.aio on a Unix socket, ready notification, orderly shutdown.

grpc.aio runs on asyncio only (grpc/grpc#25050); tug-cri is its own process for that reason,
and tugd keeps both anyio backends and no grpcio (docs/cri.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import stat

import grpc.aio

from .errors import unimplemented_rest
from .gen import api_pb2_grpc
from .images import ImageService
from .runtime import RuntimeService
from .streaming import TOKEN_TTL, StreamServer
from .tugd import Tugd

log = logging.getLogger("tugboat.cri")

DEFAULT_LISTEN = "/run/tugboat/cri.sock"
SHUTDOWN_GRACE = 5.0  # seconds calls in flight get to finish on SIGTERM


class ListenError(Exception):
    """The socket cannot be listened on (in use, not a socket, no directory)."""


def prepare_socket_path(path: str) -> None:
    """Make ``path``'s directory and remove a stale socket left by a tug-cri that died. A path
    that is not a socket, or a socket someone still listens on, is a ListenError: never stolen."""
    if not os.path.isabs(path):
        raise ListenError(f"--listen must be an absolute path, not {path!r}")
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ListenError(f"{path} exists and is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError as exc:
            if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                raise ListenError(f"cannot check the socket {path}: {exc}") from exc
        else:
            raise ListenError(f"{path}: another server is listening on it")
    os.unlink(path)


def sd_notify(message: str) -> None:
    """Send ``message`` to ``$NOTIFY_SOCKET`` (systemd's Type=notify, or a test), if set."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    addr = "\0" + address[1:] if address.startswith("@") else address
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            s.sendto(message.encode(), addr)
        except OSError as exc:
            log.warning("sd_notify to %s failed: %s", address, exc)


async def serve(
    listen: str, tugd_socket: str, stream_address: str = "127.0.0.1", stream_token_ttl: float = TOKEN_TTL
) -> None:
    """Serve the CRI on ``listen`` (mode 0600: root only, as the CRI gives full control of the
    node's containers) for ``tugd_socket``'s tugd until SIGTERM or SIGINT, then let calls in
    flight finish for a few seconds and remove the socket. The streaming server of Exec,
    Attach and PortForward listens on ``stream_address`` and a random port."""
    prepare_socket_path(listen)
    tugd = Tugd(tugd_socket)
    streaming = StreamServer(tugd_socket, stream_address, stream_token_ttl)
    await streaming.start()
    server = grpc.aio.server()
    runtime = RuntimeService(tugd, listen, streaming)
    images = ImageService(tugd)
    unimplemented_rest(runtime, api_pb2_grpc.RuntimeServiceServicer, "RuntimeService")
    unimplemented_rest(images, api_pb2_grpc.ImageServiceServicer, "ImageService")
    api_pb2_grpc.add_RuntimeServiceServicer_to_server(runtime, server)
    api_pb2_grpc.add_ImageServiceServicer_to_server(images, server)
    # The socket is made with the process's umask: 0600 from the start, no window of wider mode.
    old_umask = os.umask(0o177)
    try:
        server.add_insecure_port(f"unix:{listen}")
        await server.start()
    except RuntimeError as exc:
        await streaming.close()
        raise ListenError(f"cannot listen on {listen}: {exc}") from exc
    finally:
        os.umask(old_umask)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        log.info("serving the CRI on %s for tugd at %s", listen, tugd_socket)
        sd_notify(f"READY=1\nSTATUS=serving the CRI on {listen}")
        await stop.wait()
        log.info("stopping")
        sd_notify("STOPPING=1")
    finally:
        await server.stop(SHUTDOWN_GRACE)
        await streaming.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(listen)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
