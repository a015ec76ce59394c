"""The one place where tugd's errors become gRPC status codes.

tugd answers with the closed set of ``tugwire.errors`` (one ``data.kind`` each); every CRI method
of tug-cri runs under :func:`rpc`, which maps a :class:`~tugwire.errors.TugError` to the status
code of :data:`STATUS_BY_KIND`, with tugd's message, and anything else to ``INTERNAL`` with no
traceback on the wire (the traceback goes to tug-cri's log).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import grpc
import grpc.aio

from tugwire import errors

from .gen import api_pb2

log = logging.getLogger("tugboat.cri")

STATUS_BY_KIND: dict[str, grpc.StatusCode] = {
    errors.NotFound.kind: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists.kind: grpc.StatusCode.ALREADY_EXISTS,
    errors.InvalidArgument.kind: grpc.StatusCode.INVALID_ARGUMENT,
    errors.InvalidParams.kind: grpc.StatusCode.INVALID_ARGUMENT,
    errors.FailedPrecondition.kind: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Unavailable.kind: grpc.StatusCode.UNAVAILABLE,
    errors.PermissionDenied.kind: grpc.StatusCode.PERMISSION_DENIED,
    # No space left on tugd's disk: nothing was half written (docs/design.md, "Store and rebuild").
    errors.ResourceExhausted.kind: grpc.StatusCode.RESOURCE_EXHAUSTED,
    # tugd has no such method: this tugd is older than tug-cri.
    errors.MethodNotFound.kind: grpc.StatusCode.UNIMPLEMENTED,
    # runc (or another program tugd ran) failed: an error from elsewhere, reported as it came.
    errors.RuntimeFailed.kind: grpc.StatusCode.UNKNOWN,
    # A bug on either side of the JSON-RPC socket.
    errors.Internal.kind: grpc.StatusCode.INTERNAL,
    errors.ParseError.kind: grpc.StatusCode.INTERNAL,
    errors.InvalidRequest.kind: grpc.StatusCode.INTERNAL,
}


def status_of(exc: errors.TugError) -> grpc.StatusCode:
    """The gRPC status code of one of tugd's errors."""
    return STATUS_BY_KIND.get(exc.kind, grpc.StatusCode.INTERNAL)


F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def rpc(fn: F) -> F:
    """Decorate a CRI method: tugd's errors abort the call with their status code (and tugd's
    message); an unexpected exception is logged with its traceback and aborts with INTERNAL."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await fn(self, request, context)
        except errors.TugError as exc:
            code = status_of(exc)
            log.info("%s: %s: %s", fn.__name__, code.name, exc.message)
            await context.abort(code, exc.message)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            log.exception("%s failed", fn.__name__)
            await context.abort(
                grpc.StatusCode.INTERNAL, f"{fn.__name__}: internal error: {type(exc).__name__}"
            )
        raise AssertionError("unreachable: context.abort raises")  # pragma: no cover

    return cast(F, wrapper)


def unimplemented_rest(servicer: object, base: type, service: str) -> list[str]:
    """Give ``servicer`` an async UNIMPLEMENTED answer for every method of ``service`` (a
    service of the CRI proto) that its class does not override; returns their names.

    The generated base class's methods answer UNIMPLEMENTED too, but they are plain functions:
    grpc.aio runs them in a thread and logs each call as an unexpected exception with its
    traceback, and kubelet would call some of them every second."""
    missing = []
    for method in api_pb2.DESCRIPTOR.services_by_name[service].methods:
        name = method.name
        if getattr(type(servicer), name) is not getattr(base, name):
            continue
        missing.append(name)

        async def answer(request: Any, context: grpc.aio.ServicerContext[Any, Any], name: str = name) -> Any:
            await context.abort(
                grpc.StatusCode.UNIMPLEMENTED, f"tug-cri does not implement {service}.{name} yet"
            )

        setattr(servicer, name, answer)
    return missing
