"""Unit tests of the blocking client's streams (:meth:`Client.stream`, issue 13): the one request
loop of the CLI, against a scripted socket peer."""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tugwire import errors
from tugwire.syncclient import Client, Disconnected

# A script: for each request received, the messages to send back (and whether to hang up after).
Script = Callable[[dict[str, Any], list[dict[str, Any]]], list[dict[str, Any]] | None]


@pytest.fixture
def serve(tmp_path: Any) -> Iterator[Callable[[Script], str]]:
    """Start a one-connection peer that answers each request with ``script(request, seen)``
    (None: close the connection); returns its socket path."""
    threads: list[threading.Thread] = []
    listeners: list[socket.socket] = []

    def start(script: Script) -> str:
        path = str(tmp_path / f"p{len(listeners)}.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(1)
        listeners.append(listener)
        seen: list[dict[str, Any]] = []

        def run() -> None:
            conn, _ = listener.accept()
            with conn, conn.makefile("rb") as reader:
                for line in reader:
                    req = json.loads(line)
                    seen.append(req)
                    if "id" not in req:
                        continue  # a notification of ours: no answer
                    replies = script(req, seen)
                    if replies is None:
                        return
                    for reply in replies:
                        conn.sendall(json.dumps({"jsonrpc": "2.0", **reply}).encode() + b"\n")

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        threads.append(thread)
        return path

    yield start
    for thread in threads:
        thread.join(timeout=5)
    for listener in listeners:
        listener.close()


def note(method: str, request: int, **params: Any) -> dict[str, Any]:
    return {"method": method, "params": {"request": request, **params}}


def test_stream_yields_its_notifications_then_its_result(serve: Callable[[Script], str]) -> None:
    def script(req: dict[str, Any], seen: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        rid = req["id"]
        if req["method"] == "other":
            return []  # answered in the middle of the stream below
        if req["method"] == "stream":
            other = next(r["id"] for r in seen if r["method"] == "other")
            return [
                note("x.progress", rid, n=1),
                note("x.progress", other, n=99),  # the other request's: kept for it
                {"id": other, "result": "other's"},
                note("x.progress", rid, n=2),
                {"id": rid, "result": {"done": True}},
            ]
        return None

    with Client(serve(script)) as client:
        other = client.send("other")
        stream = client.stream("stream", {"a": 1})
        assert not stream.done
        got = [(m["method"], m["params"]) for m in stream]
        assert got == [
            ("x.progress", {"request": stream.id, "n": 1}),
            ("x.progress", {"request": stream.id, "n": 2}),
        ]
        assert stream.done
        assert stream.result == {"done": True}
        assert list(stream) == []  # iterating again yields nothing
        assert client.answered(other)
        assert client.wait_for(other) == "other's"
        assert client.next_message() == {"jsonrpc": "2.0", **note("x.progress", other, n=99)}
        client.send("bye")


def test_stream_raises_its_error_as_its_class(serve: Callable[[Script], str]) -> None:
    def script(req: dict[str, Any], seen: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        if req["method"] == "bye":
            return None
        err = errors.NotFound("no such container: x").to_json()
        return [note("container.logs.data", req["id"], data=""), {"id": req["id"], "error": err}]

    with Client(serve(script)) as client:
        stream = client.stream("container.logs", {"id": "x"})
        assert next(stream)["method"] == "container.logs.data"
        with pytest.raises(errors.NotFound, match="no such container: x"):
            next(stream)
        assert stream.done
        with pytest.raises(errors.NotFound):  # wait() on another stream: same mapping
            client.stream("container.logs", {"id": "x"}).wait()
        client.send("bye")


def test_stream_raises_disconnected_when_the_peer_hangs_up(serve: Callable[[Script], str]) -> None:
    def script(req: dict[str, Any], seen: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        return None

    with Client(serve(script)) as client:
        stream = client.stream("events.subscribe", {})
        with pytest.raises(Disconnected, match="closed"):
            list(stream)


def test_stream_wakes_for_its_fd_and_for_other_answers(serve: Callable[[Script], str]) -> None:
    """With a wakeup fd, the stream yields an empty message when the fd is readable and when
    another request's answer came (kept for it): one loop serves a stream and other requests."""
    go = threading.Event()

    def script(req: dict[str, Any], seen: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        rid = req["id"]
        if req["method"] == "logs":
            return [note("container.logs.data", rid, data="aGk=")]
        if req["method"] == "start":
            go.wait(5)
            logs = next(r["id"] for r in seen if r["method"] == "logs")
            return [{"id": rid, "result": None}, {"id": logs, "result": {}}]
        return None

    r, w = os.pipe()
    try:
        with Client(serve(script)) as client:
            logs = client.stream("logs", {}, wakeup_fd=r)
            start = client.stream("start", {}, wakeup_fd=r)
            assert next(logs)["params"]["data"] == "aGk="
            os.write(w, b"\x1c")
            assert next(logs) == {}  # woken by the fd, which we drain
            assert os.read(r, 16) == b"\x1c"
            go.set()
            assert next(logs) == {}  # start's answer came: kept for it
            assert client.answered(start.id) and not start.done
            assert start.wait() is None and start.done
            assert list(logs) == []
            assert logs.result == {}
            client.send("bye")
    finally:
        os.close(r)
        os.close(w)


def test_forget_drops_the_answer_and_call_many_keeps_order(serve: Callable[[Script], str]) -> None:
    def script(req: dict[str, Any], seen: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        rid, method = req["id"], req["method"]
        if method == "bye":
            return None
        if method == "kill":
            return [{"id": rid, "result": "killed"}]
        if req["params"]["n"] == 2:
            return [{"id": rid, "error": errors.FailedPrecondition("it is stopped").to_json()}]
        return [{"id": rid, "result": req["params"]["n"] * 10}]

    with Client(serve(script)) as client:
        client.forget(client.send("kill", {}))
        results = client.call_many("pause", [{"n": 1}, {"n": 2}, {"n": 3}])
        assert results[0] == 10 and results[2] == 30
        assert isinstance(results[1], errors.FailedPrecondition)
        assert "it is stopped" in results[1].message
        assert not client._held  # the forgotten answer was dropped, not kept
        held = client.send("kill", {})
        assert client.call("pause", {"n": 4}) == 40
        client.forget(held)  # already arrived and kept: dropped now
        assert not client._held and not client._forgotten
        client.send("bye")
