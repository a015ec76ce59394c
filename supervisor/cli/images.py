"""``tug images``, ``rmi``, ``import``, ``save``, ``load``, ``tag`` and ``tug image ls|rm|inspect|import|
prune|save|load|tag``.

Archive paths are resolved here to absolute paths: tugd reads and writes them on its own host.
Like the rest of the CLI this module imports nothing asynchronous.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from tugwire import errors
from tugwire.syncclient import Client

from .format import ago, filter_options, human_size, json_line, print_error, short_id, table
from .inspect import add_inspect_args
from .options import Parser

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

COMMANDS = ("import", "images", "rmi", "image", "save", "load", "tag")


def _cmd_save(args: argparse.Namespace, client: Client) -> int:
    if not args.output:
        raise errors.InvalidArgument("tug save writes to a file: give -o FILE")
    fmt = {"docker": "docker-archive", "oci": "oci-archive"}.get(args.format, args.format)
    client.call("image.save", {"path": os.path.abspath(args.output), "refs": args.images, "format": fmt})
    return 0


def _cmd_load(args: argparse.Namespace, client: Client) -> int:
    if not args.input:
        raise errors.InvalidArgument("tug load reads a file: give -i FILE")
    params: dict[str, Any] = {"path": os.path.abspath(args.input)}
    if args.platform:
        params["platform"] = args.platform
    result = client.call("image.load", params)
    for item in result["images"]:
        if args.quiet:
            continue
        if item["repo_tags"]:
            for tag in item["repo_tags"]:
                print(f"Loaded image: {tag}")
        else:
            print(f"Loaded image ID: {item['id']}")
    return 0


def _cmd_tag(args: argparse.Namespace, client: Client) -> int:
    client.call("image.tag", {"source": args.source, "target": args.target})
    return 0


def _cmd_image_prune(args: argparse.Namespace, client: Client) -> int:
    result = client.call("image.prune", {"all": args.all})
    if args.format == "json":
        print(json_line(result))
        return 0
    if result["untagged"] or result["deleted"]:
        print("Deleted Images:")
        for name in result["untagged"]:
            print(f"untagged: {name}")
        for image_id in result["deleted"]:
            print(f"deleted: {image_id}")
        print()
    print(f"Total reclaimed space: {result['space_reclaimed']} B", file=sys.stdout)
    return 0


def parse_change(change: str, config: dict[str, Any]) -> None:
    """Apply one ``--change`` instruction (CMD, ENTRYPOINT, ENV, WORKDIR, USER) to an image
    config. Raises :class:`errors.InvalidArgument`."""
    word, _, rest = change.strip().partition(" ")
    instr, rest = word.upper(), rest.strip()
    if instr in ("CMD", "ENTRYPOINT"):
        key = "Cmd" if instr == "CMD" else "Entrypoint"
        value: Any = None
        if rest.startswith("["):
            try:
                value = json.loads(rest)
            except ValueError:
                value = None
            if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                value = None
        config[key] = value if value is not None else ["/bin/sh", "-c", rest]
    elif instr == "ENV":
        import shlex

        env = config.setdefault("Env", [])
        words = shlex.split(rest)
        if words and "=" in words[0]:
            for w in words:
                if "=" not in w or w.startswith("="):
                    raise errors.InvalidArgument(f"invalid --change {change!r}: {w!r} is not K=V")
                env.append(w)
        elif len(words) >= 2:
            env.append(f"{words[0]}={' '.join(words[1:])}")
        else:
            raise errors.InvalidArgument(f"invalid --change {change!r}: want ENV K=V")
    elif instr in ("WORKDIR", "USER"):
        if not rest:
            raise errors.InvalidArgument(f"invalid --change {change!r}: {instr} needs a value")
        config["WorkingDir" if instr == "WORKDIR" else "User"] = rest
    else:
        raise errors.InvalidArgument(
            f"invalid --change {change!r}: supported are CMD, ENTRYPOINT, ENV, WORKDIR and USER"
        )


def _cmd_import(args: argparse.Namespace, client: Client) -> int:
    source = args.file
    if source == "-" or "://" in source:
        raise errors.InvalidArgument("import reads a rootfs tar from a file path on this host")
    params: dict[str, Any] = {"path": os.path.abspath(source), "ref": args.ref}
    config: dict[str, Any] = {}
    for change in args.change:
        parse_change(change, config)
    if config:
        params["config"] = config
    result = client.call("image.import", params)
    print(result["id"])
    return 0


def _split_tag(name: str) -> tuple[str, str]:
    repo, sep, tag = name.rpartition(":")
    if not sep or "/" in tag:
        return name, "latest"
    return repo, tag


def _cmd_images(args: argparse.Namespace, client: Client) -> int:
    items = client.call("image.list", {"filters": filter_options(args.filter)})  # filtered by tugd
    if args.repository:
        want = _split_tag(args.repository) if ":" in args.repository else (args.repository, None)
        kept = []
        for item in items:
            tags = [_split_tag(t) for t in item.get("repo_tags") or []]
            if any(r == want[0] and (want[1] is None or t == want[1]) for r, t in tags):
                kept.append(item)
        items = kept
    if args.format == "json":
        for item in items:
            print(json_line(item))
        return 0
    items = sorted(items, key=lambda i: str(i.get("created") or ""), reverse=True)
    if args.format not in ("table", "json") and not args.quiet:
        from tugwire import dockershapes

        from . import dockerrows

        now = time.time()
        shaped = [
            row
            for item in items
            for row in dockerrows.image_rows(
                dockershapes.image_summary(item), trunc=not args.no_trunc, now=now
            )
        ]
        sys.stdout.write(dockerrows.render(args.format, shaped, dockerrows.IMAGES_HEADER))
        return 0
    if args.quiet:  # one line per name, as docker's rows (an image with two names: twice)
        for item in items:
            shown = item["id"] if args.no_trunc else short_id(item["id"])
            for _ in item.get("repo_tags") or [None]:
                print(shown)
        return 0
    now = time.time_ns()
    rows: list[list[str]] = []
    for item in items:
        shown = item["id"] if args.no_trunc else short_id(item["id"])
        created = ago(item.get("created"), now)
        size = human_size(float(item.get("size") or 0))
        tags = [_split_tag(t) for t in item.get("repo_tags") or []] or [("<none>", "<none>")]
        digests = dict(d.split("@", 1) for d in item.get("repo_digests") or [] if "@" in d)
        for repo, tag in tags:
            digest = [digests.get(repo, "<none>")] if args.digests else []
            rows.append([repo, tag, *digest, shown, created, size])
    headers = ["REPOSITORY", "TAG", *(["DIGEST"] if args.digests else []), "IMAGE ID", "CREATED", "SIZE"]
    print(table(headers, rows))
    return 0


def _cmd_rmi(args: argparse.Namespace, client: Client) -> int:
    params = [{"ref": r, "force": args.force} for r in args.images]
    results = client.call_many("image.remove", params)
    status = 0
    for ref, result in zip(args.images, results, strict=True):
        if isinstance(result, errors.TugError):
            print_error(result.message)
            status = 1
            continue
        removed = result.get("removed") if isinstance(result, dict) else result
        if not isinstance(removed, list):
            removed = [ref]
        for item in removed:
            word = "Deleted" if str(item).startswith("sha256:") else "Untagged"
            print(f"{word}: {item}", flush=True)
    return status


def _add_images_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("repository", nargs="?", help="only images of this repository[:tag]")
    p.add_argument("-q", "--quiet", action="store_true", help="only image ids")
    p.add_argument("--no-trunc", action="store_true", help="full image ids")
    p.add_argument(
        "--format",
        default="table",
        help="table, json (tugd's records), or a Go template: '{{.Repository}}:{{.Tag}}'",
    )
    p.add_argument(
        "-f",
        "--filter",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="reference, dangling, label, before, since (repeatable)",
    )
    p.add_argument("-a", "--all", action="store_true", help="all images (tugd keeps no intermediate ones)")
    p.add_argument("--digests", action="store_true", help="show digests")
    p.set_defaults(func=_cmd_images)


def _add_rmi_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--force", action="store_true", help="remove even if containers use it")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.set_defaults(func=_cmd_rmi)


def _add_import_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-c",
        "--change",
        action="append",
        default=[],
        help="CMD, ENTRYPOINT, ENV, WORKDIR or USER instruction for the image config",
    )
    p.add_argument("file", help="rootfs tar (optionally gzipped) on this host")
    p.add_argument("ref", metavar="NAME[:TAG]", help="the image's name")
    p.set_defaults(func=_cmd_import)


def _save_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", metavar="FILE", help="the archive to write (on tugd's host)")
    p.add_argument(
        "--format",
        choices=("docker-archive", "oci-archive", "docker", "oci"),
        default="docker-archive",
        help="docker-archive (as docker save, the default) or oci-archive",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.set_defaults(func=_cmd_save)


def _load_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-i", "--input", metavar="FILE", help="the archive to read (on tugd's host)")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing")
    p.add_argument("--platform", help="os/arch[/variant] to load from a multi-platform archive")
    p.set_defaults(func=_cmd_load)


def _tag_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="SOURCE_IMAGE")
    p.add_argument("target", metavar="TARGET_IMAGE[:TAG]")
    p.set_defaults(func=_cmd_tag)


def add_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Add import, images, rmi, image, save, load and tag through ``build_parser``'s ``add``."""
    _add_import_args(add("import", "import a rootfs tarball as an image"))
    _add_images_args(add("images", "list images"))
    _add_rmi_args(add("rmi", "remove images"))

    p = add("image", "manage images")
    image_sub = p.add_subparsers(dest="image_command", metavar="COMMAND", required=True, parser_class=Parser)
    _add_images_args(image_sub.add_parser("ls", aliases=["list"], help="list images"))
    _add_rmi_args(image_sub.add_parser("rm", aliases=["remove"], help="remove images"))
    add_inspect_args(image_sub.add_parser("inspect", help="show an image as JSON"), "image")
    _add_import_args(image_sub.add_parser("import", help="import a rootfs tarball"))
    _add_image_commands(image_sub)

    _save_args(add("save", "save images to an archive (docker-archive or OCI)"))
    _load_args(add("load", "load images from an archive"))
    _tag_args(add("tag", "give an image another name"))


def _add_image_commands(image_sub: Any) -> None:
    """Add ``prune``, ``save``, ``load`` and ``tag`` under ``tug image``."""
    p = image_sub.add_parser("prune", help="remove unused images and free their data")
    p.add_argument("-a", "--all", action="store_true", help="every image no container uses")
    p.add_argument("-f", "--force", action="store_true", help="do not ask for confirmation")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(func=_cmd_image_prune)
    _save_args(image_sub.add_parser("save", help="save images to an archive"))
    _load_args(image_sub.add_parser("load", help="load images from an archive"))
    _tag_args(image_sub.add_parser("tag", help="give an image another name"))
