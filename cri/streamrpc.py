"""Exec, Attach and PortForward: each checks its request as kubelet's streaming server does and
answers a URL of tug-cri's streaming server (:mod:`cri.streaming`), where the session runs. A
part of :class:`cri.runtime.RuntimeService`.
"""

from __future__ import annotations

from typing import Any

import grpc
import grpc.aio

from tugwire.errors import FailedPrecondition, InvalidArgument

from .containers import stdin_once
from .errors import rpc
from .gen import api_pb2
from .streaming import StreamRequest, StreamServer, TooManyRequests
from .tugd import Tugd

Context = grpc.aio.ServicerContext[Any, Any]


class StreamingMethods:
    """The streaming RPCs of the RuntimeService."""

    tugd: Tugd
    streaming: StreamServer

    async def _stream_request(self, kind: str, request: Any, cmd: list[str] | None = None) -> StreamRequest:
        """Check an Exec or Attach request as kubelet's streaming server does: a running
        container, a stream at least, no stderr with a terminal (its output is one stream)."""
        if not (request.stdin or request.stdout or request.stderr):
            raise InvalidArgument("one of stdin, stdout or stderr must be asked for", field="stdin")
        if request.tty and request.stderr:
            raise InvalidArgument(
                "tty and stderr cannot both be true: a terminal has one output", field="tty"
            )
        if not request.container_id:
            raise InvalidArgument("no container given (container_id is empty)", field="container_id")
        info: dict[str, Any] = await self.tugd.call("container.inspect", {"id": request.container_id})
        if info.get("state") != "running":
            raise FailedPrecondition(f"container {request.container_id} is not running ({info.get('state')})")
        return StreamRequest(
            kind,
            container_id=info["id"],
            cmd=cmd or [],
            tty=request.tty,
            stdin=request.stdin,
            stdout=request.stdout,
            stderr=request.stderr,
            stdin_once=stdin_once(info),
        )

    async def _url(self, request: StreamRequest, context: Context) -> str:
        try:
            return self.streaming.url(request)
        except TooManyRequests as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
            raise  # unreachable: abort raises

    @rpc
    async def Exec(self, request: api_pb2.ExecRequest, context: Context) -> api_pb2.ExecResponse:
        """A URL where ``cmd`` runs in the container with the asked stdio (SPDY or WebSocket)."""
        if not request.cmd:
            raise InvalidArgument("no command given (cmd is empty)", field="cmd")
        req = await self._stream_request("exec", request, list(request.cmd))
        return api_pb2.ExecResponse(url=await self._url(req, context))

    @rpc
    async def Attach(self, request: api_pb2.AttachRequest, context: Context) -> api_pb2.AttachResponse:
        """A URL where the container's PID 1 is attached: its output from now on, its stdin."""
        req = await self._stream_request("attach", request)
        return api_pb2.AttachResponse(url=await self._url(req, context))

    @rpc
    async def PortForward(
        self, request: api_pb2.PortForwardRequest, context: Context
    ) -> api_pb2.PortForwardResponse:
        """A URL forwarding connections to ports of the pod's network namespace."""
        if not request.pod_sandbox_id:
            raise InvalidArgument("no pod given (pod_sandbox_id is empty)", field="pod_sandbox_id")
        pod = await self.tugd.call("pod.inspect", {"id": request.pod_sandbox_id})
        if pod.get("state") != "ready":
            raise FailedPrecondition(f"pod {request.pod_sandbox_id} is not ready ({pod.get('state')})")
        req = StreamRequest("portforward", pod_id=str(pod["id"]))
        return api_pb2.PortForwardResponse(url=await self._url(req, context))
