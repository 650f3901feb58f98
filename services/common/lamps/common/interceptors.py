"""Server interceptors: request ids, metrics and access logs; bearer-token authentication
(and the caller's tenant).

Both sit on every RPC of the scheduler's hot path, so per-method work is done once: wrapped
handlers and metric series are cached per method. Per call, `intercept_service` reads the
metadata gRPC has already parsed and sets the request id in a context variable, which the handler
then sees (gRPC runs both in the call's own context, as its async interceptor example shows);
the observing wrapper only counts, times and logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

import grpc
from grpc import aio

from lamps.common.context import REQUEST_ID_METADATA_KEY, new_request_id, request_id_var
from lamps.common.metrics import GRPC_HANDLED, GRPC_HANDLING_SECONDS, GRPC_STARTED
from lamps.common.tenants import SHARED_TENANT, parse_entries, tenant_var

if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]
    ServerInterceptor = aio.ServerInterceptor[Any, Any]
else:
    Handler = grpc.RpcMethodHandler
    ServerInterceptor = aio.ServerInterceptor

log = logging.getLogger("lamps.rpc")

Context = aio.ServicerContext[Any, Any]
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[Handler]]
Around = Callable[[Context], AbstractAsyncContextManager[None]]
# Turns the decoded request (or a client stream's iterator) into what the behaviour gets.
Prepare = Callable[[Any, Context], Awaitable[Any]]

# Codes that mean the server, not the caller, went wrong: logged as errors.
_SERVER_FAULTS = frozenset(
    {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DATA_LOSS}
)
_CODES_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}
# A caller's x-request-id is cut to this length before it reaches every log line of the call.
MAX_REQUEST_ID_CHARS = 128


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


def wrap_handler(
    handler: Handler,
    around: Around | None = None,
    *,
    prepare: Prepare | None = None,
    request_deserializer: Callable[[bytes], Any] | None = None,
) -> Handler:
    """A handler of the same kind whose behaviour runs inside `around(context)`, on the request
    `prepare(request, context)` returns (the request iterator on a client stream), decoded by
    `request_deserializer` if one is given instead of the handler's own."""
    enter: Around = around or _nothing_around
    behavior: Callable[..., Any] = cast(
        Callable[..., Any],
        handler.stream_stream
        or handler.stream_unary
        or handler.unary_stream
        or handler.unary_unary,
    )

    async def call(request: Any, context: Context) -> Any:
        if prepare is not None:
            request = await prepare(request, context)
        return behavior(request, context)

    deserializer = request_deserializer or handler.request_deserializer
    if handler.response_streaming:

        async def streaming(request: Any, context: Context) -> Any:
            async with enter(context):
                result = await call(request, context)
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
            request_deserializer=deserializer,
            response_serializer=handler.response_serializer,
        )

    async def unary(request: Any, context: Context) -> Any:
        async with enter(context):
            result = await call(request, context)
            return await result if inspect.isawaitable(result) else result

    unary_factory = (
        grpc.stream_unary_rpc_method_handler
        if handler.request_streaming
        else grpc.unary_unary_rpc_method_handler
    )
    return unary_factory(
        unary,
        request_deserializer=deserializer,
        response_serializer=handler.response_serializer,
    )


def _nothing_around(context: Context) -> AbstractAsyncContextManager[None]:
    return contextlib.nullcontext()


def metadata_value(details: grpc.HandlerCallDetails, key: str) -> str | None:
    """The first value of `key` in the call's metadata."""
    for item_key, value in details.invocation_metadata or ():
        if item_key == key:
            return value if isinstance(value, str) else value.decode("utf-8", "replace")
    return None


def _status_of(context: Context) -> grpc.StatusCode:
    # The aio context reports a StatusCode or, depending on how the call ended, its integer.
    code: object = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):
        return _CODES_BY_NUMBER.get(code, grpc.StatusCode.UNKNOWN)
    return grpc.StatusCode.OK


class _MethodMetrics:
    """The metric series of one method, resolved once."""

    def __init__(self, method: str, rpc_type: str) -> None:
        name = MethodName.parse(method)
        self.method = method
        self.labels = (name.service, name.method, rpc_type)
        self.started = GRPC_STARTED.labels(*self.labels)
        self.seconds = GRPC_HANDLING_SECONDS.labels(*self.labels)
        self._handled: dict[grpc.StatusCode, Any] = {}

    def handled(self, code: grpc.StatusCode) -> Any:
        counter = self._handled.get(code)
        if counter is None:
            counter = self._handled[code] = GRPC_HANDLED.labels(*self.labels, code.name)
        return counter


class _Observed:
    """One call under observation: its request id echoed, metrics and an access log out."""

    __slots__ = ("_context", "_metrics", "_started")

    def __init__(self, metrics: _MethodMetrics, context: Context) -> None:
        self._metrics = metrics
        self._context = context

    async def __aenter__(self) -> None:
        # Trailing metadata travels with the status, so echoing the id costs no extra message.
        self._context.set_trailing_metadata(
            ((REQUEST_ID_METADATA_KEY, request_id_var.get() or ""),)
        )
        self._metrics.started.inc()
        self._started = time.perf_counter()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None or isinstance(exc, aio.AbortError):
            code = _status_of(self._context)
        elif isinstance(exc, GeneratorExit | asyncio.CancelledError):
            code = grpc.StatusCode.CANCELLED
        else:
            code = grpc.StatusCode.UNKNOWN
            log.error("unhandled error in %s", self._metrics.method, exc_info=exc)
        elapsed = time.perf_counter() - self._started
        self._metrics.handled(code).inc()
        self._metrics.seconds.observe(elapsed)
        _log_call(self._metrics.method, code, elapsed, self._context)


class ObservabilityInterceptor(ServerInterceptor):
    """Sets the request id (from `x-request-id` or new), echoes it, counts and logs each call.

    The id comes back in the trailing metadata under `x-request-id`; a handler that sets its own
    trailing metadata should include it. Wrapped handlers are cached per method and keyed on the
    handler the rest of the chain returned, so a refusal from the auth interceptor gets its own.
    """

    def __init__(self) -> None:
        # (method, id of the inner handler) -> (the inner handler, kept alive; its wrapper)
        self._wrapped: dict[tuple[str, int], tuple[Handler, Handler]] = {}

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler:
        request_id = metadata_value(handler_call_details, REQUEST_ID_METADATA_KEY)
        request_id_var.set(request_id[:MAX_REQUEST_ID_CHARS] if request_id else new_request_id())
        handler: Handler | None = await continuation(handler_call_details)
        if handler is None:  # no such method: gRPC itself answers UNIMPLEMENTED
            return cast(Handler, None)
        key = (handler_call_details.method, id(handler))
        cached = self._wrapped.get(key)
        if cached is None:
            metrics = _MethodMetrics(handler_call_details.method, _rpc_type(handler))
            wrapped = wrap_handler(handler, lambda context: _Observed(metrics, context))
            cached = self._wrapped[key] = (handler, wrapped)
        return cached[1]


def _log_call(method: str, code: grpc.StatusCode, elapsed: float, context: Context) -> None:
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


class _Refusal:
    """Aborts the call with UNAUTHENTICATED before its behaviour can run."""

    __slots__ = ("_context", "_reason")

    def __init__(self, reason: str, context: Context) -> None:
        self._reason = reason
        self._context = context

    async def __aenter__(self) -> None:
        await self._context.abort(grpc.StatusCode.UNAUTHENTICATED, self._reason)

    async def __aexit__(self, *exc_info: object) -> None:
        return None


_REFUSAL_MISSING = (
    "missing bearer token: send the metadata 'authorization: Bearer <token>' "
    "(the lamps CLI and SDK take --token or LAMPS_TOKEN)"
)
_REFUSAL_INVALID = "invalid bearer token: it matches none this service accepts"


class AuthInterceptor(ServerInterceptor):
    """Requires `authorization: Bearer <token>` on the services that have tokens.

    `tokens_by_service` maps a full service name (`lamps.v1.SchedulerService`) to the token
    entries it accepts (`token` or `tenant=token`, see lamps.common.tenants). Services not in the
    map, such as health checking and reflection, stay open so that probes and tooling work
    without secrets. A call that passes gets the service's own handler untouched, with its
    token's tenant in `tenant_var`; one that fails gets a handler (cached per method) that
    answers UNAUTHENTICATED.
    """

    def __init__(self, tokens_by_service: Mapping[str, Iterable[str]]) -> None:
        self._tokens: dict[str, list[tuple[bytes, str]]] = {}
        for service, entries in tokens_by_service.items():
            parsed = parse_entries(entries)
            if parsed:
                self._tokens[service] = [(e.token.encode(), e.tenant) for e in parsed]
        self._refusals: dict[tuple[str, str], Handler] = {}

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler:
        # Set on every call: the tenant of a call must never be an earlier call's.
        tenant_var.set(SHARED_TENANT)
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        accepted = self._tokens.get(MethodName.parse(method).service)
        if handler is None or not accepted:
            return handler
        tenant, reason = self._authenticate(handler_call_details, accepted)
        if reason is None:
            tenant_var.set(tenant)
            return handler
        refusal = self._refusals.get((method, reason))
        if refusal is None:
            refusal = wrap_handler(handler, lambda context: _Refusal(reason, context))
            self._refusals[(method, reason)] = refusal
        return refusal

    @staticmethod
    def _authenticate(
        details: grpc.HandlerCallDetails, accepted: list[tuple[bytes, str]]
    ) -> tuple[str, str | None]:
        """(the token's tenant, None) or ("", why the call is refused)."""
        scheme, _, token = (metadata_value(details, "authorization") or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return SHARED_TENANT, _REFUSAL_MISSING
        candidate = token.encode()
        # Compare against every token so the time taken does not tell which one nearly matched.
        matches = [hmac.compare_digest(candidate, expected) for expected, _ in accepted]
        for matched, (_, tenant) in zip(matches, accepted, strict=True):
            if matched:
                return tenant, None
        return SHARED_TENANT, _REFUSAL_INVALID
