"""``docker diff``'s walk (supervisor/changes.py) on overlay-shaped directories: whiteouts, copied-up
directories, the runtime's mount points, a whiteout in a lower layer."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from supervisor.changes import ADDED, DELETED, MODIFIED, Change, changes

from .conftest import needs_root

pytestmark = [needs_root]  # whiteouts are 0/0 character devices: mknod


def _whiteout(path: str) -> None:
    os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(0, 0))


def test_changes_against_the_layers(tmp_path: Path) -> None:
    base = str(tmp_path)
    top, bottom, upper = (os.path.join(base, n) for n in ("top", "bottom", "upper"))
    for d in ("bottom/etc", "bottom/same", "bottom/usr/lib", "top/opt"):
        os.makedirs(os.path.join(base, d))
    for f in ("bottom/etc/passwd", "bottom/usr/lib/x", "bottom/gone", "top/opt/tool"):
        with open(os.path.join(base, f), "w") as fh:
            fh.write("old\n")
    _whiteout(os.path.join(top, "gone"))  # deleted by the top layer: absent below the container
    os.makedirs(os.path.join(upper, "usr", "lib"))
    shutil.copystat(os.path.join(bottom, "usr"), os.path.join(upper, "usr"))  # copied up, unchanged
    with open(os.path.join(upper, "usr", "lib", "new"), "w") as fh:
        fh.write("new\n")
    os.makedirs(os.path.join(upper, "same"))
    _whiteout(os.path.join(upper, "same", "nothing"))  # a whiteout inside: a deletion
    shutil.copystat(os.path.join(bottom, "same"), os.path.join(upper, "same"))  # its mtime as below
    with open(os.path.join(upper, "gone"), "w") as fh:  # re-created after the layer deleted it
        fh.write("again\n")
    _whiteout(os.path.join(upper, "opt"))  # a whole directory of the top layer deleted
    # the runtime's mount points: left out, and /etc is no change for them alone
    os.makedirs(os.path.join(upper, "etc"))
    for name in ("hosts", "hostname", "resolv.conf"):
        open(os.path.join(upper, "etc", name), "w").close()
    os.makedirs(os.path.join(upper, "proc"))
    os.makedirs(os.path.join(upper, "dev", "pts"))
    found = changes(upper, [top, bottom])
    assert found == [
        Change("/gone", ADDED),
        Change("/opt", DELETED),
        Change("/same/nothing", DELETED),
        Change("/usr/lib", MODIFIED),
        Change("/usr/lib/new", ADDED),
    ]
    # something else in /etc: then /etc is changed too
    with open(os.path.join(upper, "etc", "passwd"), "w") as fh:
        fh.write("changed\n")
    assert [c for c in changes(upper, [top, bottom]) if c.path.startswith("/etc")] == [
        Change("/etc", MODIFIED),
        Change("/etc/passwd", MODIFIED),
    ]
