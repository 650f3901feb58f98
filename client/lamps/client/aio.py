"""`AsyncClient`: the SDK over grpc.aio, for asyncio programs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Any, TypeVar, Unpack

import grpc

from lamps.client.enums import RequestState, state_from_proto
from lamps.client.errors import Unavailable, from_rpc_error
from lamps.client.options import (
    DEFAULT_ADDRESS,
    DEFAULT_RECONNECT,
    SCHEDULER_SERVICE,
    TLS,
    Connection,
    GenerateOptions,
    Reconnect,
    Resumption,
    build_request,
)
from lamps.client.result import Result
from lamps.client.types import (
    ClusterStatus,
    Event,
    RequestRecord,
    Submitted,
)
from lamps.common.channel import open_channel
from lamps.v1 import scheduler_pb2 as pb
from lamps.v1 import scheduler_pb2_grpc as pb_grpc

_T = TypeVar("_T")


class AsyncClient:
    """A connection to the scheduler's front door, for asyncio.

    `timeout_s` bounds each unary call (submit, cancel, get_request, cluster_status); event
    streams run until their request ends. Every method raises `LampsError` subclasses only.
    """

    def __init__(
        self,
        target: str = DEFAULT_ADDRESS,
        *,
        token: str | None = None,
        tls: TLS | None = None,
        timeout_s: float | None = None,
        reconnect: Reconnect = DEFAULT_RECONNECT,
    ) -> None:
        self.target = target
        self._channel = open_channel(
            target,
            token=token,
            tls=tls.client_tls() if tls is not None else None,
            health_service=SCHEDULER_SERVICE,
        )
        self._stub = pb_grpc.SchedulerServiceStub(self._channel)
        self._timeout_s = timeout_s
        self._reconnect = reconnect

    @classmethod
    def from_env(cls, *, timeout_s: float | None = None) -> AsyncClient:
        """A client configured by LAMPS_ADDRESS, LAMPS_TOKEN and LAMPS_TLS_* variables."""
        conn = Connection.from_env()
        return cls(conn.target, token=conn.token, tls=conn.tls, timeout_s=timeout_s)

    async def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        await self._channel.close(None)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _unary(self, call: Callable[..., Awaitable[_T]], request: Any) -> _T:
        try:
            return await call(request, timeout=self._timeout_s)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    async def generate(
        self, prompt: str | None = None, **options: Unpack[GenerateOptions]
    ) -> AsyncIterator[Event]:
        """Submit a generation and yield its events, Accepted first and Finished last. Once
        accepted, a broken stream is resumed with Watch, so a scheduler restart loses nothing."""
        request = build_request(prompt, **options)
        async for event in self._events(self._stub.Generate(request)):
            yield event

    async def submit(
        self,
        prompt: str | None = None,
        *,
        idempotency_key: str | None = None,
        **options: Unpack[GenerateOptions],
    ) -> Submitted:
        """Submit a generation and return its id at once; Watch it for its events. The same
        `idempotency_key` (with the same request) returns the first submission's id, so a
        keyed submission is retried while the scheduler is unreachable (as `reconnect` says)."""
        request = pb.SubmitRequest(
            request=build_request(prompt, **options), idempotency_key=idempotency_key or ""
        )
        attempt = 0
        while True:
            try:
                response = await self._unary(self._stub.Submit, request)
                return Submitted(request_id=response.request_id, created=response.created)
            except Unavailable:
                # Only a keyed submission is safe to send again: the scheduler answers a
                # repeat with the first one's id. This rides out a restart or a failover.
                if not idempotency_key or attempt + 1 >= self._reconnect.attempts:
                    raise
                await asyncio.sleep(self._reconnect.delay(attempt))
                attempt += 1

    async def watch(self, request_id: str, from_offset: int = 0) -> AsyncIterator[Event]:
        """Yield a request's events from `from_offset` until its Finished event, reconnecting
        (from the last offset seen + 1) when the stream breaks."""
        first = self._stub.Watch(pb.WatchRequest(request_id=request_id, from_offset=from_offset))
        async for event in self._events(first, request_id, from_offset):
            yield event

    async def _events(
        self, call: Any, request_id: str | None = None, from_offset: int = 0
    ) -> AsyncIterator[Event]:
        state = Resumption(self._reconnect, request_id=request_id, next_offset=from_offset)
        while True:
            error: grpc.RpcError | None = None
            try:
                async for response in call:
                    event = state.seen(response.event)
                    if event is not None:
                        yield event
                    if state.done:
                        return
            except grpc.RpcError as exc:
                error = exc
            finally:
                call.cancel()  # a caller that stops iterating early ends the stream
            if state.exhausted(error):
                return
            await asyncio.sleep(state.retry_after(error))
            call = self._stub.Watch(state.watch_request())

    async def complete(
        self, prompt: str | None = None, **options: Unpack[GenerateOptions]
    ) -> Result:
        """Run a generation to its end and return the whole of it."""
        return Result.from_events([event async for event in self.generate(prompt, **options)])

    async def cancel(self, request_id: str) -> RequestState:
        """Cancel a request wherever it is; returns its state after the call (CANCELLED, or
        the final state it had already reached)."""
        response = await self._unary(self._stub.Cancel, pb.CancelRequest(request_id=request_id))
        return state_from_proto(response.state)

    async def get_request(self, request_id: str) -> RequestRecord:
        """The scheduler's record of a request."""
        request = pb.GetRequestRequest(request_id=request_id)
        response = await self._unary(self._stub.GetRequest, request)
        return RequestRecord.from_proto(response.record)

    async def cluster_status(self) -> ClusterStatus:
        """The workers, their KV usage, and the queue."""
        response = await self._unary(self._stub.ClusterStatus, pb.ClusterStatusRequest())
        return ClusterStatus.from_proto(response)
