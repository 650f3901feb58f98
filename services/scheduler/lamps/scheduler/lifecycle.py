"""The request lifecycle (DESIGN.md section 4), owned by the leader replica.

QUEUED -> RUNNING(worker) -> IN_TOOL(strategy) -> (RUNNING | QUEUED after Discard) -> ... ->
FINISHED | FAILED | CANCELLED.

All state lives in this process while it leads and is written to the store once per scheduling
round: handlers (client calls, worker reports, tool results) change jobs in memory and mark them;
a round admits what fits, writes every change as one atomic commit, and only then sends the
round's worker messages, shows new events to clients and answers waiting submitters. So nothing
a client saw, and no instruction a worker got, is ever missing from the store after a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc

from lamps.common.tenants import SHARED_TENANT
from lamps.model.cost import CostModel
from lamps.scheduler import metrics
from lamps.scheduler.admission import AdmissionGate
from lamps.scheduler.clients import (
    PredictionInput,
    PredictorClient,
    ToolClient,
)
from lamps.scheduler.events import follow
from lamps.scheduler.jobs import (
    CANCELLED,
    FAILED,
    FINISHED,
    IN_TOOL,
    QUEUED,
    RUNNING,
    STRATEGY_TO_PB,
    Job,
    prompt_token_count,
)
from lamps.scheduler.placement import WorkerHandle, best_fit, never_fits, roomiest
from lamps.scheduler.policy import (
    EngineView,
    Policy,
    RankedQueue,
    RequestEstimate,
    RequestView,
)
from lamps.scheduler.queue import Commit, NotLeaderError, Store, StoreError
from lamps.scheduler.ranking import (
    ReplayPredictions,
    binned_estimate,
    binned_prediction,
    estimate,
    replay_truth,
)
from lamps.scheduler.recovery import rebuild
from lamps.scheduler.reports import ReportHandler
from lamps.scheduler.validation import (
    Limits,
    RequestError,
    validate_generate,
    validate_idempotency_key,
)
from lamps.v1 import common_pb2 as cpb
from lamps.v1 import scheduler_pb2 as pb

log = logging.getLogger(__name__)

# Ended requests kept in memory for GetRequest and Watch; older ones are read from the store.
RETAINED_ENDED = 10_000
STORE_RETRY_SECONDS = 0.5
# How often gauges are refreshed: scrapes are seconds apart, rounds milliseconds.
GAUGE_PERIOD_S = 0.1
TOOL_STATS_REFRESH_S = 10.0
# Longest a graceful shutdown waits for the last round to be stored.
CLOSE_TIMEOUT_S = 5.0
MAX_RANK = 1e300
_STATE_NAMES: dict[int, str] = {FINISHED: "finished", FAILED: "failed", CANCELLED: "cancelled"}


@dataclass(frozen=True, slots=True)
class Settings:
    """What the lifecycle needs from the configuration."""

    replica_id: str
    limits: Limits
    worker_lease_s: float
    report_interval_s: float
    # Engine seconds per wall second (DESIGN.md section 10: sped-up benchmarks).
    time_scale: float = 1.0
    replay_predictions: ReplayPredictions = ReplayPredictions.BINNED
    # Requests that may wait for a worker before new ones are shed; 0: no limit.
    max_waiting_requests: int = 0


class Scheduler(ReportHandler):
    """The leader's state and the scheduling rounds (see the module docstring)."""

    def __init__(
        self,
        *,
        store: Store,
        policy: Policy,
        cost: CostModel,
        predictor: PredictorClient,
        tools: ToolClient,
        settings: Settings,
        on_lost_leadership: Callable[[], None] = lambda: None,
    ) -> None:
        self.store = store
        self.policy = policy
        self.cost = cost
        self.predictor = predictor
        self.tools = tools
        self.settings = settings
        self._on_lost = on_lost_leadership
        self.leader = False
        self.leader_id = ""
        self.jobs: dict[str, Job] = {}
        self.queue = RankedQueue[str](policy.starvation_threshold)
        self.workers: dict[str, WorkerHandle] = {}
        self._ended: OrderedDict[str, None] = OrderedDict()
        self._keys: dict[str, tuple[str, str]] = {}
        self._key_checks: dict[str, asyncio.Future[None]] = {}
        self._commit = Commit()
        self._dirty: set[str] = set()
        self._unsaved: set[str] = set()
        self._after: list[Callable[[], None]] = []
        self._intake: list[Job] = []
        self._predicted: list[Job] = []
        self._accepting: dict[str, asyncio.Future[None]] = {}
        self._intake_ready = asyncio.Event()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._tool_tasks: dict[str, asyncio.Task[None]] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._starved_seen = -1
        self._round_trips_seen = 0
        self._stored_queue: set[str] = set()
        self._closing = False
        self._waiting: set[asyncio.Future[None]] = set()
        self.admission = AdmissionGate(settings.max_waiting_requests)
        # Submissions on their way into the queue (being predicted, or waiting for a round).
        self._incoming = 0

    @property
    def report_interval_s(self) -> float:
        return self.settings.report_interval_s

    @property
    def worker_lease_s(self) -> float:
        return self.settings.worker_lease_s

    @property
    def time_scale(self) -> float:
        return self.settings.time_scale

    # Leadership --------------------------------------------------------------------------------

    async def lead(self) -> None:
        """Take over: rebuild from the store, then start the rounds."""
        snapshot = await self.store.load()
        state = rebuild(snapshot, self.policy.starvation_threshold, time.monotonic())
        self.jobs, self.workers, self.queue = state.jobs, state.workers, state.queue
        self._keys = state.keys
        self._stored_queue = {rid for rid, _ in snapshot.queue} | set(snapshot.starved)
        self.leader = True
        self.leader_id = self.settings.replica_id
        metrics.LEADER.set(1)
        loop = asyncio.get_running_loop()
        loops = (self._rounds(), self._intake_loop(), self._lease_loop(), self._gauge_loop())
        for coroutine in loops:
            task = loop.create_task(coroutine)
            task.add_done_callback(self._loop_ended)
            self._tasks.append(task)
        for job in self.jobs.values():
            if job.state == IN_TOOL and job.call is not None:
                self._start_tool(job)
        self._wake.set()
        log.info(
            "leading",
            extra={"replica": self.settings.replica_id, "active": len(self.jobs)},
        )

    def _loop_ended(self, task: asyncio.Task[None]) -> None:
        """A scheduling loop that dies would leave a leader that renews its lease and schedules
        nothing: step down instead, so a standby (or a restart) takes over."""
        if task.cancelled() or task.exception() is None:
            return
        log.error(
            "a scheduling loop failed; stepping down",
            exc_info=task.exception(),
            extra={"loop": task.get_coro().__name__},  # type: ignore[union-attr]
        )
        self.step_down()

    def step_down(self) -> None:
        """Stop leading at once (the lease was lost): nothing more is written."""
        if not self.leader:
            return
        self.leader = False
        metrics.LEADER.set(0)
        for task in self._tasks:
            task.cancel()
        for tool_task in self._tool_tasks.values():
            tool_task.cancel()
        self._fail_waiters()
        log.error("lost the leader lease; this replica stops scheduling")
        self._on_lost()

    def _fail_waiters(self) -> None:
        """Callers waiting for a round that will not be stored get UNAVAILABLE, not silence."""
        error = RequestError(
            grpc.StatusCode.UNAVAILABLE,
            "this scheduler replica stopped leading before the change was stored; retry (a "
            "Submit with the same idempotency key is safe to repeat)",
        )
        for waiter in [*self._accepting.values(), *self._waiting]:
            if not waiter.done():
                waiter.set_exception(error)
        self._waiting.clear()

    async def close(self) -> None:
        """Stop after the round in progress and one last round for what is pending (graceful
        shutdown); a round is never cut in the middle of its commit."""
        if self.leader:
            self._closing = True
            self._wake.set()
            rounds = self._tasks[0] if self._tasks else None
            if rounds is not None:
                with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                    await asyncio.wait_for(asyncio.shield(rounds), CLOSE_TIMEOUT_S)
        self.leader = False
        metrics.LEADER.set(0)
        self._fail_waiters()
        tasks = [*self._tasks, *self._tool_tasks.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for timer in self._timers.values():
            timer.cancel()
        for worker in self.workers.values():
            if worker.outbox is not None:
                worker.outbox.put_nowait(None)

    def require_leader(self) -> None:
        if not self.leader:
            leader = f"; the leader is {self.leader_id}" if self.leader_id else ""
            raise RequestError(
                grpc.StatusCode.UNAVAILABLE,
                f"scheduler replica {self.settings.replica_id} is a standby{leader}; retry "
                "against the scheduler service",
            )

    # Submission --------------------------------------------------------------------------------

    async def submit(
        self, request: pb.GenerateRequest, key: str = "", tenant: str = SHARED_TENANT
    ) -> tuple[str, bool]:
        """Validate, persist and queue a request of `tenant`; (its id, False if `key` matched
        an earlier submission of the same body by the same tenant). A known key is answered
        even when the admission limit sheds new requests."""
        self.require_leader()
        budget = validate_generate(request, self.settings.limits, self.tools.known)
        digest = ""
        if key:
            digest = hashlib.sha256(request.SerializeToString(deterministic=True)).hexdigest()
            validate_idempotency_key(key)
            existing = await self._known_key(_scoped(tenant, key), digest, key)
            if existing is not None:
                return existing, False
            key = _scoped(tenant, key)
        # No await between the check and the intake: concurrent calls cannot overshoot.
        self.admission.check(self.waiting)
        job = Job(
            request_id=uuid.uuid4().hex,
            request=request,
            created_at=time.time(),
            max_tokens=budget,
            prompt_tokens=prompt_token_count(request),
            idempotency_key=key,
            digest=digest,
            tenant=tenant,
        )
        if key:
            self._keys[key] = (job.request_id, digest)
        accepted = asyncio.get_running_loop().create_future()
        self._accepting[job.request_id] = accepted
        self._intake.append(job)
        self._incoming += 1
        self._intake_ready.set()
        try:
            await accepted
        finally:
            self._accepting.pop(job.request_id, None)
        return job.request_id, True

    @property
    def waiting(self) -> int:
        """Requests accepted or being accepted that wait for a worker (the admission count)."""
        return len(self.queue) + self._incoming

    async def _known_key(self, key: str, digest: str, shown: str) -> str | None:
        while (pending := self._key_checks.get(key)) is not None:
            await pending
        if key not in self._keys:
            check = asyncio.get_running_loop().create_future()
            self._key_checks[key] = check
            try:
                stored = await self.store.idempotency([key])
            finally:
                del self._key_checks[key]
                check.set_result(None)
            if key in stored:
                found = json.loads(stored[key])
                self._keys[key] = (found["id"], found["digest"])
        if key not in self._keys:
            return None
        request_id, known_digest = self._keys[key]
        if known_digest and known_digest != digest:
            raise RequestError(
                grpc.StatusCode.ALREADY_EXISTS,
                f"idempotency key {shown!r} was used for a different request ({request_id}); "
                "use a new key for a new request",
            )
        return request_id

    async def _intake_loop(self) -> None:
        """Predict waiting submissions in batches; the rounds queue them."""
        while True:
            await self._intake_ready.wait()
            self._intake_ready.clear()
            batch, self._intake = self._intake, []
            if not batch:
                continue
            binned = [job for job in batch if self._binned(job)]
            for job in binned:
                job.prediction = binned_prediction(job.request, self.predictor.stats)
            asked = [job for job in batch if not self._binned(job)]
            inputs = [
                PredictionInput(job.request_id, job.request.prompt, tuple(job.request.tools))
                for job in asked
            ]
            predictions = await self.predictor.predict(inputs) if inputs else []
            for job, prediction in zip(asked, predictions, strict=True):
                job.prediction = prediction
            self._predicted.extend(batch)
            self._wake.set()

    def _accept(self, job: Job, now: float) -> None:
        self._incoming -= 1
        self.jobs[job.request_id] = job
        self._unsaved.add(job.request_id)
        self._plan(job, now)
        job.add_event(
            now,
            accepted=cpb.Accepted(
                request_id=job.request_id,
                prediction=job.prediction,
                strategy=STRATEGY_TO_PB[job.strategy],
            ),
        )
        if job.idempotency_key:
            _, digest = self._keys[job.idempotency_key]
            value = json.dumps({"id": job.request_id, "digest": digest}).encode()
            self._commit.idempotency[job.idempotency_key] = value
        self._enqueue(job, now, replan=False)
        metrics.ACCEPTED.inc()
        tokens = job.context_tokens + job.pending_tokens
        why = never_fits(self.workers.values(), tokens, job.request.model)
        if why is not None:  # no connected worker could ever run it: say so now, not never
            self._finish(job, FAILED, cpb.FINISH_REASON_ERROR, why)
        accepted = self._accepting.get(job.request_id)
        if accepted is not None:
            self._after.append(lambda: _resolve(accepted))

    # Ranking -----------------------------------------------------------------------------------

    def _plan(self, job: Job, now: float) -> None:
        truth = replay_truth(job) if self.policy.needs_truth else None
        view = RequestView(
            arrival_s=job.created_at, enqueued_s=now, estimate=self._estimate(job), truth=truth
        )
        plan = self.policy.plan(view, self._engine_view())
        # A sorted-set score must be a finite number: an estimate gone wrong (a huge or NaN
        # prediction) ranks last instead of failing every commit that carries it.
        rank = plan.rank if math.isfinite(plan.rank) else MAX_RANK
        job.rank, job.strategy = min(max(rank, -MAX_RANK), MAX_RANK), plan.strategy

    def _binned(self, job: Job) -> bool:
        return (
            self.settings.replay_predictions is ReplayPredictions.BINNED
            and job.request.HasField("replay")
        )

    def _estimate(self, job: Job) -> RequestEstimate:
        if self._binned(job):
            return binned_estimate(job, self.predictor.stats)
        return estimate(job)

    def _engine_view(self) -> EngineView:
        worker = roomiest(self.workers.values())
        if worker is not None:
            return worker.view(self.cost)
        return EngineView(
            running_tokens=0,
            decode_tokens=1,
            iteration_s=self.cost.iteration_s(1),
            cpu_free_tokens=self.cost.cpu_swap_tokens,
        )

    # Queue and placement -----------------------------------------------------------------------

    def _enqueue(self, job: Job, now: float, *, replan: bool) -> None:
        if replan:
            self._plan(job, now)
        job.state, job.worker_id, job.enqueued_at = QUEUED, "", now
        if job.request_id not in self.queue:
            self.queue.push(job.request_id, job.rank, job.created_at)
        self._commit.dequeue.discard(job.request_id)
        self._commit.enqueue[job.request_id] = job.rank
        job.add_event(now, state_changed=cpb.StateChanged(state=QUEUED))
        self._touch(job)

    def _dequeue(self, job: Job) -> None:
        self.queue.remove(job.request_id)
        self._commit.enqueue.pop(job.request_id, None)
        self._commit.dequeue.add(job.request_id)

    def _place(self, now: float) -> None:
        """Admit from the head of the queue while the head fits somewhere (best fit)."""
        while (request_id := self.queue.peek()) is not None:
            job = self.jobs[request_id]
            tokens = job.context_tokens + job.pending_tokens
            worker = best_fit(self.workers.values(), tokens, job.request.model)
            if worker is None:
                why = never_fits(self.workers.values(), tokens, job.request.model)
                if why is None:
                    return  # it fits once memory frees up (or a worker connects)
                # It would block everything behind it forever.
                self._finish(job, FAILED, cpb.FINISH_REASON_ERROR, why)
                continue
            self.queue.pop()
            self._commit.enqueue.pop(request_id, None)
            self._commit.dequeue.add(request_id)
            self._admit(job, worker, tokens, now)

    def _admit(self, job: Job, worker: WorkerHandle, tokens: int, now: float) -> None:
        if job.enqueued_at is not None:
            job.queue_s += max(now - job.enqueued_at, 0.0)
        job.enqueued_at = None
        job.state, job.worker_id, job.admitted_at = RUNNING, worker.worker_id, now
        job.strategy = worker.allowed(job.strategy)
        worker.held.add(job.request_id)
        worker.reserved[job.request_id] = worker.blocks_for(tokens + 1)
        message = pb.ConnectResponse(admit=self._admit_message(job))
        self._after.append(lambda: self._send_to_holder(job, worker, message))
        job.add_event(
            now, state_changed=cpb.StateChanged(state=RUNNING, worker_id=worker.worker_id)
        )
        self._touch(job)
        metrics.ADMITTED.inc()
        self.admission.admitted()

    def _admit_message(self, job: Job) -> pb.Admit:
        request = job.request
        admit = pb.Admit(
            request_id=job.request_id,
            rank=job.rank,
            sampling=request.sampling,
            max_new_tokens=max(job.max_tokens - job.completion_tokens, 0),
            strategy=STRATEGY_TO_PB[job.strategy],
            generated_tokens=job.completion_tokens,
            append_tokens=job.appended_tokens + job.pending_tokens,
        )
        # From the last exact context (the prompt, or what a worker handed back): generated ids
        # where they are known, and tool output appended since as text (or, in a replay, as a
        # count). A text prompt continues as its text and everything since, in order.
        base = job.context_token_ids or list(request.prompt_token_ids)
        if base:
            admit.context_token_ids.extend(base)
            admit.context_token_ids.extend(job.token_ids)
            admit.append_text = job.appended_text + job.pending_text
        else:
            admit.prompt = request.prompt
            admit.append_text = job.text + job.pending_text
        if request.HasField("replay"):
            admit.replay.segments.extend(job.replay_segments())
        return admit

    # Rounds ------------------------------------------------------------------------------------

    def _touch(self, job: Job) -> None:
        self._dirty.add(job.request_id)
        self._wake.set()

    async def _rounds(self) -> None:
        while True:
            await self._wake.wait()
            # Let calls and reports that are already waiting run first, so one round (and one
            # commit) serves them all.
            await asyncio.sleep(0)
            self._wake.clear()
            started = time.perf_counter()
            now = time.time()
            predicted, self._predicted = self._predicted, []
            for job in predicted:
                self._accept(job, now)
            if not self._closing:
                self._place(now)
            await self._commit_round()
            metrics.ROUND_SECONDS.observe(time.perf_counter() - started)
            if self._closing:
                return

    async def _commit_round(self) -> None:
        commit, after = self._take()
        while commit:
            try:
                await self.store.commit(commit, fence=self.settings.replica_id)
                break
            except NotLeaderError:
                self.step_down()
                return
            except StoreError as exc:
                metrics.STORE_ERRORS.inc()
                log.error(
                    "cannot write the round to the store; retrying", extra={"error": str(exc)}
                )
                await asyncio.sleep(STORE_RETRY_SECONDS)
        for request_id, (first, events) in commit.events.items():
            job = self.jobs.get(request_id)
            if job is not None:
                job.published = max(job.published, first + len(events))
                job.changed.set()
                job.changed = asyncio.Event()
        for deliver in after:
            deliver()
        for request_id in commit.finished:
            self._retire(request_id)

    def _take(self) -> tuple[Commit, list[Callable[[], None]]]:
        commit, self._commit = self._commit, Commit()
        after, self._after = self._after, []
        for request_id in self._dirty:
            job = self.jobs.get(request_id)
            if job is None:
                continue
            if request_id in self.queue:
                job.passed_over = self.queue.passed_over(request_id)
            fields = {"state": job.state_bytes()}
            if request_id in self._unsaved:
                fields["request"] = job.request.SerializeToString()
            commit.records[request_id] = fields
            pending = job.events[job.published - job.events_base :]
            if pending:
                commit.events[request_id] = (
                    job.published,
                    [event.SerializeToString() for event in pending],
                )
        self._unsaved.clear()
        self._dirty.clear()
        # Only what the store's queue holds needs removing from it.
        commit.dequeue &= self._stored_queue
        self._stored_queue -= commit.dequeue
        self._stored_queue.update(commit.enqueue)
        if self.queue.starved_total != self._starved_seen:
            self._starved_seen = self.queue.starved_total
            commit.starved = self.queue.starved()
        return commit, after

    def _retire(self, request_id: str) -> None:
        self._ended[request_id] = None
        while len(self._ended) > RETAINED_ENDED:
            old, _ = self._ended.popitem(last=False)
            job = self.jobs.pop(old, None)
            if job is not None and job.idempotency_key:
                self._keys.pop(job.idempotency_key, None)

    async def _gauge_loop(self) -> None:
        """Refresh the gauges, and now and then the tool-duration statistics defaults use."""
        refreshed = time.monotonic()
        while True:
            self._publish_gauges()
            await asyncio.sleep(GAUGE_PERIOD_S)
            if time.monotonic() - refreshed > TOOL_STATS_REFRESH_S:
                refreshed = time.monotonic()
                try:
                    self.predictor.stats = await self.store.tool_stats()
                except StoreError as exc:
                    log.warning("cannot refresh tool statistics", extra={"error": str(exc)})

    def _publish_gauges(self) -> None:
        trips = self.store.round_trips
        metrics.STORE_ROUND_TRIPS.inc(trips - self._round_trips_seen)
        self._round_trips_seen = trips
        starved = len(self.queue.starved()) if self.policy.starvation_threshold else 0
        waiting = len(self.queue)
        metrics.QUEUED.set(waiting)
        metrics.STARVED.set(starved)
        ready = [w for w in self.workers.values() if w.ready]
        metrics.QUEUED_PER_WORKER.set(waiting / len(ready) if ready else waiting)
        metrics.RUNNING.set(sum(w.running for w in self.workers.values()))
        metrics.IN_TOOL.set(len(self._tool_tasks))
        metrics.WORKERS.labels(state="ready").set(len(ready))
        metrics.WORKERS.labels(state="draining").set(
            sum(1 for w in self.workers.values() if w.draining and w.outbox is not None)
        )
        for worker in self.workers.values():
            total = max(int(worker.kv.total_blocks), 1)
            used = total - int(worker.kv.free_blocks)
            metrics.WORKER_KV_USED.labels(worker=worker.worker_id).set(used / total)
            metrics.WORKER_KV_FREE.labels(worker=worker.worker_id).set(int(worker.kv.free_blocks))
            metrics.WORKER_REQUESTS.labels(worker=worker.worker_id, state="running").set(
                worker.running
            )
            metrics.WORKER_REQUESTS.labels(worker=worker.worker_id, state="in_tool").set(
                len(worker.in_tool)
            )

    async def wait_committed(self) -> None:
        """Return once everything changed so far is in the store."""
        done = asyncio.get_running_loop().create_future()
        self._waiting.add(done)
        self._after.append(lambda: _resolve(done))
        self._wake.set()
        try:
            await done
        finally:
            self._waiting.discard(done)

    # Ending ------------------------------------------------------------------------------------

    def _finish(self, job: Job, state: int, reason: int, error: str = "") -> None:
        now = time.time()
        if job.request_id in self.queue:
            self._dequeue(job)
        worker = self.workers.get(job.worker_id) if job.worker_id else None
        if worker is not None and job.request_id in worker.held:
            if state == CANCELLED:
                # After the commit, like the Admit it may follow (still in flight): the worker
                # must never see the Abort first and then run the request anyway.
                abort = pb.ConnectResponse(abort=pb.Abort(request_id=job.request_id))
                self._after.append(lambda: worker.send(abort))
            self._release(worker, job.request_id)
            worker.forget(job.request_id)
        tool_task = self._tool_tasks.pop(job.request_id, None)
        if tool_task is not None:
            tool_task.cancel()
        self._cancel_timer(job.request_id)
        if job.enqueued_at is not None:
            job.queue_s += max(now - job.enqueued_at, 0.0)
        job.enqueued_at = None
        job.state, job.finish_reason, job.error_message = state, reason, error
        job.finished_at, job.call = now, None
        job.add_event(
            now,
            finished=cpb.Finished(
                state=state,  # type: ignore[arg-type]
                reason=reason,  # type: ignore[arg-type]
                usage=job.usage(),
                timings=job.timings(now),
                error_message=error,
            ),
        )
        self._commit.finished.add(job.request_id)
        self._touch(job)
        if state == FINISHED:
            self.predictor.report(job.request_id, job.outcomes)
        metrics.ENDED.labels(state=_STATE_NAMES.get(state, "unknown")).inc()

    def _release(self, worker: WorkerHandle, request_id: str) -> None:
        worker.held.discard(request_id)
        worker.in_tool.discard(request_id)
        worker.reserved.pop(request_id, None)

    async def cancel(self, request_id: str, tenant: str = SHARED_TENANT) -> int:
        """Cancel wherever the request is; its state afterwards."""
        self.require_leader()
        job = self.jobs.get(request_id)
        if job is None:
            stored = await self.store.record(request_id)
            if stored is None:
                raise RequestError(grpc.StatusCode.NOT_FOUND, _unknown(request_id))
            return _owned(Job.from_record(request_id, stored), tenant).state
        _owned(job, tenant)
        if not job.ended:
            self._finish(job, CANCELLED, cpb.FINISH_REASON_CANCELLED)
            await self.wait_committed()
        return job.state

    # Reading -----------------------------------------------------------------------------------

    async def record(self, request_id: str, tenant: str = SHARED_TENANT) -> pb.RequestRecord:
        job = self.jobs.get(request_id) if self.leader else None
        if job is None:
            stored = await self.store.record(request_id)
            if stored is None:
                raise RequestError(grpc.StatusCode.NOT_FOUND, _unknown(request_id))
            job = Job.from_record(request_id, stored)
        return _owned(job, tenant).to_record(time.time())

    async def watch(
        self, request_id: str, from_offset: int, tenant: str = SHARED_TENANT
    ) -> AsyncIterator[cpb.RequestEvent]:
        """The request's events from `from_offset`, following new ones until it ends."""
        job = self.jobs.get(request_id) if self.leader else None
        if job is None:
            stored = await self.store.record(request_id)
            if stored is None:
                raise RequestError(grpc.StatusCode.NOT_FOUND, _unknown(request_id))
            job = Job.from_record(request_id, stored)
            if not job.ended:
                self.require_leader()
        _owned(job, tenant)
        async for event in follow(job, self.store, from_offset):
            yield event

    def status(self) -> pb.ClusterStatusResponse:
        starved = len(self.queue.starved()) if self.policy.starvation_threshold else 0
        return pb.ClusterStatusResponse(
            policy=self.policy.name,
            leader_id=self.leader_id,
            queued=len(self.queue) - starved,
            starved=starved,
            running=sum(1 for job in self.jobs.values() if job.state == RUNNING),
            in_tool=sum(1 for job in self.jobs.values() if job.state == IN_TOOL),
            workers=[w.status() for w in self.workers.values() if w.outbox is not None],
            time_scale=self.time_scale,
        )

    # Timers and leases -------------------------------------------------------------------------

    def _cancel_timer(self, request_id: str) -> None:
        timer = self._timers.pop(request_id, None)
        if timer is not None:
            timer.cancel()

    async def _lease_loop(self) -> None:
        period = min(self.settings.worker_lease_s / 4, 0.5)
        while True:
            await asyncio.sleep(period)
            deadline = time.monotonic() - self.settings.worker_lease_s
            for worker in [w for w in self.workers.values() if w.last_seen < deadline]:
                self._expire(worker)

    def _expire(self, worker: WorkerHandle) -> None:
        log.warning(
            "worker lease expired; its requests are queued again",
            extra={"worker": worker.worker_id, "held": len(worker.held)},
        )
        for request_id in sorted(worker.held):
            job = self.jobs.get(request_id)
            if job is not None:
                self._lose(job, worker, "lease_expired")
        del self.workers[worker.worker_id]
        for state in ("running", "in_tool"):
            with contextlib.suppress(KeyError):
                metrics.WORKER_REQUESTS.remove(worker.worker_id, state)
        for gauge in (metrics.WORKER_KV_USED, metrics.WORKER_KV_FREE):
            with contextlib.suppress(KeyError):
                gauge.remove(worker.worker_id)
        if worker.outbox is not None:
            worker.outbox.put_nowait(None)
        self._wake.set()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _scoped(tenant: str, key: str) -> str:
    """An idempotency key as stored: each tenant's keys apart (keys cannot hold NUL); the shared
    tenant's as they were before tenants existed."""
    return f"{tenant}\0{key}" if tenant else key


def _owned(job: Job, tenant: str) -> Job:
    """`job` if `tenant` submitted it; otherwise NOT_FOUND, worded as for an unknown id, so no
    tenant learns that another's request exists."""
    if job.tenant != tenant:
        raise RequestError(grpc.StatusCode.NOT_FOUND, _unknown(job.request_id))
    return job


def _unknown(request_id: str) -> str:
    return f"no request {request_id!r}: it was never submitted here or its record has expired"
