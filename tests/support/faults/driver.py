"""The replaying client of the fault harness, built on the raw stubs so that it sees every offset.

Each arrival of a trace is sent at its time (scaled to wall time) with `Submit` and an idempotency
key of its own; UNAVAILABLE (and a channel the harness itself dropped) is retried with the SAME
key, RESOURCE_EXHAUSTED after the server's retry hint. Once accepted, the request is followed with
`Watch`, resumed from the next offset whenever the stream breaks, until its `Finished` event. When
every request has ended or the drain deadline has passed, `GetRequest` cross-checks each one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc

from lamps.bench.workload import request_arguments
from lamps.client import ResourceExhausted
from lamps.client.errors import from_rpc_error
from lamps.client.options import build_request
from lamps.common.channel import open_channel
from lamps.model.workload import Arrival
from lamps.v1 import common_pb2 as cpb
from lamps.v1 import scheduler_pb2 as pb
from lamps.v1 import scheduler_pb2_grpc as pb_grpc
from tests.support.faults.ledger import RequestLog

SCHEDULER_SERVICE = "lamps.v1.SchedulerService"
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
# Called with (sent, accepted, ended, total).
Progress = Callable[[int, int, int, int], None]


@dataclass(frozen=True)
class DriveSettings:
    """How the driver replays: `time_scale` engine seconds per wall second; the rest in wall
    seconds."""

    time_scale: float
    key_prefix: str
    drain_timeout_s: float = 120.0
    call_timeout_s: float = 5.0
    # Keep submitting a request that is refused for load (after each retry hint)?
    retry_shed: bool = True
    max_shed_retries: int = 50
    # A Submit still failing with UNAVAILABLE this long after the first try is given up.
    give_up_s: float = 60.0
    first_backoff_s: float = 0.05
    max_backoff_s: float = 1.0

    def backoff(self, attempt: int) -> float:
        return float(min(self.max_backoff_s, self.first_backoff_s * 2**attempt))


class Connection:
    """A channel to the scheduler that a fault can drop (every call on it breaks) and reopen."""

    def __init__(self, target: str, token: str | None = None) -> None:
        self.target = target
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.generation = 0
        self._open()

    def _open(self) -> None:
        # With several scheduler replicas, calls go to the one whose health says it leads.
        self.channel = open_channel(self.target, health_service=SCHEDULER_SERVICE)
        self.stub = pb_grpc.SchedulerServiceStub(self.channel)

    async def reconnect(self) -> None:
        """Drop the channel, cancelling every call on it, and open a new one."""
        old = self.channel
        self.generation += 1
        self._open()
        await old.close(None)

    def dropped_since(self, generation: int) -> bool:
        """Whether a cancellation seen by a call begun at `generation` came from a reconnect
        (and not from the caller's own task being cancelled)."""
        task = asyncio.current_task()
        return self.generation != generation and (task is None or task.cancelling() == 0)

    async def close(self) -> None:
        await self.channel.close(None)


@dataclass
class _Counts:
    total: int
    sent: int = 0
    accepted: int = 0
    ended: int = 0


class Driver:
    """Replays arrivals against a scheduler and records each request (`replay`)."""

    def __init__(self, connection: Connection, settings: DriveSettings) -> None:
        self.conn = connection
        self.settings = settings
        self._counts = _Counts(total=0)
        self._waiters: list[tuple[int, asyncio.Event]] = []

    @property
    def sent(self) -> int:
        return self._counts.sent

    def when_sent(self, count: int) -> asyncio.Event:
        """An event set once `count` requests have been sent (at once if they have)."""
        event = asyncio.Event()
        self._waiters.append((count, event))
        self._notify()
        return event

    def _notify(self) -> None:
        for count, event in self._waiters:
            if self._counts.sent >= count:
                event.set()

    async def replay(
        self, arrivals: Sequence[Arrival], progress: Progress | None = None
    ) -> list[RequestLog]:
        """Send every arrival on time, follow each to its end (or the drain deadline), then
        cross-check with GetRequest; returns the logs in arrival order."""
        loop = asyncio.get_running_loop()
        self._counts = _Counts(total=len(arrivals))
        logs = [
            RequestLog(key=f"{self.settings.key_prefix}-{a.request_id}", expected_tokens=0)
            for a in arrivals
        ]
        reporter = loop.create_task(self._report(progress)) if progress else None
        tasks: list[asyncio.Task[None]] = []
        start = loop.time()
        try:
            for arrival, log in zip(arrivals, logs, strict=True):
                delay = start + arrival.time_s / self.settings.time_scale - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                log.expected_tokens = arrival.spec.output_tokens
                log.sent_s = loop.time() - start
                tasks.append(loop.create_task(self._one(arrival, log)))
                self._counts.sent += 1
                self._notify()
            if tasks:
                await asyncio.wait(tasks, timeout=self.settings.drain_timeout_s)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if reporter is not None:
                reporter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reporter
        await asyncio.gather(*(self._cross_check(log) for log in logs if log.accepted))
        if progress is not None:
            counts = self._counts
            progress(counts.sent, counts.accepted, counts.ended, counts.total)
        return logs

    async def _report(self, progress: Progress) -> None:
        while True:
            counts = self._counts
            progress(counts.sent, counts.accepted, counts.ended, counts.total)
            await asyncio.sleep(0.5)

    async def _one(self, arrival: Arrival, log: RequestLog) -> None:
        request = build_request(None, **request_arguments(arrival))
        request.labels["lamps.reliability/key"] = log.key
        request_id = await self._submit(log, request)
        if request_id is None:
            return
        log.accepted_s = asyncio.get_running_loop().time()
        self._counts.accepted += 1
        await self._watch(log, request_id)
        self._counts.ended += 1

    async def _submit(self, log: RequestLog, request: pb.GenerateRequest) -> str | None:
        """The request's id once accepted; None when refused (log.refused says why)."""
        settings, loop = self.settings, asyncio.get_running_loop()
        message = pb.SubmitRequest(request=request, idempotency_key=log.key)
        started, attempt = loop.time(), 0
        while True:
            generation = self.conn.generation
            try:
                response = await self.conn.stub.Submit(
                    message, metadata=self.conn.metadata, timeout=settings.call_timeout_s
                )
                log.request_ids.add(response.request_id)
                log.refused = ""
                return str(response.request_id)
            except grpc.RpcError as exc:
                error = from_rpc_error(exc)
                if isinstance(error, ResourceExhausted):
                    log.shed_answers += 1
                    log.retry_hints.append(error.retry_after_s)
                    if not settings.retry_shed or log.shed_answers > settings.max_shed_retries:
                        log.refused = str(error)
                        return None
                    await asyncio.sleep(error.retry_after_s or settings.backoff(attempt))
                    continue
                if error.code not in RETRYABLE:
                    log.refused = str(error)
                    return None
                log.refused = str(error)
            except asyncio.CancelledError:
                if not self.conn.dropped_since(generation):
                    raise
            if loop.time() - started > settings.give_up_s:
                return None
            await asyncio.sleep(settings.backoff(attempt))
            attempt += 1

    async def _watch(self, log: RequestLog, request_id: str) -> None:
        """Follow the request's events to its end, resuming from the next offset."""
        attempt = 0
        while not log.ended:
            generation = self.conn.generation
            call = self.conn.stub.Watch(
                pb.WatchRequest(request_id=request_id, from_offset=log.next_offset),
                metadata=self.conn.metadata,
            )
            try:
                async for response in call:
                    see(log, response.event)
                    attempt = 0
                    if log.terminal_events:  # the end: nothing follows it
                        break
            except grpc.RpcError as exc:
                if exc.code() not in RETRYABLE:
                    log.anomalies.append(f"Watch failed: {from_rpc_error(exc)}")
                    return
            except asyncio.CancelledError:
                if not self.conn.dropped_since(generation):
                    raise
            finally:
                call.cancel()
            if not log.ended:
                log.resumes += 1
                await asyncio.sleep(self.settings.backoff(attempt))
                attempt += 1

    async def _cross_check(self, log: RequestLog) -> None:
        """GetRequest's view of the request: its state, and no events past the end seen."""
        for request_id in sorted(log.request_ids):
            record = await self._record(request_id)
            if record is None:
                log.recorded_state = "UNKNOWN"
                return
            log.recorded_state = cpb.RequestState.Name(record.state).removeprefix("REQUEST_STATE_")
            if log.ended and record.next_offset != log.next_offset:
                log.anomalies.append(
                    f"record has {record.next_offset} events, the stream ended at {log.next_offset}"
                )

    async def _record(self, request_id: str) -> pb.RequestRecord | None:
        for attempt in range(20):
            try:
                response = await self.conn.stub.GetRequest(
                    pb.GetRequestRequest(request_id=request_id),
                    metadata=self.conn.metadata,
                    timeout=self.settings.call_timeout_s,
                )
                return response.record
            except grpc.RpcError as exc:
                if exc.code() not in RETRYABLE:
                    return None
            await asyncio.sleep(self.settings.backoff(attempt))
        return None


def see(log: RequestLog, event: cpb.RequestEvent) -> None:
    """Apply one event of the request's stream to its log, noting anything out of order."""
    if event.offset < log.next_offset:
        log.anomalies.append(f"offset {event.offset} again (expected {log.next_offset})")
        return
    if event.offset > log.next_offset:
        log.anomalies.append(f"offsets {log.next_offset}-{event.offset - 1} skipped")
    if log.ended:
        log.anomalies.append(f"event at offset {event.offset} after the end")
    log.next_offset = event.offset + 1
    kind = event.WhichOneof("kind")
    if kind == "tokens":
        delta = event.tokens
        if delta.start_index != log.tokens:
            log.anomalies.append(f"token index {delta.start_index}, expected {log.tokens}")
        log.tokens = max(log.tokens, delta.start_index + len(delta.token_ids))
    elif kind == "tool_call_finished":
        result = event.tool_call_finished.result
        if result.HasField("error") and result.error.code != cpb.TOOL_ERROR_CODE_UNSPECIFIED:
            log.tool_errors.append(result.error.message)
    elif kind == "finished":
        end = event.finished
        log.terminal_events += 1
        log.state = cpb.RequestState.Name(end.state).removeprefix("REQUEST_STATE_")
        log.error = end.error_message
        log.completion_tokens = end.usage.completion_tokens
