"""Rebuilding the leader's state from the store (a restart, or a standby taking over).

Requests on workers stay theirs: each such worker is known only from the records until it
reconnects and says what it still holds, and its lease runs from the takeover. Queued requests
return in the stored order, those of the starved lane first and still starved; others keep the
count of admissions that passed them (short of the lane).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from lamps.model.strategy import Strategy
from lamps.scheduler.jobs import IN_TOOL, QUEUED, RUNNING, Job
from lamps.scheduler.placement import WorkerHandle
from lamps.scheduler.policy import RankedQueue
from lamps.scheduler.queue import Snapshot
from lamps.v1 import common_pb2 as cpb

log = logging.getLogger(__name__)


@dataclass
class Rebuilt:
    """The state a new leader starts from."""

    jobs: dict[str, Job]
    workers: dict[str, WorkerHandle]
    queue: RankedQueue[str]
    # Idempotency key -> (request id, body digest).
    keys: dict[str, tuple[str, str]]


def rebuild(snapshot: Snapshot, starvation_threshold: int | None, now: float) -> Rebuilt:
    """The state in `snapshot`; `now` (monotonic) starts the leases of absent workers."""
    state = Rebuilt({}, {}, RankedQueue[str](starvation_threshold), {})
    for request_id, fields in snapshot.records.items():
        try:
            job = Job.from_record(request_id, fields)
        except (KeyError, ValueError, TypeError) as exc:
            log.error(
                "unreadable record skipped", extra={"request_id": request_id, "error": str(exc)}
            )
            continue
        state.jobs[request_id] = job
        if job.idempotency_key:
            state.keys[job.idempotency_key] = (request_id, job.digest)
        if job.worker_id and job.state in (RUNNING, IN_TOOL):
            worker = state.workers.get(job.worker_id) or _absent(state, job.worker_id, now)
            worker.held.add(request_id)
            if job.state == IN_TOOL:
                worker.in_tool.add(request_id)
    _requeue(state, snapshot, starvation_threshold or 0)
    return state


def _requeue(state: Rebuilt, snapshot: Snapshot, threshold: int) -> None:
    starved = set(snapshot.starved)
    order = list(snapshot.starved) + [rid for rid, _ in snapshot.queue if rid not in starved]
    seen = set(order)
    # Queued requests missing from the stored queue (there should be none) are not lost.
    order += sorted(
        (rid for rid, job in state.jobs.items() if job.state == QUEUED and rid not in seen),
        key=lambda rid: state.jobs[rid].rank,
    )
    for rid in order:
        job = state.jobs.get(rid)
        if job is None or job.state != QUEUED or rid in state.queue:
            continue
        passed = threshold if rid in starved else min(job.passed_over, max(threshold - 1, 0))
        state.queue.push(rid, job.rank, job.created_at, passed_over=passed)


def _absent(state: Rebuilt, worker_id: str, now: float) -> WorkerHandle:
    """A worker known only from records: it has a lease's time to reconnect."""
    worker = WorkerHandle(
        worker_id=worker_id,
        model="",
        engine="",
        strategies=frozenset(Strategy),
        max_running=0,
        kv=cpb.KvUsage(),
        last_seen=now,
        last_report_at=time.time(),
    )
    state.workers[worker_id] = worker
    return worker
