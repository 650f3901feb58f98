"""Rebuilding a leader's state from a snapshot of the store (pure: no server)."""

from __future__ import annotations

from lamps.scheduler.jobs import IN_TOOL, QUEUED, RUNNING, Job
from lamps.scheduler.queue import Snapshot
from lamps.scheduler.recovery import rebuild
from lamps.v1 import scheduler_pb2 as pb


def record(request_id: str, state: int, *, rank: float = 1.0, **fields: object) -> dict[str, bytes]:
    job = Job(
        request_id=request_id,
        request=pb.GenerateRequest(prompt=request_id),
        created_at=float(len(request_id)),
        max_tokens=10,
        prompt_tokens=2,
        state=state,
        rank=rank,
        **fields,  # type: ignore[arg-type]
    )
    return {"request": job.request.SerializeToString(), "state": job.state_bytes()}


def test_the_lane_comes_first_then_the_ranked_queue_then_strays() -> None:
    snapshot = Snapshot(
        records={
            "big": record("big", QUEUED, rank=50.0, passed_over=3),
            "small": record("small", QUEUED, rank=1.0),
            "starved": record("starved", QUEUED, rank=90.0),
            "stray": record("stray", QUEUED, rank=0.5),
        },
        queue=[("small", 1.0), ("big", 50.0)],
        starved=["starved"],
        meta={},
    )
    state = rebuild(snapshot, starvation_threshold=5, now=0.0)
    assert state.queue.starved() == ["starved"]
    assert state.queue.ranked() == ["starved", "stray", "small", "big"]
    assert state.queue.passed_over("big") == 3
    # Two more admissions ahead of it and the big one starves too.
    state.queue.pop()
    state.queue.pop()
    state.queue.pop()
    assert state.queue.starved() == ["big"]


def test_requests_on_workers_stay_theirs_until_the_workers_come_back() -> None:
    snapshot = Snapshot(
        records={
            "run": record("run", RUNNING, worker_id="w1"),
            "tool": record("tool", IN_TOOL, worker_id="w1"),
            "keyed": record("keyed", QUEUED, idempotency_key="k", digest="d"),
            "broken": {"state": b"not json"},
        },
        queue=[("keyed", 1.0)],
        starved=[],
        meta={},
    )
    state = rebuild(snapshot, starvation_threshold=None, now=42.0)
    assert set(state.jobs) == {"run", "tool", "keyed"}
    worker = state.workers["w1"]
    assert worker.held == {"run", "tool"}
    assert worker.in_tool == {"tool"}
    assert worker.outbox is None
    assert worker.last_seen == 42.0
    assert state.keys == {"k": ("keyed", "d")}
