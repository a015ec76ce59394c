"""Make a busybox root filesystem tarball from the host's busybox-static (no internet needed).

Usage: make_busybox_rootfs.py OUT.tar [--busybox /bin/busybox]

The tar holds /bin/busybox, a symlink per applet it lists, /etc/passwd and /etc/group (root,
nobody, and a `tug` user 1000 for tests of `-u NAME`), and the usual empty directories.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tarfile
import time

DIRS = ["bin", "dev", "etc", "home", "proc", "root", "sys", "tmp", "usr", "usr/bin", "var", "var/tmp"]
PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "tug:x:1000:1000:tug:/home/tug:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
)
GROUP = "root:x:0:\ntug:x:1000:\nnogroup:x:65534:\n"


def build(out: str, busybox: str) -> None:
    applets = subprocess.run([busybox, "--list"], check=True, capture_output=True, text=True).stdout.split()
    now = int(time.time())
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tf:
        for d in DIRS:
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if d in ("tmp", "var/tmp") else 0o755
            info.mtime = now
            tf.addfile(info)
        info = tf.gettarinfo(busybox, "bin/busybox")
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        with open(busybox, "rb") as f:
            tf.addfile(info, f)
        for applet in applets:
            if applet == "busybox":
                continue
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            link.mode = 0o777
            link.mtime = now
            tf.addfile(link)
        for name, text in (("etc/passwd", PASSWD), ("etc/group", GROUP)):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = now
            tf.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("home/tug")
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        info.uid = info.gid = 1000
        tf.addfile(info)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--busybox", default="/bin/busybox")
    args = parser.parse_args()
    if not os.path.exists(args.busybox):
        print(f"{args.busybox} not found: install busybox-static", file=sys.stderr)
        return 1
    build(args.out, args.busybox)
    return 0


if __name__ == "__main__":
    sys.exit(main())
