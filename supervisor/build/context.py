"""The build context as COPY and ADD see it: sources (globs expanded, ``.dockerignore`` applied,
nothing outside the context), the hash of what they would copy (the build cache's key), and the
copy into a layer directory."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import tarfile

from tugwire import fsutil

from . import layers
from .dockerfile import DockerfileError, Instruction
from .dockerignore import DockerIgnore, compile_pattern

_GLOB = re.compile(r"[*?\[]")


class BuildContext:
    """The context directory of one build and its ``.dockerignore``; or, ``rootfs``, the root
    of a stage or image that ``COPY --from`` reads, where a link on a source's path is followed
    inside that root (``/lib -> /usr/lib`` means the root's), as docker does."""

    def __init__(self, context: str, ignore: DockerIgnore, *, rootfs: bool = False) -> None:
        self.context = context
        self.ignore = ignore
        self.rootfs = rootfs

    def __repr__(self) -> str:
        return f"<BuildContext {self.context}>"

    def sources(self, inst: Instruction, patterns: list[str]) -> list[tuple[str, str]]:
        """(relative path in the context, absolute path) of every source, globs expanded,
        ``.dockerignore`` applied; a source that matches nothing is an error."""
        context = self.context
        out: list[tuple[str, str]] = []
        for pattern in patterns:
            if "://" in pattern:
                raise DockerfileError(
                    f"{inst.keyword} of a URL ({pattern}) is not supported: download it into the context "
                    "and COPY it",
                    inst.line,
                )
            cleaned = os.path.normpath(pattern)
            if cleaned == ".." or cleaned.startswith("../"):
                raise DockerfileError(f"forbidden path outside the build context: {pattern}", inst.line)
            rel = os.path.normpath("/" + pattern).lstrip("/")
            if _GLOB.search(rel):
                regex = compile_pattern(rel)
                matches = [(r, p) for r, p in self.walk() if regex.match(r)]
                if not matches:
                    raise DockerfileError(
                        f"{inst.keyword} failed: no source files were specified ({pattern})", inst.line
                    )
                # A directory and files inside it may both match: keep the top-most.
                kept: list[tuple[str, str]] = []
                for r, p in matches:
                    if not any(r.startswith(k + "/") for k, _ in kept):
                        kept.append((r, p))
                out.extend(kept)
                continue
            path = os.path.join(context, rel) if rel and rel != "." else context
            if self.rootfs and rel not in ("", "."):
                parent, name = os.path.split(rel)
                path = os.path.join(in_root(context, parent), name)
            if path != context and not _inside(os.path.realpath(os.path.dirname(path)), context):
                # A symlink on the way (``COPY link/file``, link -> /etc) would read the host.
                raise DockerfileError(f"forbidden path outside the build context: {pattern}", inst.line)
            if not os.path.lexists(path) or (rel not in ("", ".") and self.ignore.excluded(rel)):
                raise DockerfileError(
                    f"{inst.keyword} failed: file not found in build context or excluded by .dockerignore: "
                    f"{pattern}",
                    inst.line,
                )
            out.append(("" if rel == "." else rel, path))
        return out

    def walk(self, rel: str = "") -> list[tuple[str, str]]:
        base = os.path.join(self.context, rel) if rel else self.context
        out: list[tuple[str, str]] = []
        with os.scandir(base) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            child = f"{rel}/{entry.name}" if rel else entry.name
            is_dir = entry.is_dir(follow_symlinks=False)
            if is_dir and self.ignore.skip_dir(child):
                continue
            if not self.ignore.excluded(child):
                out.append((child, entry.path))
            if is_dir:
                out.extend(self.walk(child))
        return out

    def tree(self, rel: str, path: str) -> list[tuple[str, str, os.stat_result]]:
        """(path below the source, absolute path, lstat) of a source and everything in it that
        .dockerignore does not exclude; the source itself as ``""``."""
        st = os.lstat(path)
        out = [("", path, st)]
        if not stat.S_ISDIR(st.st_mode):
            return out
        stack = [("", path)]
        while stack:
            sub, directory = stack.pop()
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
            for entry in entries:
                below = f"{sub}/{entry.name}" if sub else entry.name
                in_context = f"{rel}/{below}" if rel else below
                est = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(est.st_mode) and self.ignore.skip_dir(in_context):
                    continue
                if self.ignore.excluded(in_context):
                    if stat.S_ISDIR(est.st_mode):
                        stack.append((below, entry.path))  # a ! pattern may bring back a child
                    continue
                out.append((below, entry.path, est))
                if stat.S_ISDIR(est.st_mode):
                    stack.append((below, entry.path))
        return out

    def content_hash(self, sources: list[tuple[str, str]]) -> str:
        """A hash of what COPY/ADD would copy: names, types, modes, link targets and bytes (not
        times, as docker)."""
        h = hashlib.sha256()
        for rel, path in sources:
            h.update(f"source {rel}\0".encode())
            for below, full, st in self.tree(rel, path):
                h.update(f"{below}\0{stat.S_IFMT(st.st_mode)}\0{stat.S_IMODE(st.st_mode)}\0".encode())
                if stat.S_ISLNK(st.st_mode):
                    h.update(os.readlink(full).encode() + b"\0")
                elif stat.S_ISREG(st.st_mode):
                    with open(full, "rb") as f:
                        while chunk := f.read(1 << 20):
                            h.update(chunk)
                    h.update(b"\0")
        return h.hexdigest()

    def copy_all(
        self,
        inst: Instruction,
        sources: list[tuple[str, str]],
        dest: str,
        is_dir_dest: bool,
        layer_dir: str,
        lowers: list[str],
        uid: int,
        gid: int,
        chmod: int | None,
    ) -> None:
        """Copy ``sources`` to ``dest`` in ``layer_dir`` (ADD unpacks archives), parents made as
        the image below has them, owned ``uid:gid``, modes kept unless ``chmod``."""
        for rel, path in sources:
            st = os.lstat(path)
            if stat.S_ISDIR(st.st_mode):
                target = dest
            elif is_dir_dest or _lower_is_dir(lowers, dest):
                target = os.path.join(dest, os.path.basename(path))
            else:
                target = dest
            if inst.keyword == "ADD" and stat.S_ISREG(st.st_mode) and _is_archive(path):
                target_dir = os.path.join(layer_dir, dest.lstrip("/"))
                _make_parents(layer_dir, dest + "/x", lowers)
                os.makedirs(target_dir, exist_ok=True)
                layers.tar_to_dir(path, target_dir)
                continue
            # A directory's contents are copied, not the directory itself: the destination dir
            # keeps what the image below has (else root, 0755), as its parents do.
            _make_parents(layer_dir, target + "/x" if stat.S_ISDIR(st.st_mode) else target, lowers)
            for below, full, est in self.tree(rel, path):
                if not below and stat.S_ISDIR(st.st_mode):
                    continue
                _copy_entry(
                    full, os.path.join(layer_dir, target.lstrip("/"), below).rstrip("/"), est, uid, gid, chmod
                )
            # Directories' times last: creating entries in them changed their mtime.
            for below, _full, est in reversed(self.tree(rel, path)):
                if stat.S_ISDIR(est.st_mode) and below:
                    out = os.path.join(layer_dir, target.lstrip("/"), below)
                    if os.path.isdir(out):
                        os.utime(out, ns=(est.st_atime_ns, est.st_mtime_ns), follow_symlinks=False)


def in_root(root: str, rel: str, max_links: int = 40) -> str:
    """The path of ``rel`` inside ``root`` with every link on the way followed as if ``root``
    were ``/`` (an absolute target starts again at ``root``, ``..`` stops at it): never a path
    outside ``root``. A path that does not exist is returned as far as it resolved."""
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    done: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        candidate = os.path.join(root, *done, part)
        if os.path.islink(candidate):
            links += 1
            if links > max_links:
                raise DockerfileError(f"too many levels of symbolic links in {rel}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                done = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        done.append(part)
    return os.path.join(root, *done)


def _inside(path: str, root: str) -> bool:
    root = os.path.realpath(root)
    return path == root or path.startswith(root.rstrip("/") + "/")


def _lower_is_dir(lowers: list[str], path: str) -> bool:
    rel = path.lstrip("/")
    for lower in lowers:
        p = os.path.join(lower, rel)
        if os.path.lexists(p):
            st = os.lstat(p)
            if layers.is_whiteout(st):
                return False
            return stat.S_ISDIR(st.st_mode)
    return False


def _make_parents(layer_dir: str, target: str, lowers: list[str]) -> None:
    """Create the directories above ``target`` in the layer, each with the owner, mode and time
    it has in the image below (else root, 0755), so that the layer does not change them."""
    parts = [p for p in target.strip("/").split("/")[:-1] if p]
    cur = ""
    for part in parts:
        cur = f"{cur}/{part}" if cur else part
        path = os.path.join(layer_dir, cur)
        if os.path.isdir(path):
            continue
        os.mkdir(path, 0o755)
        for lower in lowers:
            existing = os.path.join(lower, cur)
            if os.path.lexists(existing):
                est = os.lstat(existing)
                if stat.S_ISDIR(est.st_mode):
                    os.chown(path, est.st_uid, est.st_gid)
                    os.chmod(path, stat.S_IMODE(est.st_mode))
                    os.utime(path, ns=(est.st_atime_ns, est.st_mtime_ns))
                break


def _copy_entry(src: str, out: str, st: os.stat_result, uid: int, gid: int, chmod: int | None) -> None:
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISDIR(st.st_mode):
        if not os.path.isdir(out) or os.path.islink(out):
            fsutil.remove_path(out)
            os.mkdir(out, 0o700)
        os.chown(out, uid, gid)
        os.chmod(out, mode if chmod is None else chmod)
        return
    fsutil.remove_path(out)
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(src), out)
        os.lchown(out, uid, gid)
    elif stat.S_ISREG(st.st_mode):
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with open(src, "rb") as fin, os.fdopen(fd, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
            os.fchown(fout.fileno(), uid, gid)
            os.fchmod(fout.fileno(), mode if chmod is None else chmod)
    elif stat.S_ISFIFO(st.st_mode):
        os.mkfifo(out, mode)
        os.chown(out, uid, gid)
    else:
        return  # sockets and devices are not copied from a context
    os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def _is_archive(path: str) -> bool:
    """Whether ADD unpacks the file: a tar, plain or compressed (gzip, bzip2, xz)."""
    try:
        with tarfile.open(path, "r:*") as tf:
            return tf.next() is not None
    except (tarfile.TarError, OSError, EOFError):
        return False
