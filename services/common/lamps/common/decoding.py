"""Requests that cannot be decoded are the caller's fault: INVALID_ARGUMENT, not UNKNOWN.

gRPC decodes a request before any handler or interceptor behaviour runs, and answers a decoding
failure (invalid UTF-8 in a string field, a truncated message, a bad wire type) with UNKNOWN,
which reads as a server bug. `DecodingInterceptor` gives each handler a deserializer that turns
the failure into an `Undecodable` value instead, and a behaviour that answers it with
INVALID_ARGUMENT and the parser's reason. On a client stream, the first undecodable message ends
the call that way. It sits last in the chain, so an unauthenticated caller is refused first.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, cast

import grpc
from google.protobuf.message import DecodeError
from grpc import aio

from lamps.common.interceptors import (
    Context,
    Continuation,
    Handler,
    ServerInterceptor,
    wrap_handler,
)

log = logging.getLogger("lamps.rpc")

# The parser's reason is cut to this length: it can quote the field it choked on.
MAX_REASON_CHARS = 200


@dataclass(frozen=True, slots=True)
class Undecodable:
    """A request message the deserializer refused, with the parser's reason."""

    reason: str

    @property
    def message(self) -> str:
        return (
            f"the request is not a valid protobuf message: {self.reason[:MAX_REASON_CHARS]} "
            "(string fields must hold valid UTF-8; check the client's lamps.v1 protos)"
        )


def lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """`deserializer`, returning an `Undecodable` where it would raise."""
    if deserializer is None:
        return None

    def decode(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except DecodeError as exc:
            return Undecodable(str(exc))

    return decode


async def _refuse(context: Context, request: Undecodable) -> None:
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)


async def _checked(requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, Undecodable):
            await _refuse_stream(context, request)
            return
        yield request


async def _refuse_stream(context: Context, request: Undecodable) -> None:
    """Refuse from wherever the stream is read (a handler's reader task, say), where the call
    may have ended meanwhile (the client hung up): then there is no one left to answer."""
    if context.done():
        return
    try:
        await _refuse(context, request)
    except aio.AbortError:
        raise
    except Exception:
        log.debug("the call ended before its refusal could be sent", exc_info=True)


def guard(handler: Handler) -> Handler:
    """`handler` with a lenient deserializer and undecodable requests refused."""

    async def prepare(request: Any, context: Context) -> Any:
        if isinstance(request, Undecodable):
            await _refuse(context, request)
        # A client stream's messages are checked as the handler reads them.
        return _checked(request, context) if handler.request_streaming else request

    return wrap_handler(
        handler, prepare=prepare, request_deserializer=lenient(handler.request_deserializer)
    )


class DecodingInterceptor(ServerInterceptor):
    """Applies `guard` to every handler, once per method (see the module docstring)."""

    def __init__(self) -> None:
        # (method, id of the inner handler) -> (the inner handler, kept alive; its guard)
        self._guarded: dict[tuple[str, int], tuple[Handler, Handler]] = {}

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler:
        handler: Handler | None = await continuation(handler_call_details)
        if handler is None:
            return cast(Handler, None)
        key = (handler_call_details.method, id(handler))
        cached = self._guarded.get(key)
        if cached is None:
            cached = self._guarded[key] = (handler, guard(handler))
        return cached[1]
