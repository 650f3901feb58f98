"""The request lifecycle end to end: client, scheduler, Redis, tool runner and protocol workers."""

from __future__ import annotations

from lamps.v1 import common_pb2 as cpb
from tests.scheduler.conftest import RunningScheduler, make_request


def kinds(events: list[cpb.RequestEvent]) -> list[str]:
    return [str(event.WhichOneof("kind")) for event in events]


def states(events: list[cpb.RequestEvent]) -> list[int]:
    return [e.state_changed.state for e in events if e.HasField("state_changed")]


async def test_a_plain_request_runs_to_the_end(scheduler: RunningScheduler) -> None:
    await scheduler.worker()
    request_id = await scheduler.submit(make_request())
    events = await scheduler.events(request_id)
    assert kinds(events) == ["accepted", "state_changed", "state_changed", "tokens", "finished"]
    assert [event.offset for event in events] == list(range(len(events)))
    assert states(events) == [cpb.REQUEST_STATE_QUEUED, cpb.REQUEST_STATE_RUNNING]
    finished = events[-1].finished
    assert finished.state == cpb.REQUEST_STATE_FINISHED
    assert finished.usage.completion_tokens == 3
    record = await scheduler.record(request_id)
    assert record.state == cpb.REQUEST_STATE_FINISHED
    assert record.next_offset == len(events)
