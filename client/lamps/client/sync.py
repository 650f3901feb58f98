"""`Client`: the SDK over a plain (blocking) gRPC channel."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
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
from lamps.common.channel import channel_options
from lamps.v1 import scheduler_pb2 as pb
from lamps.v1 import scheduler_pb2_grpc as pb_grpc

_T = TypeVar("_T")


def _open_channel(target: str, tls: TLS | None) -> grpc.Channel:
    client_tls = tls.client_tls() if tls is not None else None
    options = channel_options(target, SCHEDULER_SERVICE, client_tls)
    if client_tls is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, client_tls.credentials(), options=options)


class Client:
    """A connection to the scheduler's front door, blocking: each method returns when the
    server has answered, and event streams are plain iterators.

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
        self._channel = _open_channel(target, tls)
        # Metadata on each call rather than call credentials: gRPC sends those only over TLS,
        # and local mode runs on plaintext loopback.
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._stub = pb_grpc.SchedulerServiceStub(self._channel)
        self._timeout_s = timeout_s
        self._reconnect = reconnect

    @classmethod
    def from_env(cls, *, timeout_s: float | None = None) -> Client:
        """A client configured by LAMPS_ADDRESS, LAMPS_TOKEN and LAMPS_TLS_* variables."""
        conn = Connection.from_env()
        return cls(conn.target, token=conn.token, tls=conn.tls, timeout_s=timeout_s)

    def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _unary(self, call: Callable[..., _T], request: Any) -> _T:
        try:
            return call(request, timeout=self._timeout_s, metadata=self._metadata)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    def generate(
        self, prompt: str | None = None, **options: Unpack[GenerateOptions]
    ) -> Iterator[Event]:
        """Submit a generation and yield its events, Accepted first and Finished last. Once
        accepted, a broken stream is resumed with Watch, so a scheduler restart loses nothing."""
        request = build_request(prompt, **options)
        yield from self._events(self._stub.Generate(request, metadata=self._metadata))

    def submit(
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
                response = self._unary(self._stub.Submit, request)
                return Submitted(request_id=response.request_id, created=response.created)
            except Unavailable:
                # Only a keyed submission is safe to send again: the scheduler answers a
                # repeat with the first one's id. This rides out a restart or a failover.
                if not idempotency_key or attempt + 1 >= self._reconnect.attempts:
                    raise
                time.sleep(self._reconnect.delay(attempt))
                attempt += 1

    def watch(self, request_id: str, from_offset: int = 0) -> Iterator[Event]:
        """Yield a request's events from `from_offset` until its Finished event, reconnecting
        (from the last offset seen + 1) when the stream breaks."""
        request = pb.WatchRequest(request_id=request_id, from_offset=from_offset)
        first = self._stub.Watch(request, metadata=self._metadata)
        yield from self._events(first, request_id, from_offset)

    def _events(
        self, call: Any, request_id: str | None = None, from_offset: int = 0
    ) -> Iterator[Event]:
        state = Resumption(self._reconnect, request_id=request_id, next_offset=from_offset)
        while True:
            error: grpc.RpcError | None = None
            try:
                for response in call:
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
            time.sleep(state.retry_after(error))
            call = self._stub.Watch(state.watch_request(), metadata=self._metadata)

    def complete(self, prompt: str | None = None, **options: Unpack[GenerateOptions]) -> Result:
        """Run a generation to its end and return the whole of it."""
        return Result.from_events(list(self.generate(prompt, **options)))

    def cancel(self, request_id: str) -> RequestState:
        """Cancel a request wherever it is; returns its state after the call (CANCELLED, or
        the final state it had already reached)."""
        response = self._unary(self._stub.Cancel, pb.CancelRequest(request_id=request_id))
        return state_from_proto(response.state)

    def get_request(self, request_id: str) -> RequestRecord:
        """The scheduler's record of a request."""
        request = pb.GetRequestRequest(request_id=request_id)
        response = self._unary(self._stub.GetRequest, request)
        return RequestRecord.from_proto(response.record)

    def cluster_status(self) -> ClusterStatus:
        """The workers, their KV usage, and the queue."""
        response = self._unary(self._stub.ClusterStatus, pb.ClusterStatusRequest())
        return ClusterStatus.from_proto(response)
