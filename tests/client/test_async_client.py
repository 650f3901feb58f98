"""`AsyncClient` against a live scheduler, tool runner and sim workers."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from lamps.client import (
    Accepted,
    AsyncClient,
    Finished,
    InvalidRequest,
    NotFound,
    ReplaySegment,
    RequestState,
    Tokens,
    ToolCallStarted,
    Unauthenticated,
)
from tests.support.system import LocalSystem

SCRIPT = (
    ReplaySegment(12, "emulated.math", 1.0, 4),
    ReplaySegment(8, "emulated.qa", 1.0, 6),
    ReplaySegment(10),
)


async def test_two_generations_at_once_each_get_their_own_events(
    async_client: AsyncClient,
) -> None:
    async def run(prompt: str) -> list[object]:
        return [event async for event in async_client.generate(prompt, replay=SCRIPT)]

    first, second = await asyncio.gather(run("first"), run("second"))
    for events in (first, second):
        assert isinstance(events[0], Accepted)
        end = events[-1]
        assert isinstance(end, Finished)
        assert end.state is RequestState.FINISHED
        assert sum(len(e.token_ids) for e in events if isinstance(e, Tokens)) == 30
        assert [e.call.name for e in events if isinstance(e, ToolCallStarted)] == [
            "emulated.math",
            "emulated.qa",
        ]
    assert first[0].request_id != second[0].request_id  # type: ignore[attr-defined]


async def test_complete_returns_the_tool_calls_with_their_results(
    async_client: AsyncClient,
) -> None:
    result = await async_client.complete("compute", replay=SCRIPT)
    assert result.state is RequestState.FINISHED
    assert len(result.token_ids) == 30
    assert [(c.call.name, c.result is not None) for c in result.tool_calls] == [
        ("emulated.math", True),
        ("emulated.qa", True),
    ]
    record = await async_client.get_request(result.request_id)
    assert record.timings == result.timings


async def test_submit_is_idempotent_and_watch_resumes_from_an_offset(
    async_client: AsyncClient,
) -> None:
    key = f"job-{uuid.uuid4().hex}"
    first = await async_client.submit("once", idempotency_key=key, replay=SCRIPT)
    again = await async_client.submit("once", idempotency_key=key, replay=SCRIPT)
    assert first.created
    assert (again.request_id, again.created) == (first.request_id, False)
    whole = [e async for e in async_client.watch(first.request_id)]
    assert [e async for e in async_client.watch(first.request_id, from_offset=2)] == whole[2:]


async def test_cancel_mid_tool_ends_the_watch_cancelled(async_client: AsyncClient) -> None:
    script = [ReplaySegment(5, "emulated.qa", 200.0, 4), ReplaySegment(5)]
    submitted = await async_client.submit("a long call", replay=script)
    events = async_client.watch(submitted.request_id)
    async for event in events:
        if isinstance(event, ToolCallStarted):
            break
    assert await async_client.cancel(submitted.request_id) is RequestState.CANCELLED
    rest = [event async for event in events]
    assert isinstance(rest[-1], Finished)
    assert rest[-1].state is RequestState.CANCELLED


async def test_errors_are_typed(system: LocalSystem, async_client: AsyncClient) -> None:
    with pytest.raises(InvalidRequest, match=r"^INVALID_ARGUMENT: .*prompt"):
        await async_client.complete("")
    with pytest.raises(NotFound):
        await async_client.get_request("no-such-request")
    async with AsyncClient(system.target, token="wrong") as intruder:
        with pytest.raises(Unauthenticated):
            await intruder.cluster_status()
        with pytest.raises(Unauthenticated):
            [e async for e in intruder.watch("anything")]


async def test_cluster_status_sees_both_workers(async_client: AsyncClient) -> None:
    status = await async_client.cluster_status()
    assert sorted(w.worker_id for w in status.workers) == ["w1", "w2"]
