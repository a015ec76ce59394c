"""Auto-remove in two halves (docs/design.md, "Removal"): the row goes first (the container is
invisible, its name free, ``wait {removed}`` answers), then ``runc delete``, the unmount, the
network, the addresses and the bundle, off the critical path, counted in ``system.info`` as
``containers.removing`` until done. tugd killed in between: the next start finishes it, and
nothing leaks."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from tugwire.syncclient import Client, Disconnected

from ..conftest import Daemon, needs_root, needs_runc
from .conftest import bundles, crashed, leaks, runc_list, wait_until
from .test_crash import arm

pytestmark = [pytest.mark.reliability, pytest.mark.integration, needs_root, needs_runc]


def removing(d: Daemon) -> int:
    n: int = d.call("system.info")["containers"]["removing"]
    return n


def run_rm(d: Daemon, cmd: list[str], **opts: Any) -> tuple[str, dict[str, Any]]:
    """``tug run --rm`` through the API: create, then ``wait {removed}`` and start on one
    connection; the container's id and the wait's answer."""
    with Client(d.socket) as c:
        params = {"image": "busybox", "cmd": cmd, "auto_remove": True, **opts}
        cid: str = c.call("container.create", params)["id"]
        wid = c.send("container.wait", {"id": cid, "condition": "removed"})
        c.call("container.start", {"id": cid})
        result: dict[str, Any] = c.wait_for(wid)
    return cid, result


def test_auto_remove_answers_removed_then_finishes_off_the_critical_path(
    make_daemon: Any, backend: str
) -> None:
    d: Daemon = make_daemon(backend=backend)
    for _ in range(3):
        cid, result = run_rm(d, ["sh", "-c", "exit 3"], name="again")
        assert (result["exit_code"], result["state"]) == (3, "removed")
        # docker's --rm: gone from the list when the run returns, and the name is free again.
        assert d.call("container.list", {"all": True}) == []
    wait_until(lambda: removing(d) == 0, what="the removals to finish")
    assert leaks(d) == []
    assert bundles(d) == [] and runc_list(d) == []
    # A removal with a log stream open waits for it, then goes the same way.
    with Client(d.socket) as c:
        params = {"image": "busybox", "cmd": ["echo", "hi"], "auto_remove": True}
        cid = c.call("container.create", params)["id"]
        logs = c.stream("container.logs", {"id": cid, "follow": True})
        wid = c.send("container.wait", {"id": cid, "condition": "removed"})
        c.call("container.start", {"id": cid})
        out = b"".join(base64.b64decode(n["params"]["data"]) for n in logs)
        assert out.endswith(b" stdout F hi\n"), out
        assert c.wait_for(wid)["exit_code"] == 0
    wait_until(lambda: removing(d) == 0, what="the removal to finish")
    assert leaks(d) == [] and bundles(d) == []


@pytest.mark.parametrize("point", ["container.delete.after_db", "container.remove.after_release"])
def test_kill9_in_the_deferred_half_of_a_removal_leaks_nothing(
    make_daemon: Any, backend: str, point: str
) -> None:
    d: Daemon = make_daemon(backend=backend)
    arm(d, f"{point}=kill")
    with Client(d.socket) as c:
        cid = c.call("container.create", {"image": "busybox", "cmd": ["true"], "auto_remove": True})["id"]
        wid = c.send("container.wait", {"id": cid, "condition": "removed"})
        try:
            c.call("container.start", {"id": cid})
            c.wait_for(wid)  # answered (the row is gone) or cut by the crash
        except Disconnected:
            pass
    crashed(d)  # in the deferred window: the row is gone, the rest is not
    assert bundles(d) == [cid]
    d.start()
    assert d.call("container.list", {"all": True}) == []
    assert removing(d) == 0
    assert leaks(d) == []
    assert bundles(d) == [] and runc_list(d) == []
