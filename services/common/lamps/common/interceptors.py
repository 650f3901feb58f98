"""Server interceptors: request ids, metrics and access logs; bearer-token authentication.

Both work by wrapping the method handler's behaviour, so the code they add runs inside the task
that serves the call: a request id set there is seen by every log line of the call.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import grpc
from grpc import aio

from lamps.common.context import REQUEST_ID_METADATA_KEY, new_request_id, request_id_var
from lamps.common.metrics import GRPC_HANDLED, GRPC_HANDLING_SECONDS, GRPC_STARTED

if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]
    _ServerInterceptor = aio.ServerInterceptor[Any, Any]
else:
    Handler = grpc.RpcMethodHandler
    _ServerInterceptor = aio.ServerInterceptor

log = logging.getLogger("lamps.rpc")

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[Handler]]
Around = Callable[[aio.ServicerContext[Any, Any]], AbstractAsyncContextManager[None]]

# Codes that mean the server, not the caller, went wrong: logged as errors.
_SERVER_FAULTS = frozenset(
    {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DATA_LOSS}
)


@dataclass(frozen=True)
class MethodName:
    """The parts of a full method name such as `/lamps.v1.SchedulerService/Submit`."""

    service: str
    method: str

    @classmethod
    def parse(cls, full: str) -> MethodName:
        service, _, method = full.lstrip("/").partition("/")
        return cls(service=service, method=method)


def _rpc_type(handler: Handler) -> str:
    if handler.request_streaming and handler.response_streaming:
        return "bidi_stream"
    if handler.request_streaming:
        return "client_stream"
    return "server_stream" if handler.response_streaming else "unary"


def wrap_handler(handler: Handler, around: Around) -> Handler:
    """A handler of the same kind whose behaviour runs inside `around(context)`."""
    if handler.response_streaming:
        behavior: Callable[..., Any] = cast(
            Callable[..., Any],
            handler.stream_stream if handler.request_streaming else handler.unary_stream,
        )

        async def streaming(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            async with around(context):
                result = behavior(request, context)
                if inspect.isasyncgen(result):
                    async for response in result:
                        yield response
                elif inspect.isawaitable(result):
                    await result

        factory = (
            grpc.stream_stream_rpc_method_handler
            if handler.request_streaming
            else grpc.unary_stream_rpc_method_handler
        )
        return factory(
            streaming,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    unary_behavior: Callable[..., Any] = cast(
        Callable[..., Any],
        handler.stream_unary if handler.request_streaming else handler.unary_unary,
    )

    async def unary(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        async with around(context):
            result = unary_behavior(request, context)
            return await result if inspect.isawaitable(result) else result

    factory = (
        grpc.stream_unary_rpc_method_handler
        if handler.request_streaming
        else grpc.unary_unary_rpc_method_handler
    )
    return factory(
        unary,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _metadata_value(details: grpc.HandlerCallDetails, key: str) -> str | None:
    for item_key, value in details.invocation_metadata or ():
        if item_key == key:
            return value if isinstance(value, str) else value.decode("utf-8", "replace")
    return None


def _status_of(context: aio.ServicerContext[Any, Any]) -> grpc.StatusCode:
    # The aio context reports a StatusCode or, depending on how the call ended, its integer.
    code: object = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):
        return next((c for c in grpc.StatusCode if c.value[0] == code), grpc.StatusCode.UNKNOWN)
    return grpc.StatusCode.OK


class ObservabilityInterceptor(_ServerInterceptor):
    """Sets the request id (from `x-request-id` or new), echoes it, counts and logs each call."""

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler:
        handler: Handler | None = await continuation(handler_call_details)
        if handler is None:  # no such method: gRPC itself answers UNIMPLEMENTED
            return cast(Handler, None)
        name = MethodName.parse(handler_call_details.method)
        rpc_type = _rpc_type(handler)
        request_id = _metadata_value(handler_call_details, REQUEST_ID_METADATA_KEY)

        @asynccontextmanager
        async def observe(context: aio.ServicerContext[Any, Any]) -> AsyncIterator[None]:
            token = request_id_var.set(request_id or new_request_id())
            labels = (name.service, name.method, rpc_type)
            GRPC_STARTED.labels(*labels).inc()
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                await context.send_initial_metadata(
                    ((REQUEST_ID_METADATA_KEY, request_id_var.get() or ""),)
                )
                yield
                code = _status_of(context)
            except aio.AbortError:
                code = _status_of(context)
                raise
            except BaseException as exc:
                code = (
                    grpc.StatusCode.CANCELLED
                    if isinstance(exc, GeneratorExit | asyncio.CancelledError)
                    else grpc.StatusCode.UNKNOWN
                )
                if code is grpc.StatusCode.UNKNOWN:
                    log.exception("unhandled error in %s", handler_call_details.method)
                raise
            finally:
                elapsed = time.perf_counter() - started
                GRPC_HANDLED.labels(*labels, code.name).inc()
                GRPC_HANDLING_SECONDS.labels(*labels).observe(elapsed)
                _log_call(handler_call_details.method, code, elapsed, context)
                request_id_var.reset(token)

        return wrap_handler(handler, observe)


def _log_call(
    method: str, code: grpc.StatusCode, elapsed: float, context: aio.ServicerContext[Any, Any]
) -> None:
    if code is grpc.StatusCode.OK:
        level = logging.DEBUG
    elif code in _SERVER_FAULTS:
        level = logging.ERROR
    else:
        level = logging.INFO
    if log.isEnabledFor(level):
        log.log(
            level,
            "rpc %s %s",
            method,
            code.name,
            extra={
                "method": method,
                "code": code.name,
                "duration_ms": round(elapsed * 1000, 3),
                "details": context.details() or None,
            },
        )


def _bearer_token(details: grpc.HandlerCallDetails) -> str | None:
    value = _metadata_value(details, "authorization")
    if value is None:
        return None
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


class AuthInterceptor(_ServerInterceptor):
    """Requires `authorization: Bearer <token>` on the services that have tokens.

    `tokens_by_service` maps a full service name (`lamps.v1.SchedulerService`) to the tokens it
    accepts. Services not in the map, such as health checking and reflection, stay open so that
    probes and tooling work without secrets.
    """

    def __init__(self, tokens_by_service: Mapping[str, frozenset[str]]) -> None:
        self._tokens = {
            service: [t.encode() for t in tokens]
            for service, tokens in tokens_by_service.items()
            if tokens
        }

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler:
        handler = await continuation(handler_call_details)
        accepted = self._tokens.get(MethodName.parse(handler_call_details.method).service)
        if handler is None or not accepted:
            return handler
        presented = _bearer_token(handler_call_details)
        if presented is None:
            reason = (
                "missing bearer token: send the metadata 'authorization: Bearer <token>' "
                "(the lamps CLI and SDK take --token or LAMPS_TOKEN)"
            )
        else:
            candidate = presented.encode()
            # Compare against every token so the time taken does not tell which one nearly matched.
            matches = [hmac.compare_digest(candidate, token) for token in accepted]
            if any(matches):
                return handler
            reason = "invalid bearer token: it matches none this service accepts"

        return wrap_handler(handler, lambda context: _Refusal(context, reason))


class _Refusal:
    """Aborts the call with UNAUTHENTICATED before its behaviour can run."""

    def __init__(self, context: aio.ServicerContext[Any, Any], reason: str) -> None:
        self._context = context
        self._reason = reason

    async def __aenter__(self) -> None:
        await self._context.abort(grpc.StatusCode.UNAUTHENTICATED, self._reason)

    async def __aexit__(self, *exc_info: object) -> None:
        return None
