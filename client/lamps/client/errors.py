"""The SDK's errors: one base class with the gRPC status, and subclasses to catch by meaning."""

from __future__ import annotations

import grpc


class LampsError(Exception):
    """A call to the scheduler failed; `code` is the gRPC status, `message` the server's words."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class InvalidRequest(LampsError):
    """The request was refused as it stands (INVALID_ARGUMENT, FAILED_PRECONDITION,
    OUT_OF_RANGE)."""


class NotFound(LampsError):
    """No request (or other entity) of that id."""


class AlreadyExists(LampsError):
    """An idempotency key was reused with a different request."""


class Unauthenticated(LampsError):
    """A missing or wrong token (UNAUTHENTICATED, PERMISSION_DENIED)."""


class Unavailable(LampsError):
    """The scheduler could not be reached or did not answer in time (UNAVAILABLE,
    DEADLINE_EXCEEDED); retrying later may succeed."""


class ResourceExhausted(LampsError):
    """The scheduler is full; `retry_after_s` is its hint (from `retry-after`), if it gave one."""

    def __init__(
        self, code: grpc.StatusCode, message: str, retry_after_s: float | None = None
    ) -> None:
        super().__init__(code, message)
        self.retry_after_s = retry_after_s


_KINDS: dict[grpc.StatusCode, type[LampsError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequest,
    grpc.StatusCode.FAILED_PRECONDITION: InvalidRequest,
    grpc.StatusCode.OUT_OF_RANGE: InvalidRequest,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: Unauthenticated,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: Unavailable,
}


def _retry_after(metadata: object) -> float | None:
    for key, value in metadata or ():  # type: ignore[attr-defined]
        if key == "retry-after":
            try:
                return float(value)
            except (TypeError, ValueError):
                return None
    return None


def from_rpc_error(error: grpc.RpcError) -> LampsError:
    """The SDK error for a failed call (sync or aio: both carry code, details and trailers)."""
    call: grpc.Call = error  # type: ignore[assignment]
    code = call.code()
    message = call.details() or code.name.lower().replace("_", " ")
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ResourceExhausted(code, message, _retry_after(call.trailing_metadata()))
    return _KINDS.get(code, LampsError)(code, message)
