"""Port-forward over SPDY (``portforward.k8s.io``): the client opens a pair of streams per
connection it forwards, ``streamType: error`` and ``streamType: data``, with the same
``requestID`` and the pod's ``port``; we dial ``localhost:port`` inside the pod's network
namespace and copy both ways. A failure to dial is a message on the error stream.

The socket is made by a thread of its own that has entered the pod's network namespace
(setns(2)); a socket stays in the namespace it was made in, so the copying runs on tug-cri's
loop as usual. The namespace's path is tugd's (``pod.inspect``: ``namespaces.network``; null
for a pod on the host's network, dialled from here).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import os
import socket
import threading
from typing import Any

from tugwire.errors import TugError

from .spdysession import Session, Stream
from .tugd import Tugd

log = logging.getLogger("tugboat.cri.streaming")

CLONE_NEWNET = 0x40000000
DIAL_TIMEOUT = 10.0
PAIR_WAIT = 30.0  # seconds between the two streams of a pair, at most

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def dial_in(netns: str | None, port: int) -> socket.socket:
    """A TCP connection to localhost:``port`` in the network namespace at ``netns`` (None: here),
    made by a thread that enters the namespace and then ends (blocking: run it in a thread)."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            if netns is not None:
                fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    _setns(fd)
                finally:
                    os.close(fd)
            errors = []
            for host in ("127.0.0.1", "::1"):
                try:
                    box["sock"] = socket.create_connection((host, port), timeout=DIAL_TIMEOUT)
                    return
                except OSError as exc:
                    errors.append(f"{host}: {exc.strerror or exc}")
            box["error"] = OSError("; ".join(errors))
        except BaseException as exc:
            box["error"] = exc

    # A thread of its own: it ends in the pod's namespace, and no other work runs on it.
    thread = threading.Thread(target=run, name=f"portforward-dial-{port}", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    sock: socket.socket = box["sock"]
    sock.settimeout(None)
    return sock


async def _forward(pod_id: str, netns: str | None, port_text: str, error: Stream, data: Stream) -> None:
    try:
        port = int(port_text)
        if not 0 < port < 65536:
            raise ValueError
    except ValueError:
        await error.write(f"invalid port {port_text!r}".encode())
        await error.close()
        await data.close()
        return
    try:
        sock = await asyncio.to_thread(dial_in, netns, port)
    except OSError as exc:
        message = f"error forwarding port {port} to pod {pod_id}: {exc}"
        log.info("%s", message)
        with contextlib.suppress(ConnectionError):
            await error.write(message.encode())
            await error.close()
            await data.close()
        return
    reader, writer = await asyncio.open_connection(sock=sock)

    async def upstream() -> None:
        while chunk := await data.read():
            writer.write(chunk)
            await writer.drain()
        with contextlib.suppress(OSError):
            writer.write_eof()

    async def downstream() -> None:
        while chunk := await reader.read(65536):
            await data.write(chunk)
        await data.close()

    try:
        await asyncio.gather(upstream(), downstream())
    except ConnectionError:
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, RuntimeError):
            await error.close()
            await data.close()


async def serve(session: Session, tugd_socket: str, pod_id: str) -> None:
    """Forward every pair of streams the client opens, until the connection ends."""
    try:
        pod = await Tugd(tugd_socket).call("pod.inspect", {"id": pod_id})
    except TugError as exc:
        log.info("port-forward to pod %s: %s", pod_id, exc.message)
        return
    host = (
        bool((pod.get("network") or {}).get("host"))
        or (pod.get("namespace_options") or {}).get("network") == "node"
    )
    netns = None if host else (pod.get("namespaces") or {}).get("network")
    if netns is None and not host:
        log.info("port-forward to pod %s: it has no network namespace", pod_id)
        return
    pairs: dict[str, dict[str, Stream]] = {}
    tasks: set[asyncio.Task[None]] = set()
    try:
        while (stream := await session.next_stream(4 * 3600.0)) is not None:
            rid = stream.header("requestid") or str(stream.id)
            kind = stream.header("streamtype")
            if kind not in ("error", "data"):
                await stream.close()
                continue
            pair = pairs.setdefault(rid, {})
            pair[kind] = stream
            if len(pair) == 2:
                del pairs[rid]
                port = pair["data"].header("port") or pair["error"].header("port")
                tasks.add(asyncio.ensure_future(_forward(pod_id, netns, port, pair["error"], pair["data"])))
                tasks = {t for t in tasks if not t.done()}
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
