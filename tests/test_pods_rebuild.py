"""Pods in the store's on-disk mirror (``<root>/meta/pods/<id>.json``, supervisor/ondisk.py):
``tugd --rebuild-store`` makes them again, a ready pod with its address and its infra process
still ready, a stopped one still stopped; a pod's record follows its changes and goes with it."""

from __future__ import annotations

import json
import os
import random
from typing import Any

import pytest

from .conftest import Daemon, needs_root, needs_runc
from .test_store_rebuild import REBUILD, corrupt, start_fails

pytestmark = [pytest.mark.integration, pytest.mark.network, needs_root, needs_runc]


def record(d: Daemon, pid: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(d.root, "meta", "pods", pid + ".json")) as f:
            obj: dict[str, Any] = json.load(f)
            return obj
    except FileNotFoundError:
        return None


@pytest.mark.parametrize(("how", "backend"), [("delete", "asyncio"), ("wal", "trio")])
def test_pods_come_back_from_disk_after_a_rebuild(make_daemon: Any, how: str, backend: str) -> None:
    d: Daemon = make_daemon(netns=True, backend=backend)
    ready = d.call(
        "pod.create", {"name": "web", "namespace": "ns", "uid": "u1", "pid": "pod", "labels": {"a": "b"}}
    )
    stopped = d.call("pod.create", {"name": "old", "namespace": "ns", "uid": "u2"})
    d.call("pod.stop", {"id": stopped["id"]})
    rec = record(d, ready["id"])
    assert rec is not None and rec["pod"]["state"] == "ready" and rec["pod"]["config"]["labels"] == {"a": "b"}
    assert [e["ip"] for e in rec["endpoints"]] == [ready["network"]["ip"]]
    assert record(d, stopped["id"])["pod"]["state"] == "notready"  # type: ignore[index]

    corrupt(d, how, random.Random(how))
    assert REBUILD in start_fails(d)
    d.extra = [*d.extra, REBUILD]
    d.start()
    d.extra = d.extra[:-1]
    pods = {p["id"]: p for p in d.call("pod.list")}
    assert set(pods) == {ready["id"], stopped["id"]}
    back = pods[ready["id"]]
    assert (back["state"], back["name"], back["labels"]) == ("ready", "web", {"a": "b"})
    assert back["network"]["ip"] == ready["network"]["ip"] and back["namespaces"] == ready["namespaces"]
    assert pods[stopped["id"]]["state"] == "notready"
    # A second start without the flag keeps them; a new pod gets another address.
    d.restart()
    assert {p["id"] for p in d.call("pod.list")} == {ready["id"], stopped["id"]}
    other = d.call("pod.create", {"name": "new", "namespace": "ns", "uid": "u3"})
    assert other["network"]["ip"] != ready["network"]["ip"]
    for pod in (ready, stopped, other):
        d.call("pod.remove", {"id": pod["id"]})
        assert record(d, pod["id"]) is None
