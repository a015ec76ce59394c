"""Image volumes (the CRI's KEP-4639): a container mounts another image's root filesystem,
read-only, from ``container.create``'s ``{"type": "image"}`` volume."""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest

from tugwire import errors

from .conftest import _mounts_under, needs_root, needs_runc
from .helpers import output, run, start
from .waiting import wait_until

pytestmark = [pytest.mark.integration, needs_root, needs_runc]


def _data_image(d: Any) -> str:
    """An image of two layers (busybox and a file), tagged ``data``; returns its id."""
    ctx = os.path.join(d.base, "ctx")
    os.makedirs(os.path.join(ctx, "sub"))
    with open(os.path.join(ctx, "Dockerfile"), "w") as f:
        f.write("FROM busybox\nCOPY sub /sub/\n")
    with open(os.path.join(ctx, "sub", "hello.txt"), "w") as f:
        f.write("from the image\n")
    d.call("image.build", {"context": ctx, "tag": "data"})
    return str(d.call("image.inspect", {"ref": "data"})["id"])


def _bundle_mounts(d: Any) -> list[str]:
    return _mounts_under(os.path.join(d.root, "containers"))


def test_image_volume_reads_refuses_writes_and_leaves_nothing(make_daemon: Any, backend: str) -> None:
    d = make_daemon(backend=backend)
    image_id = _data_image(d)
    vols = [
        {"type": "image", "image": "data", "target": "/iv"},
        {"type": "image", "image": image_id, "target": "/sub", "subpath": "sub"},
        {"type": "image", "image": "busybox", "target": "/bb"},  # one layer
    ]
    script = (
        "cat /iv/sub/hello.txt /sub/hello.txt; /bb/bin/busybox true && echo exec-ok; "
        "touch /iv/x 2>/dev/null && echo wrote; touch /sub/x 2>/dev/null && echo wrote; exit 0"
    )
    cid, result = run(d, ["sh", "-c", script], volumes=vols)
    assert result["exit_code"] == 0
    out, _ = output(d, cid)
    assert out == b"from the image\nfrom the image\nexec-ok\n"
    wait_until(lambda: _bundle_mounts(d) == [], 10, "the exited container's release")
    # In use while the container exists: a removal of the volume's image is refused.
    with pytest.raises(errors.FailedPrecondition):
        d.call("image.remove", {"ref": "data"})
    # Forced, it is untagged at once and goes with the container.
    d.call("image.remove", {"ref": "data", "force": True})
    d.call("image.inspect", {"ref": image_id})
    d.call("container.delete", {"id": cid})
    assert _bundle_mounts(d) == []

    def image_gone() -> bool:
        try:
            d.call("image.inspect", {"ref": image_id})
        except errors.NotFound:
            return True
        return False

    wait_until(image_gone, 10, "the untagged image to go with its last container")


def test_image_volume_bad_requests_change_nothing(daemon: Any) -> None:
    before = daemon.call("container.list", {"all": True})
    bad = [
        ({"type": "image", "image": "nothere:1", "target": "/iv"}, errors.NotFound),
        ({"type": "image", "image": "busybox", "target": "iv"}, errors.InvalidArgument),
        ({"type": "image", "image": "busybox", "target": "/iv", "readonly": False}, errors.InvalidArgument),
        ({"type": "image", "image": "busybox", "target": "/iv", "subpath": "../x"}, errors.InvalidArgument),
        ({"type": "image", "image": "busybox", "target": "/iv", "subpath": "nope"}, errors.InvalidArgument),
    ]
    for vol, kind in bad:
        with pytest.raises(kind):
            daemon.call("container.create", {"image": "busybox", "cmd": ["true"], "volumes": [vol]})
    assert daemon.call("container.list", {"all": True}) == before
    assert os.listdir(os.path.join(daemon.root, "containers")) == [] or all(
        e.startswith(".") for e in os.listdir(os.path.join(daemon.root, "containers"))
    )


def test_image_volume_after_tugd_kill9_leaves_nothing(make_daemon: Any, backend: str) -> None:
    d = make_daemon(backend=backend)
    vols = [{"type": "image", "image": "busybox", "target": "/bb"}]
    cid = start(d, ["sleep", "1000"], volumes=vols)
    assert len(_bundle_mounts(d)) == 2  # the rootfs and the volume
    d.kill9()
    d.start()
    assert d.call("container.inspect", {"id": cid})["state"] == "running"
    d.call("container.delete", {"id": cid, "force": True})
    assert _bundle_mounts(d) == []
    # The container exits while tugd is down: the restarted tugd releases it, mounts and all.
    cid = start(d, ["sleep", "1000"], volumes=vols)
    pid = d.call("container.inspect", {"id": cid})["pid"]
    d.kill9()
    os.kill(pid, signal.SIGKILL)
    exit_file = os.path.join(d.state, "shims", cid, "exit.json")
    wait_until(lambda: os.path.exists(exit_file), 20, "the shim to record the exit")
    d.start()
    assert d.call("container.inspect", {"id": cid})["state"] == "exited"
    wait_until(lambda: _bundle_mounts(d) == [], 10, "the exited container's release")
    d.call("container.delete", {"id": cid})
