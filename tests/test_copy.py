"""``cp``: supervisor/copy.py and tugwire/tarcopy.py on plain directories (paths resolved inside
a root, links never followed out of it, an archive unpacked all or nothing, docker's refusals),
then ``container.archive_get``/``archive_put`` and ``tug cp`` with a real tugd, on both anyio
backends: big files byte-exact both ways, tars on stdin and stdout, a client that leaves
mid-upload."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from supervisor import copy
from tugwire import errors, frames, tarcopy
from tugwire.syncclient import Client

from .conftest import needs_root, needs_runc
from .helpers import start
from .waiting import wait_output, wait_until


def _root(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "f").write_text("inside\n")
    outside.mkdir()
    (outside / "f").write_text("outside\n")
    os.symlink(str(outside), root / "abs")  # an absolute link: /<outside> inside the root
    os.symlink("../../../../../../../" + str(outside).lstrip("/"), root / "rel")
    os.symlink("/etc", root / "etclink")
    return root, outside


def _resolve(root: Path, path: str, follow_last: bool = False) -> tuple[str, str]:
    rfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        dfd, name = copy.resolve_in_root(rfd, path, follow_last=follow_last)
    finally:
        os.close(rfd)
    try:
        return os.readlink(f"/proc/self/fd/{dfd}"), name
    finally:
        os.close(dfd)


def test_links_resolve_inside_the_root(tmp_path: Path) -> None:
    root, _outside = _root(tmp_path)
    assert _resolve(root, "/etclink/f") == (str(root / "etc"), "f")
    assert _resolve(root, "/../../etc/f") == (str(root / "etc"), "f")
    # the outside directory named through links is looked for inside the root: not there
    with pytest.raises(errors.NotFound):
        _resolve(root, "/abs/f")
    with pytest.raises(errors.NotFound):
        _resolve(root, "/rel/f")
    # a last component that is a link is not followed unless asked
    assert _resolve(root, "/etclink") == (str(root), "etclink")
    assert _resolve(root, "/etclink", follow_last=True) == (str(root), "etc")


def test_a_link_loop_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    os.symlink("/b", root / "a")
    os.symlink("/a", root / "b")
    with pytest.raises(errors.InvalidArgument, match="too many levels"):
        _resolve(root, "/a/x")


def _tar_of(root: Path, path: str) -> bytes:
    rfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    out = io.BytesIO()
    try:
        dfd, name, arcname = copy.open_source(rfd, path)
        try:
            tarcopy.write_tree(dfd, name, arcname, out.write)
        finally:
            os.close(dfd)
    finally:
        os.close(rfd)
    return out.getvalue()


def _extract(dest: Path, data: bytes, **kw: Any) -> tarcopy.Result:
    dfd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return tarcopy.extract(dfd, io.BytesIO(data), owners=os.geteuid() == 0, **kw)
    finally:
        os.close(dfd)


def _listing(top: Path) -> list[str]:
    return sorted(str(p.relative_to(top)) for p in top.rglob("*"))


def test_tar_out_keeps_links_as_links_and_stays_in_the_destination(tmp_path: Path) -> None:
    root, outside = _root(tmp_path)
    (root / "etc" / "evil").symlink_to(str(outside))
    dest = tmp_path / "dest"
    dest.mkdir()
    result = _extract(dest, _tar_of(root, "/etclink/."), top="etc2", contents=True)
    assert result.files == 1 and result.links == 1
    _extract(dest, _tar_of(root, "/etc"))
    for d in ("etc", "etc2"):
        assert (dest / d / "f").read_text() == "inside\n"
        assert os.readlink(dest / d / "evil") == str(outside)
    assert (outside / "f").read_text() == "outside\n"
    assert not [n for n in os.listdir(dest) if n.startswith(tarcopy.TEMP_PREFIX)]


def test_stat_path_of_a_link_and_a_missing_path(tmp_path: Path) -> None:
    root, _outside = _root(tmp_path)
    rfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        st = copy.stat_path(rfd, "/etclink")
        assert st["name"] == "etclink" and st["link_target"] == "/etc" and st["mode"] & 0o170000 == 0o120000
        assert copy.stat_path(rfd, "/etclink/f")["size"] == len("inside\n")
        with pytest.raises(errors.NotFound):
            copy.stat_path(rfd, "/abs/f")
    finally:
        os.close(rfd)


def _member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", link: str = "") -> tuple[Any, ...]:
    return name, kind, data, link


def _make_tar(*members: tuple[Any, ...]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, data, link in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = link
            info.size = len(data)
            info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
            tar.addfile(info, io.BytesIO(data) if data else None)
    return out.getvalue()


BAD = {
    "dotdot": _make_tar(_member("ok"), _member("../escape", data=b"x")),
    "absolute": _make_tar(_member("ok"), _member("/etc/escape", data=b"x")),
    "dotdot-inside": _make_tar(_member("ok"), _member("a/../../escape", data=b"x")),
    "through-a-symlink": _make_tar(
        _member("ok"), _member("l", tarfile.SYMTYPE, link="/"), _member("l/escape", data=b"x")
    ),
    "hardlink-out": _make_tar(_member("ok"), _member("h", tarfile.LNKTYPE, link="../../etc/passwd")),
    "char-device": _make_tar(_member("ok"), _member("null", tarfile.CHRTYPE)),
    "block-device": _make_tar(_member("ok"), _member("sda", tarfile.BLKTYPE)),
    "truncated": _make_tar(_member("ok"), _member("big", data=b"y" * 100_000))[:20_000],
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_archive_is_refused_whole_and_changes_nothing(tmp_path: Path, case: str) -> None:
    dest = tmp_path / "dest"
    (dest / "keep").mkdir(parents=True)
    (dest / "ok").write_text("old\n")
    before = _listing(dest)
    with pytest.raises(errors.InvalidArgument):
        _extract(dest, BAD[case])
    assert _listing(dest) == before
    assert (dest / "ok").read_text() == "old\n"
    assert not (tmp_path / "escape").exists()


def test_links_pointing_out_stay_links_and_a_dangling_hard_link_is_refused(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    _extract(dest, _make_tar(_member("l", tarfile.SYMTYPE, link="../../../etc")))
    assert os.readlink(dest / "l") == "../../../etc"
    with pytest.raises(errors.InvalidArgument, match="does not hold"):
        _extract(dest, _make_tar(_member("h", tarfile.LNKTYPE, link="f")))
    assert os.listdir(dest) == ["l"]


def test_extract_merges_into_directories_and_never_replaces_one_by_a_file(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    (dest / "d").mkdir(parents=True)
    (dest / "d" / "old").write_text("old\n")
    (dest / "f").write_text("file\n")
    _extract(
        dest,
        _make_tar(_member("d", tarfile.DIRTYPE), _member("d/new", data=b"new\n"), _member("f", data=b"F\n")),
    )
    assert (dest / "d" / "old").read_text() == "old\n" and (dest / "d" / "new").read_text() == "new\n"
    assert (dest / "f").read_text() == "F\n"
    before = _listing(dest)
    with pytest.raises(errors.FailedPrecondition):
        _extract(dest, _make_tar(_member("zz", data=b"z"), _member("d", data=b"not a dir")))
    assert _listing(dest) == before


def test_a_source_that_fails_midway_changes_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    data = _make_tar(_member("a", data=b"a" * (3 << 20)), _member("b", data=b"b"))

    class Cut(io.BytesIO):
        def read(self, n: int | None = -1) -> bytes:
            if self.tell() > 1 << 20:
                raise ConnectionResetError("the client left")
            return super().read(n)

    dfd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(ConnectionResetError):
            tarcopy.extract(dfd, Cut(data), owners=False)
    finally:
        os.close(dfd)
    assert os.listdir(dest) == []


# ------------------------------------------------------------------------------- with tugd


def _sha(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _ls(d: Any, cid: str, path: str) -> list[str]:
    out = d.tug("exec", cid, "ls", "-a", path).stdout.decode().split()
    return sorted(n for n in out if n not in (".", ".."))


@needs_root
@needs_runc
def test_cp_64_mib_both_ways_byte_exact(make_daemon: Any, backend: str, tmp_path: Path) -> None:
    d = make_daemon(backend=backend)
    cid = start(d, ["sh", "-c", "mkdir -p /dest && echo ready && sleep 1000"])
    wait_output(d, cid, b"ready")
    big = tmp_path / "big"
    with open(big, "wb") as f:
        for _ in range(64):
            f.write(os.urandom(1 << 20))
    want = _sha(str(big))
    d.tug("cp", str(big), f"{cid}:/dest/")
    assert d.call("container.stat_path", {"id": cid, "path": "/dest/big"})["size"] == 64 << 20
    d.tug("cp", f"{cid}:/dest/big", str(tmp_path / "back"))
    assert _sha(str(tmp_path / "back")) == want
    # '-': a tar on stdout, and one on stdin
    tar = d.tug("cp", f"{cid}:/dest/big", "-").stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        m = t.getmember("big")
        got = t.extractfile(m)
        assert got is not None and hashlib.sha256(got.read()).hexdigest() == want
    d.tug(
        "cp",
        "-",
        f"{cid}:/dest",
        input=_make_tar(_member("sub", tarfile.DIRTYPE), _member("sub/x", data=b"x\n")),
    )
    assert d.tug("exec", cid, "cat", "/dest/sub/x").stdout == b"x\n"
    # a directory's contents under a new name, both ways
    d.tug("cp", f"{cid}:/dest/.", str(tmp_path / "copy"))
    assert sorted(os.listdir(tmp_path / "copy")) == ["big", "sub"]
    d.tug("cp", str(tmp_path / "copy") + "/.", f"{cid}:/again")
    assert _ls(d, cid, "/again") == ["big", "sub"]
    # a bad archive on stdin: refused whole, nothing changed
    res = d.tug("cp", "-", f"{cid}:/dest", input=BAD["through-a-symlink"], check=False)
    assert res.returncode != 0 and b"link of the archive" in res.stderr
    assert _ls(d, cid, "/dest") == ["big", "sub"]


@needs_root
@needs_runc
def test_a_client_that_leaves_mid_upload_leaves_nothing(make_daemon: Any, backend: str) -> None:
    d = make_daemon(backend=backend)
    cid = start(d, ["sh", "-c", "mkdir -p /dest && echo ready && sleep 1000"])
    wait_output(d, cid, b"ready")
    body = _make_tar(_member("a", data=b"a" * (8 << 20)), _member("b", data=b"b"))
    for cut in (len(body) // 2, len(body)):  # mid-file, and all but the closing empty frame
        with Client(d.socket) as client:
            s = client.raw_stream("container.archive_put", {"id": cid, "path": "/dest"})
            s.send(frames.STDIN, body[:cut])
            s._sock.shutdown(socket.SHUT_RDWR)
            s.close()
        wait_until(lambda: _ls(d, cid, "/dest") == [], 30, "the upload's temporary directory to go")
    # tugd is fine, and a whole upload works
    with Client(d.socket) as client:
        s = client.raw_stream("container.archive_put", {"id": cid, "path": "/dest"})
        s.send(frames.STDIN, body)
        s.send(frames.STDIN, b"")
        assert list(s) == [] and s.result["files"] == 2
    assert _ls(d, cid, "/dest") == ["a", "b"]
    # a missing destination is the call's own error, before any switch
    with Client(d.socket) as client, pytest.raises(errors.NotFound):
        client.raw_stream("container.archive_put", {"id": cid, "path": "/nope"})
    with Client(d.socket) as client, pytest.raises(errors.InvalidParams):
        client.call("container.archive_get", {"id": cid, "path": "/dest"})
    assert subprocess.run(["true"]).returncode == 0
