"""The `sim` engine: `lamps.model`'s paged-KV engine model run in scaled real time.

Scheduling is the engine model's, which behaves like vLLM: KV memory in blocks, continuous batching
with chunked prefill, iteration times from the cost profile, preemption of the lowest-ranked running
request when decoding runs out of blocks, Preserve, Discard and Swap over a link of the profile's
bandwidth. This class adds the clock and the I/O: a loop runs one iteration, sleeps its duration
divided by `time_scale`, then reports what came of it as events.

Admitted requests wait here, in rank order, until their context fits (the scheduler places by the
free blocks of the last report, which may be stale); a request the engine preempts is handed back
(`Released(PREEMPTED)`) so the scheduler can place it anywhere, where vLLM would keep it in its own
queue. Tokens come from `synthetic`: deterministic ids and text, tool calls where a replay script
puts them or, without one, where the synthetic model makes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import heapq
import itertools
import logging
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

from lamps.model.cost import CostModel, get_profile
from lamps.model.engine import EngineModel, Iteration, Phase, Sequence
from lamps.model.strategy import Strategy
from lamps.worker.config import WorkerConfig
from lamps.worker.engines import synthetic
from lamps.worker.engines.base import (
    AdmitSpec,
    Completed,
    DuplicateRequestError,
    Engine,
    EngineError,
    EngineEvent,
    Failed,
    FinishReason,
    KvReport,
    Released,
    ReleaseReason,
    ReplaySegment,
    Started,
    Tokens,
    ToolCalled,
    UnknownRequestError,
)

log = logging.getLogger(__name__)

_GENERATING = (Phase.PREFILL, Phase.DECODE, Phase.STOPPED)
_NO_SEGMENT = synthetic.Segment((), synthetic.Boundary.END)
# Real seconds the clock may fall behind real time before the lag is forgiven.
MAX_LAG_S = 0.1
# Real seconds between token events of a decoding request (a first token and a segment's last go
# out at once): per-iteration events for a full batch would cost more than the iterations, and
# the agent batches tokens into reports every report interval anyway.
TOKEN_FLUSH_S = 0.05


class _State(enum.Enum):
    WAITING = "waiting"  # admitted (or back from Swap) and waiting for memory here
    RUNNING = "running"
    IN_TOOL = "in_tool"


@dataclass(eq=False)
class _Request:
    spec: AdmitSpec
    seq: Sequence
    context: list[int]
    seed: int
    limit: int  # total generated tokens allowed over the whole request
    generated: int
    strategy: Strategy
    replay: deque[ReplaySegment]
    replaying: bool
    recomputed: int
    prompt_tokens: int
    state: _State = _State.WAITING
    segment: synthetic.Segment = _NO_SEGMENT
    emitted: int = 0  # tokens of `segment` reported so far
    started: bool = False
    queued: int = 0  # bumped on each wait and drop, so stale heap entries are skipped

    @property
    def request_id(self) -> str:
        return self.spec.request_id


class SimEngine(Engine):
    """See the module docstring."""

    name = "sim"

    def __init__(
        self,
        cost: CostModel,
        *,
        model: str = "sim",
        time_scale: float = 1.0,
        max_running: int = 256,
        seed: int = 0,
        max_model_len: int = 0,
    ) -> None:
        if not time_scale > 0:
            raise ValueError("time_scale must be above 0")
        self._cost = cost
        self._model_name = model
        self._scale = time_scale
        self._max_running = max_running
        self._seed = seed
        self._model = EngineModel(cost)
        # The longest context: the model's limit, and what one request can hold of the cache.
        fits = self._model.admit_limit - cost.block_size
        self._max_context = min(max_model_len, fits) if max_model_len else fits
        self._requests: dict[str, _Request] = {}
        self._owners: dict[int, _Request] = {}  # id(Sequence) -> its request
        self._waiting: list[tuple[float, int, int, _Request]] = []
        self._order = itertools.count()
        self._queue: asyncio.Queue[EngineEvent | None] = asyncio.Queue()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._t0 = 0.0
        self._clock = 0.0
        self._last_flush = 0.0
        self._closed = False
        strategies = {Strategy.PRESERVE, Strategy.DISCARD}
        if cost.cpu_swap_tokens >= cost.block_size:
            strategies.add(Strategy.SWAP)
        self._strategies = frozenset(strategies)

    @classmethod
    def from_config(cls, config: WorkerConfig) -> SimEngine:
        cost = get_profile(config.profile)
        kv_tokens = cost.kv_capacity_tokens
        if config.kv_cache_bytes:
            kv_tokens = config.kv_cache_bytes // cost.kv_bytes_per_token
        cost = dataclasses.replace(
            cost,
            block_size=config.block_size,
            kv_capacity_tokens=kv_tokens,
            cpu_swap_bytes=config.swap_space_bytes or cost.cpu_swap_bytes,
        )
        return cls(
            cost,
            model=config.model,
            time_scale=config.time_scale,
            max_running=config.max_running,
            seed=config.seed,
            max_model_len=config.max_model_len,
        )

    # What the agent reads ------------------------------------------------------------------------

    @property
    def model(self) -> str:
        return self._model_name

    @property
    def strategies(self) -> frozenset[Strategy]:
        return self._strategies

    @property
    def max_running(self) -> int:
        return self._max_running

    @property
    def profile(self) -> CostModel:
        return self._cost

    def kv(self) -> KvReport:
        block = self._cost.block_size
        return KvReport(
            block_size=block,
            total_blocks=self._model.capacity // block,
            free_blocks=max(self._model.capacity - self._model.used, 0) // block,
            cpu_total_blocks=self._cost.cpu_swap_tokens // block,
            cpu_free_blocks=max(self._model.cpu_free_tokens, 0) // block,
        )

    def held(self) -> list[str]:
        return list(self._requests)

    def events(self) -> AsyncIterator[EngineEvent]:
        return self._stream_events()

    async def _stream_events(self) -> AsyncIterator[EngineEvent]:
        while (event := await self._queue.get()) is not None:
            yield event

    # Lifecycle -----------------------------------------------------------------------------------

    async def start(self) -> None:
        self._t0 = asyncio.get_running_loop().time()
        self._task = asyncio.create_task(self._run(), name="sim-engine")

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._queue.put_nowait(None)

    # Instructions --------------------------------------------------------------------------------

    async def admit(self, spec: AdmitSpec) -> None:
        if self._task is None or self._closed:
            raise EngineError("the engine is not running (start() it first; close() ends it)")
        if spec.request_id in self._requests:
            raise DuplicateRequestError(f"{spec.request_id}: already admitted to this engine")
        self._check_strategy(spec.strategy)
        context = list(spec.context_token_ids) or synthetic.encode(spec.prompt)
        req = self._new_request(spec, context)
        if not context:
            self._emit(Failed(spec.request_id, "empty prompt: nothing to generate from"))
            return
        req.context.extend(self._appended(req, spec.append_text, spec.append_tokens))
        req.seq.context_tokens = len(req.context)
        req.prompt_tokens = len(req.context)
        if len(req.context) > self._max_context:
            self._emit(Failed(spec.request_id, self._too_long(len(req.context))))
            return
        self._requests[spec.request_id] = req
        self._owners[id(req.seq)] = req
        if not self._next_segment(req):
            return
        self._enqueue(req)

    async def resume(self, request_id: str, append_text: str = "", append_tokens: int = 0) -> None:
        req = self._get(request_id)
        if req.state is not _State.IN_TOOL:
            raise EngineError(f"{request_id}: not paused in a tool call ({req.state.value})")
        appended = self._appended(req, append_text, append_tokens)
        req.context.extend(appended)
        if not self._next_segment(req):
            return
        now = self._now()
        self._model.complete_transfers(now)
        if self._model.tool_returned(req.seq, len(appended), len(req.segment.token_ids), now):
            req.state = _State.RUNNING
        elif req.seq.phase is Phase.SWAPPED:
            self._enqueue(req)
        else:  # not even preemption made room for its KV: it was freed
            self._release(req, ReleaseReason.PREEMPTED)
        self._release_evicted()
        self._wake.set()

    async def pause(self, request_id: str, strategy: Strategy) -> None:
        self._check_strategy(strategy)
        req = self._get(request_id)
        req.strategy = strategy
        if req.state is not _State.IN_TOOL:
            return  # applies at its next tool call
        phase = req.seq.phase
        if phase is Phase.PAUSED and strategy is not Strategy.PRESERVE:
            applied = self._model.pause(req.seq, strategy, self._now())
            if applied is Strategy.DISCARD:
                self._release(req, ReleaseReason.DISCARDED)
        elif phase in (Phase.SWAPPING_OUT, Phase.SWAPPED):
            if strategy is Strategy.DISCARD:
                self._model.abort(req.seq)
                self._release(req, ReleaseReason.DISCARDED)
            elif strategy is Strategy.PRESERVE:
                req.strategy = Strategy.SWAP
                raise EngineError(
                    f"{request_id}: its KV cache is already in CPU memory; it comes back when "
                    "its tool returns (Discard it instead to free the CPU memory)"
                )
        self._wake.set()

    async def preempt(
        self, request_id: str, reason: ReleaseReason = ReleaseReason.PREEMPTED
    ) -> None:
        req = self._get(request_id)
        if req.state is _State.RUNNING:
            self._emit_tokens(req)  # what it generated since the last token event
        self._model.abort(req.seq)
        self._release(req, reason)
        self._wake.set()

    async def abort(self, request_id: str) -> None:
        req = self._get(request_id)
        self._model.abort(req.seq)
        self._drop(req)
        self._wake.set()

    # The loop ------------------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while True:
                self._wake.clear()
                self._advance_clock()
                self._admit_waiting()
                iteration = self._model.step(self._clock)
                self._release_evicted()
                if iteration is None:
                    await self._idle()
                    continue
                self._clock += iteration.duration_s
                await self._sleep_until(self._clock)
                self._finish_iteration(iteration)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("the sim engine's loop failed; failing every request it holds")
            for req in list(self._requests.values()):
                self._drop(req)
                self._emit(Failed(req.request_id, "the engine failed; see the worker's log"))
            raise

    def _advance_clock(self) -> None:
        """Keep model time in step with real time. While busy the clock runs ahead by iteration
        times and the loop sleeps to meet it, so an oversleep (timers have a millisecond's grain)
        is made up by the next iterations; a lag beyond MAX_LAG_S (a stalled process) is forgiven
        rather than caught up in a burst. When idle it jumps to now."""
        real = (asyncio.get_running_loop().time() - self._t0) * self._scale
        if not self._model.busy:
            self._clock = max(self._clock, real)
        else:
            self._clock = max(self._clock, real - MAX_LAG_S * self._scale)

    def _now(self) -> float:
        """Model time: real seconds since start, times the time scale."""
        real = asyncio.get_running_loop().time() - self._t0
        return max(self._clock, real * self._scale)

    async def _sleep_until(self, model_time: float) -> None:
        loop = asyncio.get_running_loop()
        delay = self._t0 + model_time / self._scale - loop.time()
        await asyncio.sleep(max(delay, 0.0))

    async def _idle(self) -> None:
        transfer = self._model.next_transfer_s()
        timeout = None
        if transfer is not None:
            timeout = max(transfer - self._now(), 0.0) / self._scale
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    def _admit_waiting(self) -> None:
        self._model.complete_transfers(self._clock)
        running = sum(1 for r in self._requests.values() if r.state is _State.RUNNING)
        while self._waiting:
            _, _, queued, req = self._waiting[0]
            if queued != req.queued:
                heapq.heappop(self._waiting)  # dropped or re-queued since
                continue
            if running >= self._max_running or not self._model.fits(req.seq):
                return  # vLLM's waiting queue: the head waits, nothing overtakes it
            heapq.heappop(self._waiting)
            self._model.admit(req.seq, self._clock)
            req.state = _State.RUNNING
            req.queued += 1
            running += 1

    def _finish_iteration(self, iteration: Iteration) -> None:
        for seq in iteration.first_tokens:
            req = self._owners.get(id(seq))
            if req is not None:
                if not req.started:
                    req.started = True
                    self._emit(Started(req.request_id, recomputed_tokens=req.recomputed))
                self._emit_tokens(req)
        real = asyncio.get_running_loop().time()
        if real - self._last_flush >= TOKEN_FLUSH_S:
            self._last_flush = real
            for req in list(self._requests.values()):
                if req.state is _State.RUNNING and req.seq.phase in _GENERATING:
                    self._emit_tokens(req)
        for seq in iteration.stopped:
            req = self._owners.get(id(seq))
            if req is not None and seq.phase is Phase.STOPPED:
                self._emit_tokens(req)
                self._segment_ended(req)

    def _emit_tokens(self, req: _Request) -> None:
        seq, target = req.seq, len(req.segment.token_ids)
        produced = target - seq.remaining_output
        if seq.phase is Phase.DECODE:
            produced += self._model.iteration - seq.decode_since
        produced = min(produced, target)
        if produced <= req.emitted:
            return
        ids = req.segment.token_ids[req.emitted : produced]
        self._emit(Tokens(req.request_id, ids, synthetic.decode(ids), start_index=req.generated))
        req.generated += len(ids)
        req.context.extend(ids)
        req.emitted = produced

    def _segment_ended(self, req: _Request) -> None:
        segment = req.segment
        # A call that would come exactly at the token limit is not made, as in vLLM: the request
        # ends with LENGTH (a resumed request would have nothing left to generate).
        spent = req.generated >= req.limit
        if spent or segment.boundary is not synthetic.Boundary.CALL or segment.call is None:
            self._model.finish(req.seq)
            length = spent or segment.boundary is synthetic.Boundary.LENGTH
            self._complete(req, FinishReason.LENGTH if length else FinishReason.STOP)
            return
        applied = self._model.pause(req.seq, req.strategy, self._clock)
        req.state = _State.IN_TOOL
        self._emit(
            ToolCalled(
                req.request_id,
                call_id=f"call-{req.generated}",
                name=segment.call.name,
                arguments_json=segment.call.arguments_json,
                context_tokens=len(req.context),
                strategy=applied,
            )
        )
        if applied is Strategy.DISCARD:
            self._release(req, ReleaseReason.DISCARDED)

    def _release_evicted(self) -> None:
        for seq in self._model.take_evicted():
            req = self._owners.get(id(seq))
            if req is not None:
                self._emit_tokens(req)
                self._release(req, ReleaseReason.PREEMPTED)

    # Requests ------------------------------------------------------------------------------------

    def _new_request(self, spec: AdmitSpec, context: list[int]) -> _Request:
        seed = spec.sampling.seed if spec.sampling.seed is not None else self._seed
        recomputed = len(context) if spec.context_token_ids and spec.generated_tokens else 0
        return _Request(
            spec=spec,
            seq=Sequence(spec.request_id, 0, 0, priority=spec.rank, tiebreak=next(self._order)),
            context=context,
            seed=seed,
            limit=spec.generated_tokens + max(spec.max_new_tokens, 0),
            generated=spec.generated_tokens,
            strategy=spec.strategy,
            replay=deque(spec.replay),
            replaying=bool(spec.replay),
            recomputed=recomputed,
            prompt_tokens=len(context),
        )

    def _appended(self, req: _Request, text: str, tokens: int) -> list[int]:
        appended = synthetic.encode(text)
        if tokens:
            appended += synthetic.filler(req.seed, req.context + appended, tokens)
        return appended

    def _next_segment(self, req: _Request) -> bool:
        """Plan the tokens up to the next boundary; False if the request ended instead."""
        # Like vLLM, generation stops at the longest context as at the token limit.
        budget = min(req.limit - req.generated, self._max_context - len(req.context))
        if budget <= 0 or (req.replaying and not req.replay):
            self._model.abort(req.seq)
            self._complete(req, FinishReason.LENGTH if budget <= 0 else FinishReason.STOP)
            return False
        if req.replaying:
            step = req.replay.popleft()
            # A model emits at least one token before it can call anything.
            wanted = max(step.output_tokens, 1)
            segment = synthetic.generate(req.seed, req.context, budget, forced=wanted)
            if step.tool and segment.boundary is synthetic.Boundary.END:
                call = synthetic.Call(step.tool, step.arguments_json)
                segment = synthetic.Segment(segment.token_ids, synthetic.Boundary.CALL, call)
        else:
            segment = synthetic.generate(req.seed, req.context, budget, stop=req.spec.sampling.stop)
        req.segment = segment
        req.emitted = 0
        req.seq.remaining_output = len(segment.token_ids)
        return True

    def _enqueue(self, req: _Request) -> None:
        req.state = _State.WAITING
        req.queued += 1
        heapq.heappush(self._waiting, (req.spec.rank, next(self._order), req.queued, req))
        self._wake.set()

    def _get(self, request_id: str) -> _Request:
        try:
            return self._requests[request_id]
        except KeyError:
            raise UnknownRequestError(f"{request_id}: not held by this engine") from None

    def _check_strategy(self, strategy: Strategy) -> None:
        self.require_strategy(strategy, " (it has no CPU swap space)")

    def _too_long(self, tokens: int) -> str:
        return (
            f"context of {tokens} tokens does not fit this engine: it holds at most "
            f"{self._max_context} tokens per request"
        )

    def _emit(self, event: EngineEvent) -> None:
        self._queue.put_nowait(event)

    def _drop(self, req: _Request) -> None:
        self._requests.pop(req.request_id, None)
        self._owners.pop(id(req.seq), None)
        req.queued += 1  # invalidates its place in the waiting heap

    def _complete(self, req: _Request, reason: FinishReason) -> None:
        self._drop(req)
        self._emit(Completed(req.request_id, reason, req.prompt_tokens, req.generated))

    def _release(self, req: _Request, reason: ReleaseReason) -> None:
        self._drop(req)
        self._emit(Released(req.request_id, reason, tuple(req.context), req.generated))
