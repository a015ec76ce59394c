"""supervisor/copy.py on plain directories: paths resolved inside a root, links never followed
out of it, nothing written outside the destination."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from supervisor import copy
from tugwire import errors


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


def test_copy_out_keeps_links_as_links_and_stays_in_the_destination(tmp_path: Path) -> None:
    root, outside = _root(tmp_path)
    (root / "etc" / "evil").symlink_to(str(outside))
    dest = tmp_path / "dest"
    dest.mkdir()
    rfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    dfd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    try:
        sdir, sname = copy.resolve_in_root(rfd, "/etc", follow_last=False)
        result = copy.copy(sdir, sname, dfd, "", contents=False, label="/etc")
        os.close(sdir)
    finally:
        os.close(rfd)
        os.close(dfd)
    assert result.files == 1 and result.links == 1 and result.dirs == 1
    assert (dest / "etc" / "f").read_text() == "inside\n"
    assert os.readlink(dest / "etc" / "evil") == str(outside)
    assert (outside / "f").read_text() == "outside\n"


def test_copy_in_through_a_link_in_the_destination_stays_inside(tmp_path: Path) -> None:
    root, outside = _root(tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("new\n")
    rfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    sfd = os.open(src, os.O_RDONLY | os.O_DIRECTORY)
    try:
        # /abs is a link to the outside directory's path: inside the root that path does not exist
        with pytest.raises(errors.NotFound):
            copy.resolve_in_root(rfd, "/abs/sub/f", follow_last=True)
        ddir, dname = copy.resolve_in_root(rfd, "/etclink", follow_last=True)
        copy.copy(sfd, "f", ddir, dname, contents=False, label="f")
        os.close(ddir)
        # a file named like an existing link is replaced, the link's target is untouched
        (root / "etc" / "g").symlink_to(str(outside / "f"))
        ddir, dname = copy.resolve_in_root(rfd, "/etc/g", follow_last=False)
        copy.copy(sfd, "f", ddir, dname, contents=False, label="f")
        os.close(ddir)
    finally:
        os.close(rfd)
        os.close(sfd)
    assert (root / "etc" / "f").read_text() == "new\n"
    assert (root / "etc" / "g").read_text() == "new\n" and not (root / "etc" / "g").is_symlink()
    assert (outside / "f").read_text() == "outside\n"
