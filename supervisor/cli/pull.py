"""``tug pull``, ``push``, ``login`` and ``logout``.

Imported by :func:`supervisor.cli.main.build_parser` only when one of these commands is named.
The transfer runs in tugd (``image.pull`` / ``image.push``); this side draws a progress bar per
layer from the ``*.progress`` notifications when stdout is a terminal, and stays quiet otherwise
(only the result is printed, as docker does when piped).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import IO, Any

from tugwire import errors
from tugwire.syncclient import Client

from .format import human_size
from .options import size_arg

COMMANDS = ("pull", "push", "login", "logout")
BAR_WIDTH = 30
_LABELS = {
    "downloading": "Downloading",
    "fetching": "Waiting",
    "fetched": "Verified",
    "downloaded": "Download complete",
    "exists": "Already exists",
    "resolved": "Resolved",
    "unpacking": "Unpacking",
    "done": "Pull complete",
    "uploading": "Pushing",
    "pushed": "Pushed",
    "mounted": "Mounted from another repository",
}


class ProgressBars:
    """One line per layer, redrawn in place with ANSI cursor movements (a terminal only)."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.rows: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"<ProgressBars rows={len(self.rows)}>"

    @staticmethod
    def render(event: dict[str, Any]) -> str:
        action = str(event.get("action", ""))
        label = _LABELS.get(action, action.capitalize())
        line = f"{event.get('id') or 'image'}: {label}"
        current, total = event.get("current"), event.get("total")
        moving = action in ("downloading", "uploading")
        if moving and isinstance(current, int) and isinstance(total, int) and total > 0:
            filled = min(BAR_WIDTH, BAR_WIDTH * current // total)
            bar = "=" * filled + (">" if filled < BAR_WIDTH else "") + " " * (BAR_WIDTH - filled - 1)
            line += f" [{bar[:BAR_WIDTH]}] {human_size(current)}/{human_size(total)}"
        return line

    def update(self, event: dict[str, Any]) -> None:
        key = str(event.get("id") or "")
        if not key and event.get("action") not in ("unpacking", "done"):
            return
        line = self.render(event)
        if key not in self.rows:
            self.rows[key] = line
            self.out.write(line + "\n")
        else:
            up = len(self.rows) - list(self.rows).index(key)
            self.rows[key] = line
            self.out.write(f"\x1b[{up}A\r\x1b[2K{line}\x1b[{up}B\r")
        self.out.flush()


def _stream(
    client: Client, method: str, params: dict[str, Any], on_progress: Callable[[dict[str, Any]], None] | None
) -> Any:
    """Call a streaming method, feeding its progress notifications to ``on_progress``."""
    stream = client.stream(method, params)
    for msg in stream:
        if msg.get("method") == f"{method}.progress" and on_progress:
            on_progress(msg["params"])
    return stream.result


def _bars(args: argparse.Namespace) -> Callable[[dict[str, Any]], None] | None:
    if args.quiet or not sys.stdout.isatty():
        return None
    return ProgressBars(sys.stdout).update


def familiar_tagged(ref: str) -> str:
    """``busybox`` -> ``busybox:latest``, ``docker.io/library/alpine`` -> ``alpine:latest``: the
    name docker shows in ``Unable to find image ... locally`` (no import of tugwire.imageref:
    the CLI stays light)."""
    name = ref
    for prefix in ("docker.io/", "index.docker.io/"):
        if name.startswith(prefix):
            name = name[len(prefix) :]
            break
    if name.startswith("library/") and name.count("/") == 1:
        name = name[len("library/") :]
    last = name.rsplit("/", 1)[-1]
    if "@" not in name and ":" not in last:
        name += ":latest"
    return name


def pull_for_create(client: Client, ref: str, out: IO[str]) -> dict[str, Any]:
    """Pull ``ref`` before a ``run``/``create``, as docker does: progress (bars on a terminal)
    then ``Digest`` and ``Status`` lines, all on ``out`` (stderr: stdout is the container's)."""
    bars = ProgressBars(out).update if out.isatty() else None
    result: dict[str, Any] = _stream(client, "image.pull", {"ref": ref}, bars)
    out.write(f"Digest: {result['digest']}\nStatus: Downloaded newer image for {familiar_tagged(ref)}\n")
    out.flush()
    return result


def _cmd_pull(args: argparse.Namespace, client: Client) -> int:
    params: dict[str, Any] = {"ref": args.ref, "concurrency": args.concurrency}
    if args.platform:
        params["platform"] = args.platform
    result = _stream(client, "image.pull", params, _bars(args))
    if args.quiet:
        print(result["ref"])
    else:
        print(f"Digest: {result['digest']}")
        print(f"Status: pulled {result['ref']}")
        print(result["ref"])
    return 0


def _cmd_push(args: argparse.Namespace, client: Client) -> int:
    params: dict[str, Any] = {"ref": args.ref, "concurrency": args.concurrency}
    if args.dest:
        params["dest"] = args.dest
    if args.chunk_size:
        params["chunk_size"] = args.chunk_size
    result = _stream(client, "image.push", params, _bars(args))
    if args.quiet:
        print(result["digest"])
    else:
        counts = (
            f"{len(result['uploaded'])} uploaded, {len(result['existing'])} already there, "
            f"{len(result['mounted'])} mounted"
        )
        print(f"{result['ref']}: digest: {result['digest']} ({counts})")
    return 0


def _cmd_login(args: argparse.Namespace, client: Client) -> int:
    username = args.username
    if not username:
        if not sys.stdin.isatty():
            raise errors.InvalidArgument("no username: use -u/--username")
        username = input("Username: ").strip()
    if args.password_stdin:
        if args.password is not None:
            raise errors.InvalidArgument("--password and --password-stdin are mutually exclusive")
        password = sys.stdin.read().rstrip("\r\n")
    elif args.password is not None:
        print(
            "WARNING! Using --password on the command line is insecure; use --password-stdin.",
            file=sys.stderr,
        )
        password = args.password
    else:
        if not sys.stdin.isatty():
            raise errors.InvalidArgument("no password: use --password-stdin")
        import getpass  # only here: the other commands do not pay for it

        password = getpass.getpass("Password: ")
    client.call("auth.login", {"registry": args.server, "username": username, "password": password})
    print("Login Succeeded")
    return 0


def _cmd_logout(args: argparse.Namespace, client: Client) -> int:
    result = client.call("auth.logout", {"registry": args.server})
    if result["removed"]:
        print(f"Removing login credentials for {result['registry']}")
    else:
        print(f"Not logged in to {result['registry']}")
    return 0


def _concurrency_arg(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if not 1 <= n <= 32:
        raise argparse.ArgumentTypeError("must be between 1 and 32")
    return n


def add_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Add pull, push, login and logout through ``build_parser``'s ``add``."""
    p = add("pull", "pull an image from a registry")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress, print only the name")
    p.add_argument("--platform", metavar="OS/ARCH[/VARIANT]", help="from a multi-platform image")
    p.add_argument("--concurrency", type=_concurrency_arg, default=3, help="layers at a time (3)")
    p.add_argument("ref", metavar="NAME[:TAG|@DIGEST]")
    p.set_defaults(func=_cmd_pull)

    p = add("push", "push an image to a registry")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress, print only the digest")
    p.add_argument("--concurrency", type=_concurrency_arg, default=3, help="layers at a time (3)")
    p.add_argument(
        "--chunk-size", type=size_arg, metavar="SIZE", help="upload blobs larger than this in chunks (32m)"
    )
    p.add_argument("ref", metavar="NAME[:TAG]")
    p.add_argument("dest", nargs="?", metavar="DEST[:TAG]", help="where to push it (default: NAME[:TAG])")
    p.set_defaults(func=_cmd_push)

    p = add("login", "save credentials for a registry (checked against it first)")
    p.add_argument("-u", "--username")
    p.add_argument("-p", "--password", help="insecure: prefer --password-stdin")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    p.add_argument("server", nargs="?", default="docker.io", metavar="SERVER", help="default docker.io")
    p.set_defaults(func=_cmd_login)

    p = add("logout", "forget the credentials of a registry")
    p.add_argument("server", nargs="?", default="docker.io", metavar="SERVER", help="default docker.io")
    p.set_defaults(func=_cmd_logout)
