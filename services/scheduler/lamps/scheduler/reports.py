"""The worker side of the lifecycle: registration, batched reports, tool calls and strategies.

`ReportHandler` is the half of `Scheduler` (lifecycle.py) that reacts to workers and tools; the
other half owns the queue, the rounds and the store.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable

import grpc

from lamps.common.text import shorten
from lamps.model.cost import CostModel
from lamps.model.strategy import Strategy
from lamps.scheduler import metrics
from lamps.scheduler.clients import PredictorClient, ToolClient, expected_duration, tool_kind
from lamps.scheduler.jobs import (
    CHARS_PER_TOKEN,
    IN_TOOL,
    RUNNING,
    STRATEGY_FROM_PB,
    STRATEGY_TO_PB,
    Job,
    Outcome,
    ToolCallState,
)
from lamps.scheduler.placement import WorkerHandle
from lamps.scheduler.policy import CallView, Policy
from lamps.scheduler.queue import Commit
from lamps.scheduler.validation import MAX_MODEL_CHARS, RequestError
from lamps.v1 import common_pb2 as cpb
from lamps.v1 import scheduler_pb2 as pb

log = logging.getLogger(__name__)

MAX_WORKER_ID_CHARS = 253
MAX_ENGINE_CHARS = 64
# Request ids are 32 hex characters; a reconnecting worker lists those it still holds.
MAX_HELD_REQUEST_IDS = 100_000
MAX_REQUEST_ID_CHARS = 128
RELEASE_REASONS = {
    pb.RELEASE_REASON_DISCARDED: "discarded",
    pb.RELEASE_REASON_PREEMPTED: "preempted",
    pb.RELEASE_REASON_DRAINED: "drained",
}


_STATUS_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
WORKER_REASONS = frozenset({cpb.FINISH_REASON_STOP, cpb.FINISH_REASON_LENGTH})
INSTRUCTIONS = frozenset({"admit", "resume", "pause", "preempt", "abort"})
MAX_LOGGED_REASON_CHARS = 500


class ReportHandler(ABC):
    """Reactions to workers and tools (see the module docstring)."""

    jobs: dict[str, Job]
    workers: dict[str, WorkerHandle]
    policy: Policy
    cost: CostModel
    tools: ToolClient
    predictor: PredictorClient
    _commit: Commit
    _after: list[Callable[[], None]]
    _tool_tasks: dict[str, asyncio.Task[None]]
    _timers: dict[str, asyncio.TimerHandle]
    _wake: asyncio.Event

    @property
    @abstractmethod
    def report_interval_s(self) -> float: ...

    @property
    @abstractmethod
    def worker_lease_s(self) -> float: ...

    @property
    @abstractmethod
    def time_scale(self) -> float: ...

    @abstractmethod
    def require_leader(self) -> None: ...

    @abstractmethod
    def _enqueue(self, job: Job, now: float, *, replan: bool) -> None: ...

    @abstractmethod
    def _finish(self, job: Job, state: int, reason: int, error: str = "") -> None: ...

    @abstractmethod
    def _touch(self, job: Job) -> None: ...

    @abstractmethod
    def _release(self, worker: WorkerHandle, request_id: str) -> None: ...

    @abstractmethod
    def _cancel_timer(self, request_id: str) -> None: ...

    # Registration ------------------------------------------------------------------------------

    def register(
        self, register: pb.Register, outbox: asyncio.Queue[pb.ConnectResponse | None]
    ) -> tuple[WorkerHandle, pb.Registered]:
        """Accept a worker's stream; reconcile what it still holds with the records."""
        self.require_leader()
        _check_register(register)
        worker_id = register.worker_id
        worker = self.workers.get(worker_id)
        if worker is not None and worker.outbox is not None:
            raise RequestError(
                grpc.StatusCode.ALREADY_EXISTS,
                f"worker {worker_id!r} is already connected; each worker needs its own id "
                "(the pod name), or wait for the old stream to close",
            )
        now = time.monotonic()
        strategies = frozenset(
            STRATEGY_FROM_PB[s] for s in register.strategies if s in STRATEGY_FROM_PB
        ) or frozenset({Strategy.PRESERVE, Strategy.DISCARD})
        if worker is None:
            worker = WorkerHandle(
                worker_id=worker_id,
                model=register.model,
                engine=register.engine,
                strategies=strategies,
                max_running=register.max_running,
                kv=register.kv,
                last_seen=now,
                last_report_at=time.time(),
            )
            self.workers[worker_id] = worker
        worker.model, worker.engine, worker.strategies = register.model, register.engine, strategies
        worker.max_running, worker.kv, worker.draining = register.max_running, register.kv, False
        worker.last_seen, worker.last_report_at, worker.outbox = now, time.time(), outbox
        drop = self._reconcile(worker, set(register.held_request_ids))
        self._renew(worker)
        self._wake.set()
        log.info(
            "worker registered",
            extra={"worker": worker_id, "model": worker.model, "held": len(worker.held)},
        )
        return worker, pb.Registered(
            worker_id=worker_id,
            report_interval_seconds=self.report_interval_s,
            lease_seconds=self.worker_lease_s,
            drop_request_ids=drop,
        )

    def _reconcile(self, worker: WorkerHandle, claimed: set[str]) -> list[str]:
        assigned = {
            rid
            for rid, job in self.jobs.items()
            if job.worker_id == worker.worker_id and not job.ended
        }
        for request_id in sorted(assigned - claimed):
            self._lose(self.jobs[request_id], worker, "lost")
        kept = assigned & claimed
        worker.held = set(kept)
        worker.in_tool = {rid for rid in kept if self.jobs[rid].state == IN_TOOL}
        worker.reserved = {}
        worker.forgotten = set()
        for request_id in sorted(kept):
            job = self.jobs[request_id]
            if job.state == RUNNING and job.resume_sent:
                worker.send(pb.ConnectResponse(resume=self._resume_message(job)))
        return sorted(claimed - assigned)

    def disconnected(
        self, worker: WorkerHandle, outbox: asyncio.Queue[pb.ConnectResponse | None]
    ) -> None:
        """A stream closed; the worker keeps its requests until its lease runs out (unless it
        has already registered again on a newer stream)."""
        if self.workers.get(worker.worker_id) is worker and worker.outbox is outbox:
            worker.outbox = None
            self._wake.set()

    def _renew(self, worker: WorkerHandle) -> None:
        info = {"model": worker.model, "engine": worker.engine, "held": len(worker.held)}
        self._commit.workers[worker.worker_id] = json.dumps(info).encode()

    # Reports -----------------------------------------------------------------------------------

    def report(self, worker: WorkerHandle, report: pb.Report) -> None:
        """Apply one batched report from `worker`."""
        now = time.time()
        worker.last_seen, worker.last_report_at = time.monotonic(), now
        if report.HasField("kv"):
            worker.kv = report.kv
        worker.draining = report.draining
        self._renew(worker)
        for update in report.updates:
            self._update(worker, update, now)
        self._wake.set()

    def _update(self, worker: WorkerHandle, update: pb.RequestUpdate, now: float) -> None:
        request_id = update.request_id
        job = self.jobs.get(request_id)
        if job is None or job.ended or request_id not in worker.held:
            if request_id in worker.forgotten or (job is not None and job.ended):
                return  # late or re-sent news of a request that has ended: nothing to do
            self._reject(
                worker,
                request_id,
                f"worker {worker.worker_id!r} does not hold request {shorten(request_id)!r}",
            )
            return
        # A plain str: a newer worker may send kinds this version does not know.
        kind = str(update.WhichOneof("update") or "")
        if kind == "started":
            self._started(job, worker, update.started, now)
        elif kind == "tokens":
            self._tokens(job, worker, update.tokens, now)
        elif kind == "intercepted":
            self._intercepted(job, worker, update.intercepted, now)
        elif kind == "released":
            self._released(job, worker, update.released, now)
        elif kind == "completed":
            self._completed(job, worker, update.completed)
        elif kind == "failed":
            self._release(worker, request_id)
            self._finish(
                job,
                cpb.REQUEST_STATE_FAILED,
                cpb.FINISH_REASON_ERROR,
                f"the engine on worker {worker.worker_id} failed: {update.failed.message}",
            )
        elif kind == "refused":
            self._refused(job, worker, update.refused)
        elif not kind:
            self._reject(worker, request_id, "the update is empty: set one of its fields")
        else:
            log.info(
                "update of a kind this scheduler does not know ignored",
                extra={"worker": worker.worker_id, "kind": kind},
            )

    @staticmethod
    def _send_to_holder(job: Job, worker: WorkerHandle, message: pb.ConnectResponse) -> None:
        """Send an instruction held back until its round was stored, unless the request has
        meanwhile moved (the worker re-registered without it, it was re-queued, it ended): a
        stale Admit would run it twice."""
        if not job.ended and job.worker_id == worker.worker_id and job.request_id in worker.held:
            worker.send(message)

    def _reject(self, worker: WorkerHandle, request_id: str, message: str) -> None:
        metrics.REJECTED_WORKER_MESSAGES.inc()
        log.warning(
            "worker message refused",
            extra={"worker": worker.worker_id, "request_id": request_id, "reason": message},
        )
        worker.send(
            pb.ConnectResponse(
                rejected=pb.Rejected(
                    request_id=request_id,
                    code=grpc.StatusCode.FAILED_PRECONDITION.value[0],
                    message=message,
                )
            )
        )

    def _progressed(self, job: Job, worker: WorkerHandle) -> None:
        """The worker consumed the admission or resume: pending tool output is in its context."""
        worker.reserved.pop(job.request_id, None)
        job.text += job.pending_text
        job.appended_text += job.pending_text
        job.appended_tokens += job.pending_tokens
        job.pending_text, job.pending_tokens, job.resume_sent = "", 0, False

    def _started(self, job: Job, worker: WorkerHandle, started: pb.Started, now: float) -> None:
        self._progressed(job, worker)
        if started.recomputed_tokens:
            job.recomputed_tokens += started.recomputed_tokens
            job.recompute_s += max(now - job.admitted_at, 0.0)
        self._touch(job)

    def _tokens(self, job: Job, worker: WorkerHandle, delta: cpb.TokenDelta, now: float) -> None:
        skip = max(job.completion_tokens - delta.start_index, 0)
        ids = list(delta.token_ids)
        if ids and skip >= len(ids):
            return  # a delta re-sent after a reconnect: already recorded
        if job.state != RUNNING:
            self._reject(
                worker,
                job.request_id,
                f"request {job.request_id} is paused in a tool call; tokens refused",
            )
            return
        new = ids[skip:]
        text = delta.text if skip == 0 else ""
        if not new and not text:
            return
        self._progressed(job, worker)
        if job.ttft_s == 0.0:
            job.ttft_s = max(now - job.created_at, 0.0)
        start = job.completion_tokens
        job.completion_tokens += len(new)
        job.segment_tokens += len(new)
        job.token_ids.extend(new)
        job.text += text
        job.add_event(now, tokens=cpb.TokenDelta(token_ids=new, text=text, start_index=start))
        self._touch(job)

    def _completed(self, job: Job, worker: WorkerHandle, completed: pb.Completed) -> None:
        self._release(worker, job.request_id)
        worker.forget(job.request_id)
        job.completion_tokens = max(job.completion_tokens, completed.completion_tokens)
        if completed.prompt_tokens:
            job.prompt_tokens = completed.prompt_tokens
        if job.outcomes:
            job.outcomes[-1].post_call_tokens = job.segment_tokens
        else:
            job.outcomes.append(Outcome("", 0.0, job.segment_tokens))
        # A worker ends a generation by a stop or its length; any other reason (or a number no
        # enum knows) is not its to give.
        reason = completed.reason if completed.reason in WORKER_REASONS else cpb.FINISH_REASON_STOP
        self._finish(job, cpb.REQUEST_STATE_FINISHED, reason)

    def _released(self, job: Job, worker: WorkerHandle, released: pb.Released, now: float) -> None:
        self._release(worker, job.request_id)
        if released.context_token_ids:
            job.context_token_ids = list(released.context_token_ids)
            job.token_ids, job.text = [], ""
            job.appended_text, job.appended_tokens = "", 0
        reason = RELEASE_REASONS.get(released.reason, "preempted")
        if job.state == IN_TOOL:
            job.worker_id = ""
            job.strategy = Strategy.DISCARD
            job.add_event(
                now,
                state_changed=cpb.StateChanged(state=IN_TOOL, strategy=cpb.STRATEGY_DISCARD),
            )
            self._touch(job)
            return
        metrics.REQUEUED.labels(reason=reason).inc()
        self._enqueue(job, now, replan=False)

    def _refused(self, job: Job, worker: WorkerHandle, refused: pb.Refused) -> None:
        """The worker could not carry out an instruction about this request."""
        # Metric labels only from closed sets: a worker must not be able to mint series.
        code = _STATUS_NAMES.get(refused.code, "UNKNOWN_CODE")
        instruction = refused.instruction if refused.instruction in INSTRUCTIONS else "other"
        metrics.REFUSED_INSTRUCTIONS.labels(instruction=instruction, code=code).inc()
        log.warning(
            "worker refused an instruction",
            extra={
                "worker": worker.worker_id,
                "request_id": job.request_id,
                "instruction": shorten(refused.instruction),
                "code": code,
                "reason": shorten(refused.message, MAX_LOGGED_REASON_CHARS),
            },
        )
        if refused.code == grpc.StatusCode.NOT_FOUND.value[0]:
            # The worker does not hold it (any more): whatever it had is gone, Discard semantics.
            self._lose(job, worker, "refused")
        elif (
            refused.instruction != "admit"
            or refused.code == grpc.StatusCode.ALREADY_EXISTS.value[0]
        ):
            return  # nothing changed on the worker; a request it already holds runs on
        elif refused.code == grpc.StatusCode.UNAVAILABLE.value[0]:
            self._lose(job, worker, "refused")  # the worker is draining: another takes it
        else:
            # The request itself cannot run there (too long for the model, say): re-queueing it
            # would only bring the same refusal back.
            self._release(worker, job.request_id)
            self._finish(
                job,
                cpb.REQUEST_STATE_FAILED,
                cpb.FINISH_REASON_ERROR,
                f"worker {worker.worker_id} cannot run the request: {refused.message}",
            )

    def _lose(self, job: Job, worker: WorkerHandle, reason: str) -> None:
        """The worker is gone with the request's KV: Discard semantics."""
        self._release(worker, job.request_id)
        now = time.time()
        if job.state == IN_TOOL:
            job.worker_id = ""
            job.add_event(
                now,
                state_changed=cpb.StateChanged(state=IN_TOOL, strategy=cpb.STRATEGY_DISCARD),
            )
            self._touch(job)
            return
        metrics.REQUEUED.labels(reason=reason).inc()
        self._enqueue(job, now, replan=False)

    # Tool calls --------------------------------------------------------------------------------

    def _intercepted(
        self, job: Job, worker: WorkerHandle, intercepted: pb.Intercepted, now: float
    ) -> None:
        call = intercepted.call
        repeated = job.call is not None and job.call.call_id == call.call_id
        if call.call_id and (repeated or call.call_id == job.last_call_id):
            return  # re-sent after a reconnect: already being (or already) answered
        if job.state != RUNNING:
            self._reject(
                worker, job.request_id, f"request {job.request_id} is already in a tool call"
            )
            return
        self._progressed(job, worker)
        if job.outcomes:
            job.outcomes[-1].post_call_tokens = job.segment_tokens
        job.tool_calls += 1
        job.call = ToolCallState(
            call_id=call.call_id or f"call-{job.tool_calls}",
            name=call.name,
            arguments_json=call.arguments_json,
            started_at=now,
            pre_call_tokens=job.segment_tokens,
        )
        job.state = IN_TOOL
        worker.in_tool.add(job.request_id)
        applied = STRATEGY_FROM_PB.get(intercepted.strategy, job.strategy)
        view = self._call_view(job, intercepted.context_tokens or job.context_tokens, 0.0)
        decision = self.policy.at_intercept(view, job.strategy, worker.view(self.cost))
        strategy = worker.allowed(decision.strategy)
        if strategy is not applied:
            worker.send(
                pb.ConnectResponse(
                    pause=pb.Pause(request_id=job.request_id, strategy=STRATEGY_TO_PB[strategy])
                )
            )
        job.strategy = strategy
        if strategy is Strategy.PRESERVE and decision.revisit_after_s is not None:
            self._schedule_revisit(job, decision.revisit_after_s)
        job.add_event(
            now,
            tool_call_started=cpb.ToolCallStarted(
                call=job.call.to_pb(), strategy=STRATEGY_TO_PB[strategy]
            ),
        )
        job.add_event(
            now,
            state_changed=cpb.StateChanged(
                state=IN_TOOL, worker_id=worker.worker_id, strategy=STRATEGY_TO_PB[strategy]
            ),
        )
        self._touch(job)
        self._start_tool(job)

    def _call_view(self, job: Job, context_tokens: int, elapsed_s: float) -> CallView:
        assert job.call is not None
        name = job.call.name
        predicted = (
            job.prediction.call_duration_seconds
            if job.tool_calls == 1 and job.prediction.tool == name
            else expected_duration(name, self.predictor.stats)
        )
        truth = None
        if job.request.HasField("replay") and job.segment < len(job.request.replay.segments):
            truth = job.request.replay.segments[job.segment].tool_duration_seconds
        return CallView(
            context_tokens=context_tokens,
            kind=tool_kind(name),
            predicted_duration_s=predicted,
            elapsed_s=elapsed_s,
            true_duration_s=truth,
        )

    def _schedule_revisit(self, job: Job, delay_s: float) -> None:
        self._cancel_timer(job.request_id)
        loop = asyncio.get_running_loop()
        self._timers[job.request_id] = loop.call_later(
            delay_s / self.time_scale, self._revisit, job.request_id
        )

    def _revisit(self, request_id: str) -> None:
        self._timers.pop(request_id, None)
        job = self.jobs.get(request_id)
        if job is None or job.state != IN_TOOL or job.call is None or not job.worker_id:
            return
        worker = self.workers.get(job.worker_id)
        if worker is None or job.strategy is not Strategy.PRESERVE:
            return
        elapsed = (time.time() - job.call.started_at) * self.time_scale
        view = self._call_view(job, job.context_tokens, elapsed)
        decision = self.policy.revisit(view, Strategy.PRESERVE, worker.view(self.cost))
        strategy = worker.allowed(decision.strategy)
        if strategy is not Strategy.PRESERVE:
            job.strategy = strategy
            worker.send(
                pb.ConnectResponse(
                    pause=pb.Pause(request_id=request_id, strategy=STRATEGY_TO_PB[strategy])
                )
            )
            # Clients learn the call's new strategy as they learned the first one.
            job.add_event(
                time.time(),
                state_changed=cpb.StateChanged(
                    state=IN_TOOL, worker_id=worker.worker_id, strategy=STRATEGY_TO_PB[strategy]
                ),
            )
            self._touch(job)
        elif decision.revisit_after_s is not None:
            self._schedule_revisit(job, decision.revisit_after_s)

    def _start_tool(self, job: Job) -> None:
        assert job.call is not None
        call = job.call.to_pb()
        allowed = job.request.tools
        task = asyncio.get_running_loop().create_task(
            self._run_tool(job.request_id, call, tuple(allowed))
        )
        self._tool_tasks[job.request_id] = task

    async def _run_tool(
        self, request_id: str, call: cpb.ToolCall, allowed: tuple[str, ...]
    ) -> None:
        if allowed and call.name not in allowed:
            result = cpb.ToolResult(
                call_id=call.call_id,
                error=cpb.ToolError(
                    code=cpb.TOOL_ERROR_CODE_UNKNOWN_TOOL,
                    message=f"tool {call.name!r} is not among this request's tools: "
                    + ", ".join(allowed),
                ),
            )
        else:
            result = await self.tools.execute(call, request_id)
        self._tool_tasks.pop(request_id, None)
        self._tool_done(request_id, call.call_id, result)

    def _tool_done(self, request_id: str, call_id: str, result: cpb.ToolResult) -> None:
        job = self.jobs.get(request_id)
        if job is None or job.state != IN_TOOL or job.call is None or job.call.call_id != call_id:
            return  # cancelled, or a result for a call that was restarted after a takeover
        now = time.time()
        self._cancel_timer(request_id)
        duration = max(now - job.call.started_at, 0.0)
        job.tool_s += duration
        # Durations are learned in the engines' time, the unit predictions and policies use.
        engine_duration = duration * self.time_scale
        self._commit.tool_durations.append((job.call.name, engine_duration))
        job.outcomes.append(Outcome(job.call.name, engine_duration, job.call.pre_call_tokens))
        job.last_call_id = call_id
        result.call_id = call_id
        if job.request.HasField("replay"):
            segment = job.request.replay.segments[job.segment]
            text, tokens = "", segment.tool_output_tokens
            job.segment += 1
        else:
            text = (
                result.output if not result.error.code else f"[tool error] {result.error.message}"
            )
            tokens = 0
        job.segment_tokens = 0
        job.tool_output_tokens += tokens or math.ceil(len(text) / CHARS_PER_TOKEN)
        job.pending_text, job.pending_tokens = text, tokens
        job.call = None
        job.add_event(now, tool_call_finished=cpb.ToolCallFinished(result=result))
        worker = self.workers.get(job.worker_id) if job.worker_id else None
        if worker is None or job.request_id not in worker.held:
            self._enqueue(job, now, replan=True)
            return
        worker.in_tool.discard(request_id)
        job.state, job.resume_sent = RUNNING, True
        message = pb.ConnectResponse(resume=self._resume_message(job))
        self._after.append(lambda: self._send_to_holder(job, worker, message))
        job.add_event(
            now, state_changed=cpb.StateChanged(state=RUNNING, worker_id=worker.worker_id)
        )
        self._touch(job)

    @staticmethod
    def _resume_message(job: Job) -> pb.Resume:
        return pb.Resume(
            request_id=job.request_id,
            append_text=job.pending_text,
            append_tokens=job.pending_tokens,
        )


def _check_register(register: pb.Register) -> None:
    def invalid(message: str) -> RequestError:
        return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)

    if not register.worker_id or len(register.worker_id) > MAX_WORKER_ID_CHARS:
        raise invalid(f"worker_id must be 1 to {MAX_WORKER_ID_CHARS} characters (the pod name)")
    kv = register.kv
    if kv.block_size < 1 or kv.total_blocks < 1:
        raise invalid("kv.block_size and kv.total_blocks must be at least 1")
    if kv.free_blocks > kv.total_blocks or kv.cpu_free_blocks > kv.cpu_total_blocks:
        raise invalid("kv free blocks cannot exceed total blocks")
    if register.max_running < 1:
        raise invalid("max_running must be at least 1")
    if cpb.STRATEGY_UNSPECIFIED in register.strategies:
        raise invalid("strategies must not contain STRATEGY_UNSPECIFIED")
    if len(register.model) > MAX_MODEL_CHARS or len(register.engine) > MAX_ENGINE_CHARS:
        raise invalid(
            f"model and engine have at most {MAX_MODEL_CHARS} and {MAX_ENGINE_CHARS} characters"
        )
    held = register.held_request_ids
    if len(held) > MAX_HELD_REQUEST_IDS or any(len(i) > MAX_REQUEST_ID_CHARS for i in held):
        raise invalid(
            f"held_request_ids lists at most {MAX_HELD_REQUEST_IDS} ids of at most "
            f"{MAX_REQUEST_ID_CHARS} characters"
        )
