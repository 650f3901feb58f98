"""Local mode as a user meets it: one `lamps up` (two sim workers, 20x time, client auth on),
driven only through the SDK (`lamps.client`, blocking and asyncio) and the `lamps` commands run
as processes: generate, status and bench.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from lamps.client import (
    Accepted,
    AsyncClient,
    Client,
    Event,
    Finished,
    InvalidRequest,
    ReplaySegment,
    RequestState,
    Result,
    StateChanged,
    Strategy,
    Tokens,
    ToolCallStarted,
    Unauthenticated,
)
from tests.support.lamps_up import LampsUp, lamps_up
from tests.support.processes import REPO_ROOT, lamps_command

TOKEN = "local-mode-token"
TIME_SCALE = "20"
CLI_TIMEOUT_S = 120.0
# Two calls, engine seconds (a twentieth of that in wall time): 65 tokens generated, 17 returned.
SCRIPT = [
    ReplaySegment(20, "emulated.math", 1.0, 5),
    ReplaySegment(30, "emulated.qa", 2.0, 12),
    ReplaySegment(15),
]


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LampsUp]:
    directory = tmp_path_factory.mktemp("local-mode")
    args = ("--port", "0", "--workers", "2", "--time-scale", TIME_SCALE, "--token", TOKEN)
    with lamps_up(directory, *args) as running:
        yield running
        # Ctrl-C's path: every part drains and stops, so no worker is left behind.
        assert running.stop() == 0, running.stderr


@pytest.fixture
def client(system: LampsUp) -> Iterator[Client]:
    with Client(system.target, token=TOKEN, timeout_s=30) as connected:
        yield connected


def lamps(system: LampsUp, *args: str) -> subprocess.CompletedProcess[str]:
    """`lamps ARGS --address ... --token ...` as a process, with no LAMPS_* variables set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMPS_")}
    return subprocess.run(
        lamps_command(*args, "--address", system.target, "--token", TOKEN),
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


def replay_of(tokens: int, tool: str = "", seconds: float = 0.0) -> list[ReplaySegment]:
    """`tokens` tokens; with a `tool`, then a call of it lasting `seconds` (engine time) that
    returns 3 tokens, and 5 tokens more."""
    if not tool:
        return [ReplaySegment(tokens)]
    return [ReplaySegment(tokens, tool, seconds, 3), ReplaySegment(5)]


def generated(events: Sequence[Event]) -> int:
    return sum(len(event.token_ids) for event in events if isinstance(event, Tokens))


def test_a_request_with_several_tool_calls_completes_with_exact_counts_and_timings(
    client: Client,
) -> None:
    result = client.complete("Add 2 and 3, then look up Paris.", replay=SCRIPT)

    assert result.state is RequestState.FINISHED, result.error_message
    assert result.text
    assert len(result.token_ids) == result.usage.completion_tokens == 65
    assert result.usage.tool_calls == 2
    assert result.usage.tool_output_tokens == 17
    assert result.usage.prompt_tokens > 0
    assert [record.call.name for record in result.tool_calls] == ["emulated.math", "emulated.qa"]
    for record in result.tool_calls:
        assert record.result is not None
        assert record.result.error is None
    timings = result.timings
    assert timings.total_s >= timings.tool_s > 0
    assert timings.ttft_s > 0


async def test_a_short_call_is_preserved_and_a_long_one_swapped(system: LampsUp) -> None:
    # The lamps policy picks the strategy from the predicted call duration: a calculator takes
    # a fraction of a millisecond, a chatbot (a human's reply) half a minute, which is not worth
    # holding the KV for. The replayed calls themselves are short either way.
    prompt = "Summarise this report. " * 17
    async with AsyncClient(system.target, token=TOKEN) as client:
        short, long = await asyncio.gather(
            client.complete(
                prompt, tools=["emulated.math"], replay=replay_of(10, "emulated.math", 0.2)
            ),
            client.complete(
                prompt, tools=["emulated.chatbot"], replay=replay_of(10, "emulated.chatbot", 1.0)
            ),
        )

    for result in (short, long):
        assert result.state is RequestState.FINISHED, result.error_message
        assert result.usage.completion_tokens == 15
        # Neither lost its KV: each resumed on its worker without queueing or recomputing.
        assert result.usage.recomputed_tokens == 0
        states = [event.state for event in result.events if isinstance(event, StateChanged)]
        assert states.count(RequestState.QUEUED) == 1
    assert [call.strategy for call in short.tool_calls] == [Strategy.PRESERVE]
    # Freeing a context this short by recomputing it costs more than copying it out and back,
    # however busy the worker is (the profile's waste formulas, PAPER.md section 6).
    assert [call.strategy for call in long.tool_calls] == [Strategy.SWAP]


def test_cancel_during_a_tool_call_ends_the_request_and_frees_its_worker(client: Client) -> None:
    # Ten engine minutes of chatbot: far longer than the test, so the cancel lands mid-call.
    submitted = client.submit("Ask a human.", replay=replay_of(5, "emulated.chatbot", 600.0))
    events: list[Event] = []
    worker_id = ""
    for event in client.watch(submitted.request_id):
        events.append(event)
        if isinstance(event, StateChanged) and event.worker_id:
            worker_id = event.worker_id
        if isinstance(event, ToolCallStarted):
            client.cancel(submitted.request_id)

    end = events[-1]
    assert isinstance(end, Finished)
    assert end.state is RequestState.CANCELLED
    assert any(isinstance(event, ToolCallStarted) for event in events)
    assert client.get_request(submitted.request_id).state is RequestState.CANCELLED
    (worker,) = [w for w in client.cluster_status().workers if w.worker_id == worker_id]
    assert (worker.running, worker.in_tool) == (0, 0)
    assert client.complete("And now?", replay=replay_of(8)).state is RequestState.FINISHED


async def test_two_clients_at_once_each_get_only_their_own_events(system: LampsUp) -> None:
    def blocking() -> list[Event]:
        with Client(system.target, token=TOKEN) as sync_client:
            return list(sync_client.generate("first", replay=replay_of(12, "emulated.math", 0.5)))

    async def streaming() -> list[Event]:
        async with AsyncClient(system.target, token=TOKEN) as async_client:
            replay = replay_of(17, "emulated.qa", 0.5)
            return [event async for event in async_client.generate("second", replay=replay)]

    first, second = await asyncio.gather(asyncio.to_thread(blocking), streaming())

    for events, tokens in ((first, 17), (second, 22)):
        accepted = events[0]
        assert isinstance(accepted, Accepted)
        assert {event.request_id for event in events} == {accepted.request_id}
        assert [event.offset for event in events] == list(range(len(events)))
        assert Result.from_events(events).state is RequestState.FINISHED
        assert generated(events) == tokens
    assert first[0].request_id != second[0].request_id


def test_an_empty_prompt_is_refused_with_what_to_fix(client: Client) -> None:
    with pytest.raises(InvalidRequest) as refused:
        client.complete("")
    assert "prompt is empty" in refused.value.message
    assert "prompt_token_ids" in refused.value.message


def test_a_wrong_token_is_refused(system: LampsUp) -> None:
    with Client(system.target, token="not-the-token", timeout_s=30) as stranger:
        with pytest.raises(Unauthenticated):
            stranger.cluster_status()
        with pytest.raises(Unauthenticated):
            stranger.complete("hello", replay=replay_of(3))


def test_lamps_generate_refuses_an_empty_prompt_with_exit_1(system: LampsUp) -> None:
    run = lamps(system, "generate", "")
    assert run.returncode == 1, run.stderr
    assert "INVALID_ARGUMENT: the prompt is empty" in run.stderr
    assert run.stdout == ""


def test_lamps_generate_streams_text_from_the_sim_engine(system: LampsUp) -> None:
    run = lamps(system, "generate", "What is 2+3?", "--max-tokens", "48")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip()
    assert "finished" in run.stderr.splitlines()[-1]


def test_lamps_status_lists_both_workers(system: LampsUp) -> None:
    run = lamps(system, "status")
    assert run.returncode == 0, run.stderr
    assert "worker-0" in run.stdout
    assert "worker-1" in run.stdout
    document = json.loads(lamps(system, "status", "--json").stdout)
    assert sorted(w["worker_id"] for w in document["workers"]) == ["worker-0", "worker-1"]


def test_lamps_bench_measures_the_live_system_beside_the_simulator(
    system: LampsUp, tmp_path: Path
) -> None:
    results, plot = tmp_path / "bench.json", tmp_path / "cdf.png"
    run = lamps(
        system,
        *("bench", "--duration", "20", "--rates", "2", "--compare-simulator"),
        *("--json", str(results), "--plot", str(plot)),
    )

    assert run.returncode == 0, run.stderr
    rows = json.loads(results.read_text())["results"]
    assert sorted(row["source"] for row in rows) == ["live", "simulated"]
    (live,) = [row for row in rows if row["source"] == "live"]
    assert live["failed"] == 0
    assert live["policy"] == "lamps"
    assert plot.stat().st_size > 0
    assert "rate 2 req/s" in run.stdout
    assert "live against simulated" in run.stdout


def test_lamps_bench_refuses_a_time_scale_other_than_the_systems(system: LampsUp) -> None:
    run = lamps(system, "bench", "--time-scale", "3", "--duration", "5")
    assert run.returncode == 2
    assert f"--time-scale 3 does not match the system's ({TIME_SCALE})" in run.stderr
