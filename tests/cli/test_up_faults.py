"""`lamps up` riding out faults while requests run: the leading scheduler SIGKILLed (a standby
takes over), the embedded Redis SIGKILLed (restarted on its data), the tool runner hung by
SIGSTOP (each call ends in an error the model reads). Every request accepted finishes once, with
every event seen exactly once.

One system for the module: two scheduler replicas, two sim workers, 20x time, client auth on.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path

import pytest

from lamps.client import (
    AsyncClient,
    Event,
    Finished,
    ReplaySegment,
    RequestState,
    Tokens,
    ToolCallFinished,
    ToolCallStarted,
    ToolErrorCode,
    WorkerState,
)
from tests.support.lamps_up import (
    SCHEDULER_SERVICE,
    LampsUp,
    alive,
    lamps_up,
    leading_scheduler,
    serves,
)

TOKEN = "faults-test-token"
# Engine seconds at 20x: the qa call lasts 2 s of wall time, long enough to land a fault in it,
# and a tool call times out after 60 (3 s of wall time, and a hung tool runner's after 6).
SCRIPT = [
    ReplaySegment(20, "emulated.math", 1.0, 5),
    ReplaySegment(30, "emulated.qa", 40.0, 12),
    ReplaySegment(15),
]
TOOL_TIMEOUT = "60"
TOKENS = 65
REQUESTS = 6
POLL_S = 0.1
RECOVERY_S = 60.0


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LampsUp]:
    directory = tmp_path_factory.mktemp("faults")
    args = ("--port", "0", "--schedulers", "2", "--workers", "2", "--time-scale", "20")
    with lamps_up(
        directory, *args, "--tool-timeout-seconds", TOOL_TIMEOUT, "--token", TOKEN
    ) as running:
        yield running


@pytest.fixture
async def client(system: LampsUp) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(system.target, token=TOKEN, timeout_s=30) as connected:
        yield connected


async def eventually(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll `condition` (a state of other processes, with no event to await) until it holds."""
    try:
        async with asyncio.timeout(RECOVERY_S):
            while not await condition():  # noqa: ASYNC110
                await asyncio.sleep(POLL_S)
    except TimeoutError:
        raise AssertionError(f"not {what} within {RECOVERY_S:g} s") from None


async def watch_all(
    client: AsyncClient, request_ids: Sequence[str], in_tool: asyncio.Event
) -> list[list[Event]]:
    """Every event of each request, by Watch (resumed by the SDK across faults); `in_tool` is
    set once any of them is in a tool call."""

    async def watch(request_id: str) -> list[Event]:
        events = []
        async for event in client.watch(request_id):
            events.append(event)
            if isinstance(event, ToolCallStarted):
                in_tool.set()
        return events

    return await asyncio.gather(*(watch(request_id) for request_id in request_ids))


def assert_finished_once(events: Sequence[Event], tokens: int = TOKENS) -> None:
    """The request finished, and its log reached the client whole: no event missing or twice."""
    end = events[-1]
    assert isinstance(end, Finished)
    assert end.state is RequestState.FINISHED, end
    assert [event.offset for event in events] == list(range(len(events)))
    assert sum(len(e.token_ids) for e in events if isinstance(e, Tokens)) == tokens


async def run_through(
    client: AsyncClient, label: str, fault: Callable[[], None]
) -> list[list[Event]]:
    """Submit REQUESTS requests, apply `fault` once one is in a tool call, and collect every
    request's events."""
    submitted = [
        await client.submit(f"{label} {i}", idempotency_key=f"{label}-{i}", replay=SCRIPT)
        for i in range(REQUESTS)
    ]
    in_tool = asyncio.Event()
    watching = asyncio.ensure_future(watch_all(client, [s.request_id for s in submitted], in_tool))
    await in_tool.wait()
    fault()
    return await watching


async def test_a_killed_leader_hands_over_to_the_standby_and_nothing_is_lost(
    system: LampsUp, client: AsyncClient
) -> None:
    leader = await leading_scheduler(system)
    victim = system.part(leader)["pid"]

    results = await run_through(client, "failover", lambda: os.kill(victim, signal.SIGKILL))

    for events in results:
        assert_finished_once(events)
    assert await leading_scheduler(system) != leader
    # The workers re-registered with the new leader, which now schedules for both.
    status = await client.cluster_status()
    assert {(w.worker_id, w.state) for w in status.workers} == {
        ("worker-0", WorkerState.READY),
        ("worker-1", WorkerState.READY),
    }
    # A resubmission is recognised, not run twice.
    again = await client.submit("failover 0", idempotency_key="failover-0", replay=SCRIPT)
    assert again.request_id == results[0][0].request_id
    assert not again.created

    # The supervisor restarts the killed replica, on its address, as a standby.
    async def restarted() -> bool:
        part = system.part(leader)
        return part["pid"] != victim and await serves(part["address"], "")

    await eventually(restarted, f"{leader} restarted")
    assert alive(system.part(leader)["pid"])
    assert not await serves(system.part(leader)["address"], SCHEDULER_SERVICE)
    assert f"{leader} exited with status -9; restarting" in system.stderr
    assert_finished_once((await client.complete("after", replay=SCRIPT)).events)


def test_endpoints_name_every_scheduler_replica_and_the_address_of_all(system: LampsUp) -> None:
    endpoints = system.endpoints()
    addresses = [endpoints["parts"][name]["address"] for name in ("scheduler-0", "scheduler-1")]
    assert endpoints["scheduler"] == "ipv4:" + ",".join(addresses)
    assert f"LAMPS is up at {endpoints['scheduler']}" in system.banner
    assert Path(endpoints["log_dir"]).is_dir()


async def test_a_killed_redis_is_restarted_on_its_data_and_requests_ride_it_out(
    system: LampsUp, client: AsyncClient
) -> None:
    redis = system.part("redis")

    results = await run_through(client, "redis", lambda: os.kill(redis["pid"], signal.SIGKILL))

    for events in results:
        assert_finished_once(events)
    restarted = system.part("redis")
    assert (restarted["port"], alive(restarted["pid"])) == (redis["port"], True)
    assert restarted["pid"] != redis["pid"]
    # What was written before the crash was read back from the append-only file.
    again = await client.submit("redis 0", idempotency_key="redis-0", replay=SCRIPT)
    assert (again.request_id, again.created) == (results[0][0].request_id, False)
    record = await client.get_request(results[-1][0].request_id)
    assert record.state is RequestState.FINISHED
    assert_finished_once((await client.complete("after", replay=SCRIPT)).events)


async def test_a_hung_tool_runner_fails_each_call_readably_and_recovers(
    system: LampsUp, client: AsyncClient
) -> None:
    runner = system.part("tool-runner")["pid"]
    try:
        results = await run_through(client, "hang", lambda: os.kill(runner, signal.SIGSTOP))
    finally:
        os.kill(runner, signal.SIGCONT)

    # Calls that had not ended when the runner stopped ended with a timeout the model read,
    # and every request went on to its end.
    timed_out = []
    for events in results:
        assert_finished_once(events)
        ended = [e.result for e in events if isinstance(e, ToolCallFinished)]
        assert len(ended) == 2
        timed_out += [r for r in ended if r.error is not None]
    assert timed_out
    for result in timed_out:
        assert result.error is not None
        assert result.error.code is ToolErrorCode.TIMEOUT
        assert "did not answer within" in result.error.message
    # Continued, the runner serves calls again.
    after = await client.complete("after", replay=SCRIPT)
    assert_finished_once(after.events)
    assert [call.result.error for call in after.tool_calls if call.result] == [None, None]
