"""Small helpers for integration tests: run a container through the API, read its logs."""

from __future__ import annotations

import base64
from typing import Any

from tugwire import crilog
from tugwire.syncclient import Client


def records(d: Any, cid: str, **params: Any) -> list[bytes]:
    """The raw CRI records ``container.logs`` streams for ``cid``."""
    with Client(d.socket) as c:
        rid = c.send("container.logs", {"id": cid, **params})
        chunks = []
        while True:
            msg = c.next_message()
            assert msg is not None
            if msg.get("id") == rid:
                assert "error" not in msg, msg
                break
            if msg.get("method") == "container.logs.data":
                chunks.append(base64.b64decode(msg["params"]["data"]))
        data = b"".join(chunks)
    return data.split(b"\n")[:-1] if data else []


def output(d: Any, cid: str, **params: Any) -> tuple[bytes, bytes]:
    """(stdout, stderr) exactly as the container wrote them, rebuilt from its CRI log."""
    streams: dict[bytes, list[bytes]] = {b"stdout": [], b"stderr": []}
    for rec in records(d, cid, **params):
        _ts, stream, full, content = crilog.parse_record(rec)
        streams[stream].append(content + b"\n" if full else content)
    return b"".join(streams[b"stdout"]), b"".join(streams[b"stderr"])


def run(d: Any, cmd: list[str], **opts: Any) -> tuple[str, dict[str, Any]]:
    """Create and start a container, wait for it to exit; returns (id, wait result)."""
    with Client(d.socket) as c:
        cid = c.call("container.create", {"image": "busybox", "cmd": cmd, **opts})["id"]
        wid = c.send("container.wait", {"id": cid, "condition": "next-exit"})
        c.call("container.start", {"id": cid})
        result = c.wait_for(wid)
    return cid, result


def start(d: Any, cmd: list[str], **opts: Any) -> str:
    cid: str = d.call("container.create", {"image": "busybox", "cmd": cmd, **opts})["id"]
    d.call("container.start", {"id": cid})
    return cid
