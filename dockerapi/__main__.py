"""``tug-docker-api --listen PATH [--socket TUGD_SOCKET]``: argv to :func:`main`; nothing else."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import sys

import anyio
import anyio.abc

from tugwire import peers

from .server import Server

DEFAULT_LISTEN = "/run/tugboat/docker.sock"
DEFAULT_TUGD = "/run/tugboat/tugd.sock"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="tug-docker-api", description="The Docker Engine API for tugd")
    p.add_argument(
        "--listen", default=DEFAULT_LISTEN, help=f"the Unix socket to serve (default {DEFAULT_LISTEN})"
    )
    p.add_argument(
        "--socket",
        default=os.environ.get("TUGBOAT_SOCKET", DEFAULT_TUGD),
        help=f"tugd's socket (default {DEFAULT_TUGD})",
    )
    p.add_argument(
        "--group", default="tugboat", help="the group that may use the socket besides root ('' for root only)"
    )
    p.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    p.add_argument("--log-level", default="info")
    return p.parse_args(argv)


def _systemd_socket() -> socket.socket | None:
    """The listening socket systemd passed (socket activation), if any."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()) or os.environ.get("LISTEN_FDS") != "1":
        return None
    return socket.socket(fileno=3)


async def serve(args: argparse.Namespace) -> None:
    """Bind (or take systemd's socket), report readiness, serve until SIGTERM/SIGINT."""
    gid = peers.group_id(args.group) if args.group else None
    inherited = _systemd_socket()
    if inherited is not None:
        listener = await anyio.abc.SocketListener.from_socket(inherited)
    else:
        os.makedirs(os.path.dirname(args.listen) or ".", exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(args.listen)
        listener = await anyio.create_unix_listener(args.listen, mode=0o660)
        if gid is not None:
            os.chown(args.listen, 0, gid)
    server = Server(args.socket, gid)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, listener)
        _notify_ready()
        logging.getLogger("tugboat.dockerapi").info(
            "serving the Docker API on %s (tugd: %s)", args.listen, args.socket
        )
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                break
        tg.cancel_scope.cancel()
    if inherited is None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(args.listen)


def _notify_ready() -> None:
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(b"READY=1", path)


def main(argv: list[str] | None = None) -> None:
    """The console script."""
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    anyio.run(serve, args, backend=args.backend)


if __name__ == "__main__":
    main()
