"""``tug-cri --listen PATH [--socket TUGD_SOCKET]``: argv -> serve; nothing else."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from .server import DEFAULT_LISTEN, ListenError, serve
from .streaming import TOKEN_TTL
from .tugd import DEFAULT_SOCKET


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """tug-cri's command line."""
    p = argparse.ArgumentParser(
        prog="tug-cri",
        description="Serve the Kubernetes CRI (runtime.v1, gRPC) on a Unix socket, as a client of tugd",
    )
    p.add_argument("--listen", default=DEFAULT_LISTEN, help=f"the CRI socket (default {DEFAULT_LISTEN})")
    p.add_argument(
        "--socket",
        default=os.environ.get("TUGBOAT_SOCKET", DEFAULT_SOCKET),
        help=f"tugd's socket (default $TUGBOAT_SOCKET, else {DEFAULT_SOCKET})",
    )
    p.add_argument(
        "--stream-address",
        default="127.0.0.1",
        help="the streaming server's address (Exec, Attach, PortForward; default 127.0.0.1, a random port)",
    )
    p.add_argument(
        "--stream-token-ttl",
        type=float,
        default=TOKEN_TTL,
        help=f"seconds a streaming URL stays valid (default {TOKEN_TTL:g})",
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """The ``tug-cri`` console script."""
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s tug-cri %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        asyncio.run(serve(args.listen, args.socket, args.stream_address, args.stream_token_ttl))
    except ListenError as exc:
        print(f"tug-cri: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
