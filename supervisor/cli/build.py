"""``tug build``: build an image from a Dockerfile, streaming the steps and RUN output.

tugd runs on this host and reads the build context by path (as ``image.import`` reads its tar):
the CLI sends the absolute path of the context and of the Dockerfile, never their bytes.
Imported by :func:`supervisor.cli.main.build_parser`; like the rest of the CLI it imports nothing
asynchronous.
"""

from __future__ import annotations

import argparse
import binascii
import os
import sys
from collections.abc import Callable
from typing import Any

from tugwire import errors
from tugwire.syncclient import Client

COMMANDS = ("build",)


def build_args(items: list[str], environ: dict[str, str] | None = None) -> dict[str, str]:
    """``--build-arg K=V``; a bare ``K`` takes its value from the environment (skipped if unset),
    as docker does."""
    env = os.environ if environ is None else environ
    out: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not key:
            raise errors.InvalidArgument(f"invalid --build-arg {item!r}: want KEY=VALUE")
        if eq:
            out[key] = value
        elif key in env:
            out[key] = env[key]
    return out


def _write(stream: Any, data: bytes) -> None:
    stream.flush()
    stream.buffer.write(data)
    stream.buffer.flush()


def _cmd_build(args: argparse.Namespace, client: Client) -> int:
    context = os.path.abspath(args.context)
    params: dict[str, Any] = {"context": context, "no_cache": args.no_cache}
    if args.file:
        # -f is relative to the current directory (docker's rule); tugd reads it by path.
        params["dockerfile"] = os.path.abspath(args.file)
    if args.tag:
        params["tag"] = args.tag
    params["build_args"] = build_args(args.build_arg)
    if args.network:
        params["network"] = args.network
    if args.target:
        params["target"] = args.target
    build = client.stream("image.build", params)
    mid_line = False  # the last RUN output ended without a newline: end it before our own lines
    for msg in build:
        note = msg["params"]
        method = msg.get("method")
        if args.quiet:
            continue
        if method in ("image.build.step", "image.build.status") and mid_line:
            print(flush=True)
            mid_line = False
        if method == "image.build.step":
            print(f"Step {note.get('step')}/{note.get('total')} : {note.get('instruction')}", flush=True)
        elif method == "image.build.status":
            print(note.get("message", ""), flush=True)
        elif method == "image.build.output":
            try:
                data = binascii.a2b_base64(note.get("data") or "")
            except (binascii.Error, TypeError, ValueError) as exc:
                raise errors.Internal(f"malformed build output from tugd: {exc}") from exc
            if note.get("stream") == "stderr":
                _write(sys.stderr, data)
            elif data:
                _write(sys.stdout, data)
                mid_line = not data.endswith(b"\n")
    if args.quiet:
        print(build.result["id"], flush=True)
    return 0


def add_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Add ``build`` through ``build_parser``'s ``add``."""
    p = add("build", "build an image from a Dockerfile")
    p.add_argument("-t", "--tag", metavar="NAME[:TAG]", help="name the image")
    p.add_argument("-f", "--file", metavar="PATH", help="the Dockerfile (default CONTEXT/Dockerfile)")
    p.add_argument(
        "--build-arg", action="append", default=[], metavar="KEY=VALUE", help="a build-time variable"
    )
    p.add_argument("--no-cache", action="store_true", help="do not use the build cache")
    p.add_argument(
        "--network", choices=("none", "host"), help="the network of RUN steps (default none: loopback only)"
    )
    p.add_argument("--target", metavar="STAGE", help="build the stage of this name (AS STAGE) and stop")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the image id")
    p.add_argument("context", metavar="CONTEXT", help="the build context: a directory on this host")
    p.set_defaults(func=_cmd_build)
