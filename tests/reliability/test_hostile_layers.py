"""Hostile image layers: entries with ``..``, absolute paths, symlink-then-write and hard-link
escapes, device nodes, setuid files and tar bombs. Each is refused (with a clear error and nothing
left behind) or neutralised (devices are skipped), and nothing is ever written outside the
layer's own root. Through tugd's ``image.import`` where it matters, and through
``supervisor.images.unpack_tar`` for the limits (small ones, so the test stays small)."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from collections.abc import Callable
from typing import Any

import pytest

from supervisor import images
from tugwire import errors

from ..conftest import needs_root, needs_runc
from ..helpers import output, run

pytestmark = [pytest.mark.reliability]


def integration(fn: Any) -> Any:
    """Marks a test that runs a real tugd."""
    return pytest.mark.integration(needs_root(needs_runc(fn)))


Add = Callable[[tarfile.TarFile], None]


def _file(name: str, data: bytes = b"pwned\n", mode: int = 0o644) -> Add:
    def add(tf: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = mode
        tf.addfile(info, io.BytesIO(data))

    return add


def _link(name: str, target: str, kind: bytes) -> Add:
    def add(tf: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = target
        tf.addfile(info)

    return add


def _dir(name: str) -> Add:
    def add(tf: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        tf.addfile(info)

    return add


def _device(name: str, kind: bytes, major: int, minor: int) -> Add:
    def add(tf: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.devmajor, info.devminor = major, minor
        info.mode = 0o666
        tf.addfile(info)

    return add


def make_tar(path: str, *entries: Add, gz: bool = False) -> str:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for add in entries:
            add(tf)
    data = raw.getvalue()
    with open(path, "wb") as f:
        f.write(gzip.compress(data, compresslevel=1) if gz else data)
    return path


def tree(path: str) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(path):
        found += [os.path.join(dirpath, n) for n in dirnames + filenames]
    return sorted(found)


@integration
def test_escaping_layers_are_refused_and_leave_nothing(daemon: Any, tmp_path: Any) -> None:
    outside = str(tmp_path / "outside")
    os.mkdir(outside)
    up = "../" * 40  # more than enough to climb from any snapshot dir to /
    hostile: dict[str, tuple[list[Add], str]] = {
        "dotdot": ([_file("etc/ok"), _file(f"{up}{outside[1:]}/pwned")], "escapes the root"),
        "dotdot-middle": ([_file(f"etc/{up}{outside[1:]}/pwned")], "escapes the root"),
        "absolute": ([_file(f"{outside}/pwned")], "absolute path"),
        "symlink-then-write": (
            [_link("link", outside, tarfile.SYMTYPE), _file("link/pwned")],
            "goes through the symlink",
        ),
        "relative-symlink-then-write": (
            [_link("up", up.rstrip("/"), tarfile.SYMTYPE), _file(f"up/{outside[1:]}/pwned")],
            "goes through the symlink",
        ),
        "symlink-dir-then-dir": (
            [_link("d", outside, tarfile.SYMTYPE), _dir("d/sub"), _file("d/sub/pwned")],
            "goes through the symlink",
        ),
        "hardlink-absolute": ([_link("hl", "/etc/passwd", tarfile.LNKTYPE)], "absolute path"),
        "hardlink-dotdot": ([_link("hl", f"{up}etc/passwd", tarfile.LNKTYPE)], "escapes the root"),
        "hardlink-to-symlink": (
            [_link("s", "/etc/passwd", tarfile.SYMTYPE), _link("hl", "s", tarfile.LNKTYPE)],
            "not a regular file",
        ),
        "hardlink-to-nothing": ([_link("hl", "missing", tarfile.LNKTYPE)], "not a file of this image"),
        "whiteout-of-parent": ([_file("etc/.wh..")], "whiteout of nothing"),
    }
    images_before = daemon.call("image.list", {})
    snapshots = os.path.join(daemon.root, "snapshots")
    snapshots_before = sorted(os.listdir(snapshots))
    for name, (entries, message) in hostile.items():
        path = make_tar(str(tmp_path / f"{name}.tar"), *entries, gz=name.startswith("dotdot"))
        with pytest.raises(errors.InvalidArgument, match=message):
            daemon.call("image.import", {"path": path, "ref": f"hostile-{name}"})
        assert os.listdir(outside) == [], name  # nothing written outside
        assert sorted(os.listdir(snapshots)) == snapshots_before, name  # no half-unpacked layer
    assert daemon.call("image.list", {}) == images_before
    with open("/etc/passwd", "rb") as f:
        assert b"pwned" not in f.read()


@integration
def test_devices_are_skipped_and_setuid_kept(daemon: Any, tmp_path: Any, busybox_tar: str) -> None:
    """A layer on top of busybox with device nodes (skipped: a container gets the devices its
    runtime gives it, never an image's) and a setuid file (kept, as docker keeps it; under
    no-new-privileges it grants nothing)."""
    with tarfile.open(busybox_tar) as src:
        members = [(m, src.extractfile(m).read() if m.isreg() else None) for m in src.getmembers()]  # type: ignore[union-attr]
    path = str(tmp_path / "devices.tar")
    with tarfile.open(path, "w") as tf:
        for m, data in members:
            tf.addfile(m, io.BytesIO(data) if data is not None else None)
        for add in (
            _device("evil-disk", tarfile.BLKTYPE, 8, 0),
            _device("evil-mem", tarfile.CHRTYPE, 1, 1),
            _device("dev/evil-kmsg", tarfile.CHRTYPE, 1, 11),
            _file("suid", b"#!/bin/sh\nid -u\n", mode=0o4755),
        ):
            add(tf)
    daemon.call("image.import", {"path": path, "ref": "devices"})
    script = (
        "for f in /evil-disk /evil-mem; do test -e $f && echo present $f; done;"
        "stat -c 'suid %a %u' /suid; echo done"
    )
    cid, result = run(daemon, ["sh", "-c", script], image="devices")
    out, err = output(daemon, cid)
    assert result["exit_code"] == 0, err
    assert b"present" not in out
    assert b"suid 4755 0\n" in out
    assert out.endswith(b"done\n")


def test_tar_bombs_are_refused(tmp_path: Any) -> None:
    """Too many bytes (a gzip bomb: 64 MiB of zeros in a few KiB) or too many entries: refused
    before the file over the limit is written."""
    zeros = tarfile.TarInfo("zeros")
    zeros.size = 64 << 20

    class Zeros(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, b: Any) -> int:
            b[:] = bytes(len(b))
            return len(b)

    raw = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1) as gz,
        tarfile.open(fileobj=gz, mode="w") as tf,
    ):
        tf.addfile(_small := tarfile.TarInfo("small"), io.BytesIO(b""))
        tf.addfile(zeros, io.BufferedReader(Zeros()))
    assert _small.size == 0
    assert raw.tell() < 1 << 20
    root = tmp_path / "bytes"
    root.mkdir()
    raw.seek(0)
    with pytest.raises(images.UnsafeLayer, match="more than 16777216 bytes"):
        images.unpack_tar(raw, str(root), max_bytes=16 << 20)
    assert not (root / "zeros").exists()

    many = io.BytesIO()
    with tarfile.open(fileobj=many, mode="w") as tf:
        for i in range(1000):
            tf.addfile(tarfile.TarInfo(f"f{i}"), io.BytesIO(b""))
    many.seek(0)
    root = tmp_path / "entries"
    root.mkdir()
    with pytest.raises(images.UnsafeLayer, match="more than 100 entries"):
        images.unpack_tar(many, str(root), max_entries=100)
    assert len(os.listdir(root)) == 100
    # The defaults are real bounds, not unlimited.
    assert images.MAX_LAYER_BYTES <= 64 << 30 and images.MAX_LAYER_ENTRIES <= 2_000_000


def test_unpack_never_writes_outside_its_root(tmp_path: Any) -> None:
    """The same escapes straight through unpack_tar, into a root next to a sentinel dir."""
    outside = tmp_path / "outside"
    outside.mkdir()
    for i, entries in enumerate(
        [
            [_file("../outside/pwned")],
            [_link("l", str(outside), tarfile.SYMTYPE), _file("l/pwned")],
            [_link("l", "../outside", tarfile.SYMTYPE), _file("l/pwned")],
            [_link("hl", str(outside / "x"), tarfile.LNKTYPE)],
        ]
    ):
        root = tmp_path / f"root{i}"
        root.mkdir()
        path = make_tar(str(tmp_path / f"t{i}.tar"), *entries)
        with open(path, "rb") as f, pytest.raises(images.UnsafeLayer):
            images.unpack_tar(f, str(root))
        assert tree(str(outside)) == []
