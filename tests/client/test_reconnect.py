"""Clients ride out a scheduler restart: SIGKILL, then the same port and the same Redis again.

This module starts a system of its own, since it kills the scheduler under its clients.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from lamps.client import (
    AsyncClient,
    Client,
    Event,
    Finished,
    ReplaySegment,
    RequestState,
    Tokens,
    ToolCallStarted,
    Unavailable,
)
from tests.support.redis import RedisProcess
from tests.support.system import CLIENT_TOKEN, LocalSystem, running_system

# A 40 s call (2 s at the tool runner's time scale): the scheduler dies while it runs.
SCRIPT = (ReplaySegment(10, "emulated.qa", 40.0, 4), ReplaySegment(10))


@pytest.fixture(scope="module")
def restartable(
    redis_process: RedisProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalSystem]:
    with running_system(tmp_path_factory.mktemp("restart"), redis_process.url) as running:
        yield running


def assert_whole(events: list[Event]) -> None:
    """Every event once, in order, ending in a normal finish with the script's tokens."""
    assert [e.offset for e in events] == list(range(len(events)))
    end = events[-1]
    assert isinstance(end, Finished)
    assert end.state is RequestState.FINISHED
    assert sum(len(e.token_ids) for e in events if isinstance(e, Tokens)) == 20


async def test_generate_and_watch_resume_after_the_scheduler_restarts(
    restartable: LocalSystem,
) -> None:
    async with AsyncClient(restartable.target, token=CLIENT_TOKEN) as client:
        submitted = await client.submit("watched", replay=SCRIPT)
        generated: list[Event] = []
        in_tool = asyncio.Event()

        async def generate() -> None:
            async for event in client.generate("generated", replay=SCRIPT):
                generated.append(event)
                if isinstance(event, ToolCallStarted):
                    in_tool.set()

        task = asyncio.create_task(generate())
        events = client.watch(submitted.request_id)
        watched: list[Event] = []
        async for event in events:
            watched.append(event)
            if isinstance(event, ToolCallStarted):
                break
        await in_tool.wait()
        # Both streams are open while the scheduler dies; reading on must resume them.
        restart = asyncio.create_task(asyncio.to_thread(restartable.restart_scheduler))
        watched += [event async for event in events]
        await restart
        await task
    assert_whole(watched)
    assert_whole(generated)


def test_a_blocking_watch_resumes_after_the_scheduler_restarts(
    restartable: LocalSystem,
) -> None:
    with Client(restartable.target, token=CLIENT_TOKEN) as client:
        submitted = client.submit("watched", replay=SCRIPT)
        events = client.watch(submitted.request_id)
        watched = []
        for event in events:
            watched.append(event)
            if isinstance(event, ToolCallStarted):
                break
        # The stream is open while the scheduler dies; reading on must resume it.
        restarter = threading.Thread(target=restartable.restart_scheduler)
        restarter.start()
        watched += list(events)
        restarter.join()
    assert_whole(watched)


async def test_a_keyed_submit_rides_out_a_scheduler_that_is_down(
    restartable: LocalSystem,
) -> None:
    async with AsyncClient(restartable.target, token=CLIENT_TOKEN) as client:
        restartable.kill_scheduler()
        try:
            # Unkeyed, a submission cannot be sent twice safely: the error is the caller's.
            with pytest.raises(Unavailable):
                await client.submit("unkeyed", replay=SCRIPT)
            keyed = asyncio.create_task(
                client.submit("keyed", idempotency_key="ride-out", replay=SCRIPT)
            )
            await asyncio.sleep(0.5)  # let it fail at least once against the closed port
            assert not keyed.done()
        finally:
            await asyncio.to_thread(restartable.start_scheduler)
        submitted = await keyed
        assert submitted.created
        again = await client.submit("keyed", idempotency_key="ride-out", replay=SCRIPT)
        assert again.request_id == submitted.request_id
        assert not again.created
        assert_whole([e async for e in client.watch(submitted.request_id)])
