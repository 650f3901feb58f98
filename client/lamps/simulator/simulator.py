"""A discrete-event simulator in virtual time driving the real policy core and engine model.

Events sit in one heap of (time, order, kind, payload). Each worker's iterations are events too, so
a cluster of engines interleaves correctly. The queue is one global `RankedQueue` with placement by
best fit of free KV (this project's design), or one queue per worker behind a round-robin router
(what a stateless router in front of independent vLLM replicas does).
"""

from __future__ import annotations

import enum
import heapq
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from lamps.model.cost import CostModel
from lamps.model.engine import EngineModel, Iteration, Phase
from lamps.model.engine import Sequence as EngineSequence
from lamps.model.strategy import Strategy
from lamps.model.workload import Arrival
from lamps.scheduler.policy import (
    CallView,
    EngineView,
    Policy,
    RankedQueue,
    RequestView,
)
from lamps.simulator.predictors import PaperPredictor, Predictor, truth


class Placement(enum.StrEnum):
    GLOBAL = "global"
    ROUND_ROBIN = "round-robin"


class Fit(enum.StrEnum):
    """Which worker a global queue gives the next request to, among those it fits."""

    SPREAD = "spread"  # the most free KV: work spreads, iterations stay short
    BEST = "best"  # the least free KV that fits: packs, leaving room for large requests


class _Kind(enum.IntEnum):
    # Order breaks ties at equal times: finish iterations before new work arrives.
    STEP = 0
    WAKE = 1
    TOOL_RETURN = 2
    REVISIT = 3
    ARRIVAL = 4


@dataclass(eq=False, slots=True)
class Job:
    """A request in the simulation and what happened to it."""

    arrival: Arrival
    seq: EngineSequence
    queue: int = 0
    segment: int = 0
    engine: int | None = None
    strategy: Strategy = Strategy.PRESERVE
    predicted_call_s: float = 0.0
    call_started_s: float = 0.0
    revisit_token: int = 0
    first_token_s: float | None = None
    finish_s: float | None = None
    rejected: bool = False
    strategies: list[Strategy] = field(default_factory=list)


@dataclass(slots=True)
class RunStats:
    """Totals over a run, beside the per-request outcomes."""

    busy_s: float = 0.0
    iterations: int = 0
    tokens: int = 0
    recompute_tokens: int = 0
    held_token_seconds: float = 0.0
    preemptions: int = 0
    starved: int = 0
    end_s: float = 0.0


class Simulator:
    """Runs one workload under one policy on `workers` replicas of `cost`."""

    def __init__(
        self,
        policy: Policy,
        cost: CostModel,
        *,
        predictor: Predictor | None = None,
        workers: int = 1,
        placement: Placement = Placement.GLOBAL,
        fit: Fit = Fit.SPREAD,
        max_batched_tokens: int | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError("a simulation needs at least one worker")
        self.policy = policy
        self.cost = cost
        self.predictor = predictor if predictor is not None else PaperPredictor()
        self.placement = placement
        self.fit = fit
        self.engines = [EngineModel(cost, max_batched_tokens) for _ in range(workers)]
        queues = 1 if placement is Placement.GLOBAL else workers
        self.queues = [RankedQueue[Job](policy.starvation_threshold) for _ in range(queues)]
        self.stats = RunStats()
        self.jobs: list[Job] = []
        self._events: list[tuple[float, int, int, object]] = []
        self._order = itertools.count()
        self._stepping = [False] * workers
        self._pending: list[Iteration | None] = [None] * workers
        self._by_seq: dict[int, Job] = {}

    def run(
        self, arrivals: Sequence[Arrival], progress: Callable[[float], None] | None = None
    ) -> list[Job]:
        """Simulate until every request has finished; `progress` gets the share of arrivals seen."""
        for index, arrival in enumerate(arrivals):
            seq = EngineSequence(
                arrival.request_id,
                context_tokens=arrival.spec.prompt_tokens,
                remaining_output=arrival.spec.segments[0].output_tokens,
                tiebreak=arrival.time_s,
            )
            job = Job(arrival=arrival, seq=seq, queue=index % len(self.queues))
            self.jobs.append(job)
            self._by_seq[id(seq)] = job
            self._push(arrival.time_s, _Kind.ARRIVAL, job)
        total = max(len(arrivals), 1)
        seen = 0
        while self._events:
            now, _, kind, payload = heapq.heappop(self._events)
            self.stats.end_s = now
            if kind == _Kind.ARRIVAL:
                seen += 1
                if progress is not None and seen % 256 == 0:
                    progress(seen / total)
            self._dispatch(now, _Kind(kind), payload)
        for engine in self.engines:
            self.stats.held_token_seconds += engine.held_token_seconds
            self.stats.preemptions += engine.preemptions
        self.stats.starved = sum(queue.starved_total for queue in self.queues)
        if progress is not None:
            progress(1.0)
        self._check_finished()
        return self.jobs

    # Events ------------------------------------------------------------------------------------

    def _push(self, time: float, kind: _Kind, payload: object) -> None:
        heapq.heappush(self._events, (time, next(self._order), kind, payload))

    def _dispatch(self, now: float, kind: _Kind, payload: object) -> None:
        if kind is _Kind.STEP:
            assert isinstance(payload, int)
            self._step(payload, now)
        elif kind is _Kind.WAKE:
            assert isinstance(payload, int)
            self._wake(payload, now)
        elif kind is _Kind.REVISIT:
            assert isinstance(payload, tuple)
            job, token = payload
            if token == job.revisit_token:
                self._revisit(job, now)
        else:
            assert isinstance(payload, Job)
            if kind is _Kind.ARRIVAL:
                self._arrive(payload, now)
            else:
                self._tool_returned(payload, now)

    def _arrive(self, job: Job, now: float) -> None:
        spec = job.arrival.spec
        largest = spec.context_before(len(spec.segments) - 1) + spec.segments[-1].output_tokens
        if self.engines[0].admit_limit < largest + self.cost.block_size:
            job.rejected = True
            job.finish_s = now
            return
        self._enqueue(job, now, replan=True)
        self._admit(now)

    def _step(self, index: int, now: float) -> None:
        engine = self.engines[index]
        finished = self._pending[index]
        self._pending[index] = None
        if finished is not None:
            self._handle_iteration(index, finished, now)
        self._admit(now)
        iteration = engine.step(now)
        self._requeue_evicted(index, now)
        if iteration is None:
            self._stepping[index] = False
            transfer = engine.next_transfer_s()
            if transfer is not None:
                self._push(transfer, _Kind.WAKE, index)
            return
        self._pending[index] = iteration
        self.stats.busy_s += iteration.duration_s
        self.stats.iterations += 1
        self.stats.tokens += iteration.tokens
        self.stats.recompute_tokens += iteration.recompute_tokens
        self._push(now + iteration.duration_s, _Kind.STEP, index)

    def _wake(self, index: int, now: float) -> None:
        self.engines[index].complete_transfers(now)
        self._admit(now)
        self._kick(index, now)

    def _kick(self, index: int, now: float) -> None:
        if not self._stepping[index]:
            self._stepping[index] = True
            self._push(now, _Kind.STEP, index)

    def _handle_iteration(self, index: int, iteration: Iteration, now: float) -> None:
        for seq in iteration.first_tokens:
            job = self._by_seq[id(seq)]
            if job.first_token_s is None:
                job.first_token_s = now
        for seq in iteration.stopped:
            self._segment_done(self._by_seq[id(seq)], index, now)

    def _segment_done(self, job: Job, index: int, now: float) -> None:
        engine = self.engines[index]
        call = job.arrival.spec.segments[job.segment].call
        if call is None:
            engine.finish(job.seq)
            job.finish_s = now
            job.engine = None
            return
        view = CallView(
            context_tokens=job.seq.context_tokens,
            kind=call.kind,
            predicted_duration_s=job.predicted_call_s,
            true_duration_s=call.duration_s,
        )
        decision = self.policy.at_intercept(view, job.strategy, self._view(engine))
        applied = engine.pause(job.seq, decision.strategy, now)
        job.strategies.append(applied)
        job.call_started_s = now
        if applied is Strategy.PRESERVE and decision.revisit_after_s is not None:
            self._push(now + decision.revisit_after_s, _Kind.REVISIT, (job, job.revisit_token))
        self._push(now + call.duration_s, _Kind.TOOL_RETURN, job)
        if applied is Strategy.DISCARD:
            job.engine = None

    def _tool_returned(self, job: Job, now: float) -> None:
        spec = job.arrival.spec
        call = spec.segments[job.segment].call
        assert call is not None
        job.segment += 1
        job.revisit_token += 1
        next_output = spec.segments[job.segment].output_tokens
        self.predictor.observe(call, next_output)
        if job.engine is not None:
            engine = self.engines[job.engine]
            engine.complete_transfers(now)
            if engine.tool_returned(job.seq, call.return_tokens, next_output, now):
                self._requeue_evicted(job.engine, now)
                self._kick(job.engine, now)
                return
            if job.seq.phase is Phase.QUEUED:
                job.engine = None
        else:
            job.seq.context_tokens += call.return_tokens
            job.seq.remaining_output = next_output
        self._enqueue(job, now, replan=True)
        self._admit(now)

    def _revisit(self, job: Job, now: float) -> None:
        if job.engine is None or job.seq.phase is not Phase.PAUSED:
            return
        call = job.arrival.spec.segments[job.segment].call
        assert call is not None
        engine = self.engines[job.engine]
        view = CallView(
            context_tokens=job.seq.context_tokens,
            kind=call.kind,
            predicted_duration_s=job.predicted_call_s,
            elapsed_s=now - job.call_started_s,
            true_duration_s=call.duration_s,
        )
        decision = self.policy.revisit(view, Strategy.PRESERVE, self._view(engine))
        if decision.strategy is not Strategy.PRESERVE:
            applied = engine.pause(job.seq, decision.strategy, now)
            job.strategies[-1] = applied
            if applied is Strategy.DISCARD:
                job.engine = None
            self._admit(now)
        elif decision.revisit_after_s is not None:
            self._push(now + decision.revisit_after_s, _Kind.REVISIT, (job, job.revisit_token))

    # Queueing and placement --------------------------------------------------------------------

    def _enqueue(self, job: Job, now: float, *, replan: bool) -> None:
        queue_index = job.engine if job.engine is not None and len(self.queues) > 1 else job.queue
        if replan:
            spec, seq = job.arrival.spec, job.seq
            context = seq.context_tokens
            estimate = self.predictor.estimate(spec, job.segment, context)
            # The call's duration is predicted with the rest, when the request is queued.
            job.predicted_call_s = estimate.call.duration_s if estimate.call is not None else 0.0
            request = RequestView(
                arrival_s=job.arrival.time_s,
                enqueued_s=now,
                estimate=estimate,
                truth=truth(spec, job.segment, context) if self.policy.needs_truth else None,
            )
            plan = self.policy.plan(request, self._view(self._engine_for_view(queue_index)))
            seq.priority = plan.rank
            job.strategy = plan.strategy
        self.queues[queue_index].push(job, job.seq.priority, job.seq.tiebreak)

    def _requeue_evicted(self, index: int, now: float) -> None:
        for seq in self.engines[index].take_evicted():
            job = self._by_seq[id(seq)]
            job.engine = None
            self._enqueue(job, now, replan=False)

    def _admit(self, now: float) -> None:
        for index, queue in enumerate(self.queues):
            while (job := queue.peek()) is not None:
                target = self._place(job, index)
                if target is None:
                    break
                queue.pop()
                self.engines[target].admit(job.seq, now)
                job.engine = target
                self._kick(target, now)

    def _place(self, job: Job, queue_index: int) -> int | None:
        if job.seq.phase is Phase.SWAPPED:
            assert job.engine is not None
            return job.engine if self.engines[job.engine].fits(job.seq) else None
        if len(self.queues) > 1:
            return queue_index if self.engines[queue_index].fits(job.seq) else None
        fitting = [index for index, engine in enumerate(self.engines) if engine.fits(job.seq)]
        if not fitting:
            return None
        sign = 1 if self.fit is Fit.BEST else -1
        return min(fitting, key=lambda index: sign * self.engines[index].free_tokens)

    def _engine_for_view(self, queue_index: int) -> EngineModel:
        if len(self.queues) > 1:
            return self.engines[queue_index]
        return max(self.engines, key=lambda engine: engine.free_tokens)

    def _view(self, engine: EngineModel) -> EngineView:
        return EngineView(
            running_tokens=engine.running_kv,
            decode_tokens=engine.decode_tokens,
            iteration_s=engine.iteration_s,
            cpu_free_tokens=engine.cpu_free_tokens,
        )

    def _check_finished(self) -> None:
        stuck = [job.arrival.request_id for job in self.jobs if job.finish_s is None]
        if stuck:
            raise RuntimeError(
                f"simulation ended with {len(stuck)} unfinished requests: {stuck[:5]}"
            )
