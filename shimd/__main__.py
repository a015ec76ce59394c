"""tug-shim: ``start`` (birth of one shim, cold), ``template`` (a pre-imported shim factory),
``delete`` (clean up after a shim that died)."""

from __future__ import annotations

import argparse
import json
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tug-shim", description="Tugboat's per-container shim")
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser(
        "start",
        help="read a shim config (JSON) on stdin, start the shim detached, "
        "print its answer (pid, or the runtime's error) on stdout",
    )
    # Only room in the command line for the shim's title, ``tug-shim ID`` (see birth.set_title):
    # the config's id is the one that counts.
    s.add_argument("id", nargs="?", default="", help="the container's id (shown by ps)")
    t = sub.add_parser("template", help="serve shim births on a socket (used by tugd)")
    t.add_argument("--socket", required=True)
    t.add_argument("--parent", type=int, required=True, help="die when this process dies")
    t.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])
    d = sub.add_parser("delete", help="clean up after a shim that died: runc delete, report exit")
    d.add_argument("--dir", required=True, help="the shim's state dir")
    d.add_argument("--id", required=True)
    d.add_argument("--runtime", default="runc")
    d.add_argument("--runtime-root", required=True)
    args = parser.parse_args(argv)

    if args.cmd == "start":
        return _start()
    if args.cmd == "template":
        from .birth import template_main

        return template_main(args.socket, args.parent, args.backend)
    from .cleanup import delete

    print(json.dumps(delete(args.dir, args.id, args.runtime, args.runtime_root)))
    return 0


def _start() -> int:
    from .birth import birth, default_signals

    default_signals()
    config = json.loads(sys.stdin.buffer.read())
    r, w = os.pipe()
    pid = birth(config, w)
    os.close(w)
    os.waitpid(pid, 0)
    reply = b""
    while True:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        reply += chunk
    if not reply:
        print(
            json.dumps(
                {"error": {"code": -32603, "message": "shim died during start", "data": {"kind": "internal"}}}
            )
        )
        return 1
    sys.stdout.write(reply.decode())
    return 0 if b'"error"' not in reply else 1


if __name__ == "__main__":
    sys.exit(main())
