"""The worker agent: connects an engine to the scheduler's WorkerGateway and keeps it connected.

One bidirectional stream per connection (protos/lamps/v1/scheduler.proto): the agent sends
`Register`, waits for `Registered`, then sends `Report`s (a heartbeat every report interval with
KV usage and the token deltas since the last one, and at once when a request starts, calls a tool,
ends or is handed back) while it applies the scheduler's instructions as they come.

Delivery is at least once. gRPC does not say which messages the other side read before a stream
broke, so every update about a request stays in that request's journal while the engine holds it
(and for one lease after it ends), and a reconnect re-sends the journals, compacted, before
anything new. Receivers drop what they already have: token deltas by `start_index`, tool calls by
`call_id`, ends of requests they no longer track. `Register.held_request_ids` tells the scheduler
what this worker still holds; `Registered.drop_request_ids` tells the worker what to let go.

An instruction the engine refuses (an unknown id, a duplicate admission, a strategy it cannot
carry out) is answered with a `Refused` update and disturbs nothing else. On SIGTERM, and on the
scheduler's `Drain`, the agent reports `draining`, refuses new admissions, lets what it holds
finish for the drain period, then hands the rest back (`Released(DRAINED)`); at shutdown it then
sends a last report, half-closes the stream and waits for the scheduler to close its side.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc import aio

from lamps.common.channel import open_channel
from lamps.model.strategy import Strategy
from lamps.v1 import scheduler_pb2 as pb
from lamps.v1 import scheduler_pb2_grpc as pb_grpc
from lamps.worker import metrics, protocol
from lamps.worker.config import WorkerConfig
from lamps.worker.engines.base import (
    Completed,
    DuplicateRequestError,
    Engine,
    EngineError,
    EngineEvent,
    Failed,
    Released,
    ReleaseReason,
    Tokens,
    UnknownRequestError,
    UnsupportedStrategyError,
)
from lamps.worker.outbox import Outbox

log = logging.getLogger(__name__)

FIRST_RETRY_S = 0.1
# Kept after a request ends, in case the report that said so was lost, when the scheduler gives
# no lease.
DEFAULT_LEASE_S = 30.0
# At shutdown: how long the last report may wait for a connection, and the close for its answer.
FINAL_REPORT_S = 10.0
CLOSE_S = 5.0
# A scheduler that takes longer than this to answer a Register is treated as unreachable.
REGISTER_TIMEOUT_S = 30.0
# Of several scheduler addresses, the worker connects to the one serving this: the leader.
GATEWAY_SERVICE = "lamps.v1.WorkerGatewayService"
# The end of a stream read with `read()` (grpc's typing stubs do not declare it).
EOF: Any = aio.EOF  # type: ignore[attr-defined]


class StreamEndedError(ConnectionError):
    """The stream to the scheduler ended with this status."""

    def __init__(self, code: grpc.StatusCode, details: str | None) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class RegistrationError(ConnectionError):
    """The scheduler answered a Register with something other than Registered."""


class Agent:
    """Drives one engine on behalf of the scheduler (see the module docstring)."""

    def __init__(self, engine: Engine, config: WorkerConfig) -> None:
        self.engine = engine
        self.config = config
        self.worker_id = config.resolved_worker_id
        self.registered = asyncio.Event()
        self._interval = config.report_interval_seconds
        self._lease = DEFAULT_LEASE_S
        self._outbox = Outbox()
        self._flush = asyncio.Event()
        self._ended = asyncio.Event()
        self._draining = False
        self._stopping = False
        self._connected = False
        self._session_registered = False
        self._background: set[asyncio.Task[Any]] = set()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Start the engine and the connection; on exit drain, say goodbye and close."""
        await self.engine.start()
        pump = asyncio.create_task(self._pump(), name="engine-events")
        connection = asyncio.create_task(self._stay_connected(), name="scheduler-connection")
        try:
            yield
        finally:
            try:
                await self.drain(self.config.drain_seconds)
                await self._settled()
                self._stopping = True
                self._flush.set()
                # With no stream and nothing retained, there is nobody to say goodbye to.
                if self._connected or self._outbox.retained:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(connection), FINAL_REPORT_S + CLOSE_S)
                if self._outbox:
                    log.error(
                        "stopping with updates the scheduler may not have: its lease expiry "
                        "re-queues the requests concerned",
                        extra={"updates": len(self._outbox)},
                    )
            except Exception:
                log.exception("the worker did not stop cleanly")
                raise
            finally:
                for task in (connection, *self._background):
                    task.cancel()
                await self.engine.close()
                await pump
                metrics.CONNECTED.set(0)

    async def wait_registered(self) -> None:
        await self.registered.wait()

    # Draining -----------------------------------------------------------------------------------

    async def drain(self, grace_s: float) -> None:
        """Take no new work, let held requests finish for `grace_s`, hand back the rest."""
        if not self._draining:
            self._draining = True
            metrics.DRAINING.set(1)
            self._flush.set()
            log.info("draining", extra={"held": len(self.engine.held()), "grace_seconds": grace_s})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        while self.engine.held() and (left := deadline - loop.time()) > 0:
            self._ended.clear()
            with contextlib.suppress(TimeoutError):
                # Bounded: another drain may clear the event this one waits on.
                await asyncio.wait_for(self._ended.wait(), min(left, 0.1))
        handed_back = 0
        for request_id in self.engine.held():
            with contextlib.suppress(UnknownRequestError):  # it ended meanwhile
                await self.engine.preempt(request_id, ReleaseReason.DRAINED)
                handed_back += 1
        await self._settled()
        self._flush.set()
        log.info("drained", extra={"handed_back": handed_back})

    async def _settled(self, timeout_s: float = 5.0) -> None:
        """Wait until the end of every request the engine let go of is in its journal (the
        engine's events reach the agent through a queue, a moment after the engine acted)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while (left := deadline - loop.time()) > 0:
            if self._outbox.settled(self.engine.held()):
                return
            self._ended.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ended.wait(), min(left, 0.05))
        log.warning("the engine let requests go without saying how they ended")

    # Engine events ------------------------------------------------------------------------------

    async def _pump(self) -> None:
        try:
            async for event in self.engine.events():
                self._record(event)
        except Exception:
            log.exception("the engine's event stream failed")
            raise

    def _record(self, event: EngineEvent) -> None:
        now = asyncio.get_running_loop().time()
        if self._outbox.record(protocol.request_update(event), now):
            self._flush.set()
        if isinstance(event, Tokens):
            metrics.TOKENS_GENERATED.inc(len(event.token_ids))
        if isinstance(event, Released | Completed | Failed):
            self._ended.set()
            if isinstance(event, Released):
                metrics.RELEASED.labels(event.reason.value).inc()

    # The connection -----------------------------------------------------------------------------

    async def _stay_connected(self) -> None:
        """Connect, and reconnect with exponential backoff until a clean goodbye."""
        delay = FIRST_RETRY_S
        while True:
            self._session_registered = False
            try:
                await self._session()
                return
            except aio.AioRpcError as exc:
                self._log_stream_error(exc.code(), exc.details())
            except StreamEndedError as exc:
                self._log_stream_error(exc.code, exc.details)
            except RegistrationError as exc:
                log.error("the scheduler did not register this worker: %s", exc)
            except ConnectionError as exc:
                log.warning("lost the scheduler: %s", exc)
            except Exception:
                # Whatever it was, a worker that stops reconnecting strands what it holds.
                log.exception("unexpected error on the stream to the scheduler; reconnecting")
            finally:
                self._connected = False
                metrics.CONNECTED.set(0)
            if self._session_registered:
                metrics.RECONNECTS.inc()
                delay = FIRST_RETRY_S
            # Full jitter: a restarted scheduler is not hit by every worker at once.
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self.config.reconnect_max_seconds)

    def _log_stream_error(self, code: grpc.StatusCode, details: str | None) -> None:
        where = self.config.scheduler_address
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            log.error(
                "the scheduler at %s refused this worker's credentials (%s: %s): check "
                "--cluster-token / LAMPS_CLUSTER_TOKEN",
                where,
                code.name,
                details,
            )
        elif code is grpc.StatusCode.UNAVAILABLE:
            log.warning("cannot reach the scheduler at %s: %s", where, details)
        else:
            log.warning("the stream to the scheduler at %s ended: %s %s", where, code.name, details)

    async def _session(self) -> None:
        """One connection: register, then report and obey until it breaks (raises) or, at
        shutdown, closes cleanly (returns)."""
        token = self.config.cluster_token or None
        tls = self.config.scheduler_client_tls
        async with open_channel(
            self.config.scheduler_address, token=token, tls=tls, health_service=GATEWAY_SERVICE
        ) as channel:
            # No request iterator: the agent writes and reads the stream itself.
            stub: Any = pb_grpc.WorkerGatewayServiceStub(channel)
            call = stub.Connect()
            await _send(call, pb.ConnectRequest(register=self._register_message()))
            try:
                first = await asyncio.wait_for(call.read(), REGISTER_TIMEOUT_S)
            except TimeoutError:
                raise ConnectionError(
                    f"no answer to Register within {REGISTER_TIMEOUT_S:g} s"
                ) from None
            if first is EOF:
                raise ConnectionError("the scheduler closed the stream without answering Register")
            if first.WhichOneof("message") != "registered":
                raise RegistrationError(_describe_refusal(first))
            await self._on_registered(first.registered)
            reader = asyncio.create_task(self._read(call), name="scheduler-reader")
            writer = asyncio.create_task(self._write(call), name="scheduler-writer")
            try:
                done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
                if writer in done:
                    writer.result()  # raises if the stream broke while writing
                    # A clean goodbye: the scheduler has read everything once it closes its side.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(reader, CLOSE_S)
                    return
                reader.result()
                raise ConnectionError("the scheduler ended the stream")
            finally:
                reader.cancel()
                writer.cancel()
                call.cancel()

    @property
    def draining(self) -> bool:
        """Taking no new work (SIGTERM or the scheduler's Drain)."""
        return self._draining

    def _register_message(self) -> pb.Register:
        engine = self.engine
        register = pb.Register(
            worker_id=self.worker_id,
            model=engine.model,
            engine=engine.name,
            kv=protocol.kv_usage(engine.kv()),
            strategies=[protocol.STRATEGY_TO_PB[s] for s in sorted(engine.strategies)],
            max_running=engine.max_running,
            # Also what ended while the stream was down: the scheduler then waits for the end
            # this worker re-sends, instead of re-queueing a request that already finished.
            held_request_ids=sorted(set(engine.held()) | set(self._outbox.journaled())),
        )
        if engine.profile is not None:
            can_swap = Strategy.SWAP in engine.strategies
            register.profile.CopyFrom(protocol.cost_profile(engine.profile, can_swap=can_swap))
        return register

    async def _on_registered(self, registered: pb.Registered) -> None:
        if registered.report_interval_seconds > 0:
            self._interval = registered.report_interval_seconds
        if registered.lease_seconds > 0:
            self._lease = registered.lease_seconds
        for request_id in registered.drop_request_ids:
            with contextlib.suppress(UnknownRequestError):
                await self.engine.abort(request_id)
            self._outbox.forget(request_id)
        self._outbox.resend(asyncio.get_running_loop().time())
        self._flush.set()
        first = not self.registered.is_set()
        self.registered.set()
        self._connected = self._session_registered = True
        metrics.CONNECTED.set(1)
        log.info(
            "registered" if first else "registered again",
            extra={
                "worker_id": registered.worker_id or self.worker_id,
                "held": len(self.engine.held()),
                "dropped": len(registered.drop_request_ids),
                "report_interval_seconds": self._interval,
            },
        )

    async def _write(self, call: Any) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._flush.wait(), self._interval)
            self._flush.clear()
            self._outbox.prune(asyncio.get_running_loop().time(), self._lease)
            updates = self._outbox.take()
            kv = self.engine.kv()
            self._publish(kv)
            report = pb.Report(kv=protocol.kv_usage(kv), updates=updates, draining=self._draining)
            try:
                await _send(call, pb.ConnectRequest(report=report))
            except BaseException:
                # Unsent: they go out again with the journals after the reconnect.
                self._outbox.put_back(updates)
                raise
            if self._stopping and not self._outbox:
                await call.done_writing()
                return

    def _publish(self, kv: Any) -> None:
        metrics.HELD_REQUESTS.set(len(self.engine.held()))
        metrics.KV_BLOCKS_TOTAL.set(kv.total_blocks)
        metrics.KV_BLOCKS_FREE.set(kv.free_blocks)
        if kv.total_blocks:
            metrics.KV_USAGE.set(1.0 - kv.free_blocks / kv.total_blocks)

    async def _read(self, call: Any) -> None:
        while (message := await call.read()) is not EOF:
            await self._apply(message)

    # Instructions -------------------------------------------------------------------------------

    async def _apply(self, message: pb.ConnectResponse) -> None:
        kind = message.WhichOneof("message")
        metrics.INSTRUCTIONS.labels(kind or "empty").inc()
        if kind == "drain":
            grace = message.drain.grace_seconds
            task = asyncio.create_task(self.drain(grace), name="drain")
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            return
        if kind == "rejected":
            rejected = message.rejected
            log.error(
                "the scheduler rejected a report: %s",
                rejected.message,
                extra={"request_id": rejected.request_id, "code": rejected.code},
            )
            return
        if kind == "registered":
            await self._on_registered(message.registered)
            return
        if kind not in ("admit", "resume", "pause", "preempt", "abort"):
            log.warning("ignoring an instruction this worker does not know: %s", kind)
            return
        body = getattr(message, kind)
        try:
            await self._obey(kind, body)
        except UnknownRequestError as exc:
            if self._outbox.has(body.request_id):
                # It just ended here and its end is on its way: NOT_FOUND would have the
                # scheduler re-queue a request that finished.
                text = f"{exc}: it has ended and its end is being reported"
                self._refuse(body.request_id, kind, grpc.StatusCode.FAILED_PRECONDITION, text)
            else:
                self._refuse(body.request_id, kind, grpc.StatusCode.NOT_FOUND, str(exc))
        except DuplicateRequestError as exc:
            self._refuse(body.request_id, kind, grpc.StatusCode.ALREADY_EXISTS, str(exc))
        except (UnsupportedStrategyError, protocol.BadInstructionError) as exc:
            self._refuse(body.request_id, kind, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except EngineError as exc:
            self._refuse(body.request_id, kind, grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except Exception as exc:
            # An engine bug: say so about this request and keep serving the others.
            log.exception("the engine failed on %s", kind, extra={"request_id": body.request_id})
            text = f"the worker's engine failed: {type(exc).__name__}: {exc}"
            self._refuse(body.request_id, kind, grpc.StatusCode.INTERNAL, text)

    async def _obey(self, kind: str, body: Any) -> None:
        engine = self.engine
        if kind == "admit":
            if self._draining:
                self._refuse(
                    body.request_id,
                    kind,
                    grpc.StatusCode.UNAVAILABLE,
                    f"worker {self.worker_id} is draining and takes no new work",
                )
                return
            spec = protocol.admit_spec(body)
            fresh = spec.request_id not in engine.held()  # a duplicate keeps its journal
            if fresh:
                self._outbox.open(spec.request_id)
            try:
                await engine.admit(spec)
            except BaseException:  # refused, or cancelled while the engine tokenized
                if fresh:
                    self._outbox.forget(spec.request_id)
                raise
            if self.draining:  # the drain began while the engine admitted it: hand it back
                await engine.preempt(spec.request_id, ReleaseReason.DRAINED)
        elif kind == "resume":
            await engine.resume(body.request_id, body.append_text, body.append_tokens)
        elif kind == "pause":
            await engine.pause(body.request_id, protocol.strategy_from_pb(body.strategy))
        elif kind == "preempt":
            await engine.preempt(body.request_id)
        else:
            await engine.abort(body.request_id)
            self._outbox.forget(body.request_id)

    def _refuse(self, request_id: str, instruction: str, code: grpc.StatusCode, text: str) -> None:
        metrics.REFUSED.labels(instruction).inc()
        log.warning(
            "refused %s: %s", instruction, text, extra={"request_id": request_id, "code": code.name}
        )
        self._outbox.queue(protocol.refused(request_id, instruction, code.value[0], text))
        self._flush.set()


async def _send(call: Any, message: pb.ConnectRequest) -> None:
    """Write to the stream; a stream that already ended says why as a ConnectionError."""
    try:
        await call.write(message)
    except asyncio.InvalidStateError:
        # grpc.aio reports a write after the call failed this way (under uvloop, often before the
        # write's own error): ask the call for its status instead.
        raise StreamEndedError(await call.code(), await call.details()) from None


def _describe_refusal(message: pb.ConnectResponse) -> str:
    if message.WhichOneof("message") == "rejected":
        code = message.rejected.code
        name = next((c.name for c in grpc.StatusCode if c.value[0] == code), str(code))
        return f"{name}: {message.rejected.message}"
    return f"expected Registered, got {message.WhichOneof('message') or 'an empty message'}"
