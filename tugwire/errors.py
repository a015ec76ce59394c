"""The closed set of errors that cross a Tugboat socket, and the one table that maps them to codes.

Both daemons raise these; the JSON-RPC layer turns them into error objects with a stable
``data.kind``, and clients turn the code back into the same class. Nothing else (no traceback, no
``repr`` of a Python exception) goes on the wire.
"""

from __future__ import annotations

# typing is not imported at run time: it costs ~2 ms of every `tug` command, and with
# `from __future__ import annotations` these names only appear in annotations.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, ClassVar


# JSON-RPC 2.0 standard codes.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603


class TugError(Exception):
    """Base of every error that may cross a socket."""

    code: ClassVar[int] = INTERNAL_ERROR
    kind: ClassVar[str] = "internal"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind}
        if self.details:
            data.update(self.details)
        return {"code": self.code, "message": self.message, "data": data}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class ParseError(TugError):
    code = PARSE_ERROR
    kind = "parse_error"


class InvalidRequest(TugError):
    code = INVALID_REQUEST
    kind = "invalid_request"


class MethodNotFound(TugError):
    code = METHOD_NOT_FOUND
    kind = "method_not_found"


class InvalidParams(TugError):
    code = INVALID_PARAMS
    kind = "invalid_params"


class Internal(TugError):
    code = INTERNAL_ERROR
    kind = "internal"


class NotFound(TugError):
    """The named object (container, image, ...) does not exist."""

    code = -32001
    kind = "not_found"


class AlreadyExists(TugError):
    code = -32002
    kind = "already_exists"


class InvalidArgument(TugError):
    """A well-formed request whose values are not acceptable (a bad name, a bad path)."""

    code = -32003
    kind = "invalid_argument"


class FailedPrecondition(TugError):
    """The verb is illegal in the object's current state (start of a running container)."""

    code = -32004
    kind = "failed_precondition"


class Unavailable(TugError):
    """A shim or the daemon does not answer in time."""

    code = -32005
    kind = "unavailable"


class RuntimeFailed(TugError):
    """The OCI runtime (runc) failed: carries the verb, its exit status and its last error line."""

    code = -32006
    kind = "runtime_failed"


class PermissionDenied(TugError):
    """The peer may not use this socket (checked with SO_PEERCRED): sent once, then closed."""

    code = -32007
    kind = "permission_denied"


class ResourceExhausted(TugError):
    """The host ran out of something the request needs: disk space (ENOSPC, a quota). Nothing
    half-made of the request is kept; the daemon goes on serving."""

    code = -32008
    kind = "resource_exhausted"


ALL: tuple[type[TugError], ...] = (
    ParseError,
    InvalidRequest,
    MethodNotFound,
    InvalidParams,
    Internal,
    NotFound,
    AlreadyExists,
    InvalidArgument,
    FailedPrecondition,
    Unavailable,
    RuntimeFailed,
    PermissionDenied,
    ResourceExhausted,
)
_BY_KIND = {cls.kind: cls for cls in ALL}
_BY_CODE = {cls.code: cls for cls in ALL}


def from_json(obj: Any) -> TugError:
    """Turn a JSON-RPC error object back into the matching exception class."""
    if not isinstance(obj, dict):
        return Internal(f"malformed error object: {obj!r}")
    message = str(obj.get("message", "unknown error"))
    data = obj.get("data")
    details: dict[str, Any] = {}
    cls: type[TugError] | None = None
    if isinstance(data, dict):
        cls = _BY_KIND.get(str(data.get("kind")))
        details = {k: v for k, v in data.items() if k != "kind"}
    if cls is None:
        code = obj.get("code")
        cls = _BY_CODE.get(code, Internal) if isinstance(code, int) else Internal
    return cls(message, **details)
