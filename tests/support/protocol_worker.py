"""A worker at the protocol level: it speaks ConnectRequest/ConnectResponse on the WorkerGateway as
the worker service does, with KV blocks modelled simply (a request holds the blocks of its
context). In `auto` mode it plays each admitted request as the replay script (or a few tokens)
says: tokens, then an Intercepted tool call under the strategy it was given, then on Resume the
next segment, and a Completed at the end. Without `auto` a test drives every update itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from grpc import aio

from lamps.common.channel import open_channel
from lamps.v1 import common_pb2 as cpb
from lamps.v1 import scheduler_pb2 as pb
from lamps.v1 import scheduler_pb2_grpc as pb_grpc

EOF = aio.EOF  # type: ignore[attr-defined]  # missing from the stubs
ALL_STRATEGIES = (cpb.STRATEGY_PRESERVE, cpb.STRATEGY_DISCARD, cpb.STRATEGY_SWAP)


@dataclass
class Held:
    """A request the worker holds."""

    request_id: str
    context: int
    generated: int
    segments: list[cpb.ReplaySegment]
    max_new: int
    strategy: cpb.Strategy.ValueType
    paused: bool = False
    # Updates sent since the last instruction about it, re-sent after a reconnect (a report may
    # have been lost with the stream).
    log: list[pb.RequestUpdate] = field(default_factory=list)


@dataclass
class ProtocolWorker:
    """One worker connection (see the module docstring)."""

    target: str
    worker_id: str
    total_blocks: int = 4096
    block_size: int = 16
    strategies: tuple[cpb.Strategy.ValueType, ...] = ALL_STRATEGIES
    max_running: int = 64
    auto: bool = True
    # Seconds each segment takes to generate in auto mode.
    segment_seconds: float = 0.0
    tokens_per_request: int = 3
    token: str | None = None
    held: dict[str, Held] = field(default_factory=dict)
    received: list[pb.ConnectResponse] = field(default_factory=list)
    registered: pb.Registered | None = None
    _channel: aio.Channel | None = None
    _call: aio.StreamStreamCall[pb.ConnectRequest, pb.ConnectResponse] | None = None
    _reader: asyncio.Task[None] | None = None
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)
    _writing: asyncio.Lock = field(default_factory=asyncio.Lock)
    _tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    closed_by_server: bool = False
    # Reports at the interval the scheduler asks for, as a live worker does; off, it goes silent.
    heartbeat: bool = True
    draining: bool = False
    _beat: asyncio.Task[None] | None = None

    # Connection ------------------------------------------------------------------------------

    async def connect(self, held: Iterable[str] | None = None) -> pb.Registered:
        """Open the stream and register; raises the AioRpcError of a refused registration."""
        self._channel = open_channel(self.target, token=self.token)
        stub = pb_grpc.WorkerGatewayServiceStub(self._channel)
        # The stubs type only the iterator form; aio also allows a call to write to.
        self._call = stub.Connect()  # type: ignore[call-arg]
        held_ids = list(self.held) if held is None else list(held)
        await self._call.write(
            pb.ConnectRequest(
                register=pb.Register(
                    worker_id=self.worker_id,
                    model="test-model",
                    engine="sim",
                    kv=self.kv(),
                    strategies=self.strategies,
                    max_running=self.max_running,
                    held_request_ids=held_ids,
                )
            )
        )
        first = await self._call.read()
        if first is EOF:
            await self._call.wait_for_connection()
            await self._call.code()  # the status the server aborted with
            await self._call.read()  # raises it
            raise AssertionError("the stream ended without a Registered")
        assert isinstance(first, pb.ConnectResponse)
        self.registered = first.registered
        for request_id in first.registered.drop_request_ids:
            self._drop(request_id)
        self._reader = asyncio.get_running_loop().create_task(self._read())
        unconfirmed = [update for held in self.held.values() for update in held.log]
        if unconfirmed:
            await self.report(*unconfirmed)
        if self.heartbeat:
            self._beat = asyncio.get_running_loop().create_task(
                self._heartbeat(first.registered.report_interval_seconds)
            )
        return first.registered

    async def _heartbeat(self, interval: float) -> None:
        with contextlib.suppress(AssertionError, aio.AioRpcError, asyncio.InvalidStateError):
            while True:
                await asyncio.sleep(interval)
                await self.report()

    async def close(self) -> None:
        """Close the stream (as a crashed or partitioned worker would, without a word)."""
        if self._beat is not None:
            self._beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beat
            self._beat = None
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None
        if self._call is not None:
            self._call.cancel()
            self._call = None
        if self._channel is not None:
            await self._channel.close(None)
            self._channel = None

    async def stop(self) -> None:
        """Close and forget everything (the process is gone)."""
        for task in self._tasks.values():
            task.cancel()
        self._tasks.clear()
        await self.close()

    async def _read(self) -> None:
        assert self._call is not None
        try:
            while (message := await self._call.read()) is not EOF:
                assert isinstance(message, pb.ConnectResponse)
                self.received.append(message)
                self._arrived.set()
                self._handle(message)
        except aio.AioRpcError:
            pass
        self.closed_by_server = True
        self._arrived.set()

    # Reports ---------------------------------------------------------------------------------

    def kv(self) -> cpb.KvUsage:
        used = sum(
            math.ceil(max(h.context + h.generated, 1) / self.block_size) for h in self.held.values()
        )
        return cpb.KvUsage(
            block_size=self.block_size,
            total_blocks=self.total_blocks,
            free_blocks=max(self.total_blocks - used, 0),
            cpu_total_blocks=1024,
            cpu_free_blocks=1024,
        )

    async def report(self, *updates: pb.RequestUpdate, draining: bool | None = None) -> None:
        """Send a report; `draining` once set stays set in later reports (heartbeats too)."""
        if draining is not None:
            self.draining = draining
        report = pb.Report(kv=self.kv(), updates=updates, draining=self.draining)
        await self.send(pb.ConnectRequest(report=report))

    async def send(self, message: pb.ConnectRequest) -> None:
        # gRPC allows one write in flight per stream; reports come from several tasks.
        async with self._writing:
            assert self._call is not None, "not connected"
            await self._call.write(message)

    async def expect(self, kind: str, within: float = 10.0, start: int = 0) -> pb.ConnectResponse:
        """The first message of `kind` received (from index `start` on), waiting for it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            for message in self.received[start:]:
                if message.WhichOneof("message") == kind:
                    return message
            remaining = deadline - loop.time()
            if remaining <= 0:
                kinds = [m.WhichOneof("message") for m in self.received]
                raise AssertionError(f"no {kind} message arrived; got {kinds}")
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)

    def of_kind(self, kind: str) -> list[pb.ConnectResponse]:
        return [m for m in self.received if m.WhichOneof("message") == kind]

    # Auto mode -------------------------------------------------------------------------------

    def _handle(self, message: pb.ConnectResponse) -> None:
        kind = message.WhichOneof("message")
        if kind == "admit":
            self._admitted(message.admit)
        elif kind == "resume":
            held = self.held.get(message.resume.request_id)
            if held is not None:
                held.context += message.resume.append_tokens
                held.paused = False
                held.log = []
                if held.segments:
                    held.segments.pop(0)
                self._play(held)
        elif kind == "pause" and message.pause.strategy == cpb.STRATEGY_DISCARD:
            held = self.held.pop(message.pause.request_id, None)
            if held is not None and self.auto:
                self._later(self._released(held, pb.RELEASE_REASON_DISCARDED))
        elif kind == "preempt":
            held = self.held.pop(message.preempt.request_id, None)
            if held is not None and self.auto:
                self._later(self._released(held, pb.RELEASE_REASON_PREEMPTED))
        elif kind == "abort":
            self._drop(message.abort.request_id)

    def _drop(self, request_id: str) -> None:
        self.held.pop(request_id, None)
        task = self._tasks.pop(request_id, None)
        if task is not None:
            task.cancel()

    def _admitted(self, admit: pb.Admit) -> None:
        context = len(admit.context_token_ids) or math.ceil(len(admit.prompt) / 4)
        held = Held(
            request_id=admit.request_id,
            context=context + admit.append_tokens,
            generated=admit.generated_tokens,
            segments=list(admit.replay.segments),
            max_new=admit.max_new_tokens,
            strategy=admit.strategy,
        )
        self.held[admit.request_id] = held
        self._play(held)

    def _play(self, held: Held) -> None:
        if self.auto:
            self._tasks[held.request_id] = asyncio.get_running_loop().create_task(
                self._segment(held)
            )

    def _later(self, coroutine: object) -> None:
        asyncio.get_running_loop().create_task(coroutine)  # type: ignore[arg-type]

    async def _segment(self, held: Held) -> None:
        if self.segment_seconds:
            await asyncio.sleep(self.segment_seconds)
        if self.held.get(held.request_id) is not held:
            return
        segment = held.segments[0] if held.segments else None
        count = segment.output_tokens if segment is not None else self.tokens_per_request
        count = min(count, max(held.max_new, 0))
        request_id = held.request_id
        updates = [
            pb.RequestUpdate(request_id=request_id, started=pb.Started()),
            pb.RequestUpdate(
                request_id=request_id,
                tokens=cpb.TokenDelta(
                    token_ids=[7] * count, text="x" * count, start_index=held.generated
                ),
            ),
        ]
        held.generated += count
        if segment is not None and segment.tool:
            arguments = {
                "duration_seconds": segment.tool_duration_seconds,
                "output_tokens": segment.tool_output_tokens,
            }
            updates.append(
                pb.RequestUpdate(
                    request_id=request_id,
                    intercepted=pb.Intercepted(
                        call=cpb.ToolCall(
                            call_id=f"{request_id}-{held.generated}",
                            name=segment.tool,
                            arguments_json=json.dumps(arguments),
                        ),
                        context_tokens=held.context + held.generated,
                        strategy=held.strategy,
                    ),
                )
            )
            held.paused = True
            held.log.extend(updates)
            if held.strategy == cpb.STRATEGY_DISCARD:
                del self.held[request_id]
                updates.append(self._release_update(held, pb.RELEASE_REASON_DISCARDED))
        else:
            del self.held[request_id]
            updates.append(
                pb.RequestUpdate(
                    request_id=request_id,
                    completed=pb.Completed(
                        reason=cpb.FINISH_REASON_STOP, completion_tokens=held.generated
                    ),
                )
            )
        self._tasks.pop(request_id, None)
        with contextlib.suppress(AssertionError, aio.AioRpcError, asyncio.InvalidStateError):
            await self.report(*updates)

    def _release_update(self, held: Held, reason: int) -> pb.RequestUpdate:
        return pb.RequestUpdate(
            request_id=held.request_id,
            released=pb.Released(
                reason=reason,  # type: ignore[arg-type]
                context_token_ids=[7] * (held.context + held.generated),
                generated_tokens=held.generated,
            ),
        )

    async def _released(self, held: Held, reason: int) -> None:
        with contextlib.suppress(AssertionError, aio.AioRpcError, asyncio.InvalidStateError):
            await self.report(self._release_update(held, reason))
