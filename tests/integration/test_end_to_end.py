"""The whole system, each service a real process on loopback: scheduler (on a real Redis),
predictor, tool runner and workers, driven only through the scheduler's public API.

The worker and scheduler suites each test their side against a protocol-level peer; here the real
agent meets the real gateway: requests with several tool calls finish with exact token counts,
cancellation reaches a request in a tool, a worker drained by SIGTERM loses nothing, and the real
`vllm` engine serves through the same path.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from lamps.scheduler.embedded import free_port
from lamps.v1 import common_pb2 as cpb
from lamps.v1 import scheduler_pb2 as pb
from tests.support.processes import ServiceProcess, StartService, lamps_command, loopback_serve_args
from tests.support.raw_client import RawClient
from tests.support.replay import replay

CLUSTER_TOKEN = "cluster-secret"
CLIENT_TOKEN = "client-secret"
TIMEOUT_S = 120.0


def start_system(
    start_process: StartService, redis_url: str, *, policy: str = "lamps"
) -> tuple[ServiceProcess, ServiceProcess]:
    """Tool runner (emulated tools 20x faster) and scheduler; the scheduler is returned first."""
    tool_runner = start_process(
        lamps_command(*loopback_serve_args("tool-runner"), "--time-scale", "0.05")
    )
    scheduler = start_scheduler(
        start_process, redis_url, f"e2e-{uuid.uuid4().hex[:8]}", tool_runner, policy=policy
    )
    return scheduler, tool_runner


def start_scheduler(
    start_process: StartService,
    redis_url: str,
    prefix: str,
    tool_runner: ServiceProcess,
    *,
    policy: str = "lamps",
    port: int = 0,
) -> ServiceProcess:
    return start_process(
        lamps_command(
            *loopback_serve_args("scheduler"),
            *("--port", str(port)),
            *("--redis-url", redis_url, "--redis-prefix", prefix, "--policy", policy),
            *("--tool-runner-address", tool_runner.target, "--worker-lease-seconds", "3"),
        ),
        env={"LAMPS_AUTH_TOKENS": CLIENT_TOKEN, "LAMPS_CLUSTER_TOKENS": CLUSTER_TOKEN},
    )


def start_worker(
    start_process: StartService,
    scheduler: ServiceProcess,
    worker_id: str,
    *args: str,
    wait: bool = True,
) -> ServiceProcess:
    worker = start_process(
        lamps_command(
            *loopback_serve_args("worker"),
            "--scheduler-address",
            scheduler.target,
            "--worker-id",
            worker_id,
            *args,
        ),
        env={"LAMPS_CLUSTER_TOKEN": CLUSTER_TOKEN},
        wait=wait,
    )
    _WORKERS.append(worker)
    return worker


_WORKERS: list[ServiceProcess] = []


@pytest.fixture(autouse=True)
def _workers_stop_first(start_process: StartService) -> Iterator[None]:
    """Stop workers before the scheduler, as a rollout does, so each hands back what it holds
    to a scheduler that is still there (and none waits to deliver its last reports)."""
    yield
    while _WORKERS:
        assert _WORKERS.pop().terminate() == 0


def kinds(events: Sequence[cpb.RequestEvent]) -> list[str]:
    return [str(e.WhichOneof("kind")) for e in events]


def generated(events: Sequence[cpb.RequestEvent]) -> list[int]:
    return [t for e in events if e.WhichOneof("kind") == "tokens" for t in e.tokens.token_ids]


def finished(events: Sequence[cpb.RequestEvent]) -> cpb.Finished:
    ends = [e.finished for e in events if e.WhichOneof("kind") == "finished"]
    assert len(ends) == 1, kinds(events)
    return ends[0]


async def test_requests_with_tool_calls_finish_through_real_workers(
    start_process: StartService, redis_server: str
) -> None:
    scheduler, _ = start_system(start_process, redis_server)
    # Room for about 650 tokens of GPT-J's KV each: the six requests cannot all fit on one worker.
    for worker_id in ("w1", "w2"):
        start_worker(
            start_process,
            scheduler,
            worker_id,
            "--time-scale",
            "20",
            "--kv-cache-bytes",
            "300000000",
        )
    client = RawClient(scheduler.target, CLIENT_TOKEN)
    try:
        status = await client.wait_for_workers(2)
        assert {w.worker_id for w in status.workers} == {"w1", "w2"}
        script = replay(
            (20, "emulated.math", 1.0, 5), (30, "emulated.qa", 2.0, 12), (15, "", 0.0, 0)
        )
        requests = [
            pb.GenerateRequest(prompt=f"question {i}: " + "why? " * (10 + 40 * i), replay=script)
            for i in range(6)
        ]
        runs = await asyncio.gather(*(client.generate(r) for r in requests))
        for events in runs:
            end = finished(events)
            assert end.state == cpb.REQUEST_STATE_FINISHED, end
            # Exactly the script's lengths, every token once, offsets without gaps.
            assert len(generated(events)) == 65
            assert end.usage.completion_tokens == 65
            assert end.usage.tool_calls == 2
            assert end.usage.tool_output_tokens == 17
            assert [e.offset for e in events] == list(range(len(events)))
            calls = [
                e.tool_call_started.call.name for e in events if e.HasField("tool_call_started")
            ]
            assert calls == ["emulated.math", "emulated.qa"]
            results = [
                e.tool_call_finished.result for e in events if e.HasField("tool_call_finished")
            ]
            assert [r.error.code for r in results] == [cpb.TOOL_ERROR_CODE_UNSPECIFIED] * 2
            assert end.timings.tool_seconds > 0
        # Best fit filled one worker and placed the rest on the other.
        placed = {
            e.state_changed.worker_id
            for events in runs
            for e in events
            if e.HasField("state_changed") and e.state_changed.worker_id
        }
        assert placed == {"w1", "w2"}
    finally:
        await client.close()


async def test_a_request_cancelled_in_its_tool_call_ends_cancelled(
    start_process: StartService, redis_server: str
) -> None:
    scheduler, _ = start_system(start_process, redis_server)
    start_worker(start_process, scheduler, "w1", "--time-scale", "20")
    client = RawClient(scheduler.target, CLIENT_TOKEN)
    try:
        await client.wait_for_workers(1)
        # A 200 s tool call (10 s with the tool runner's time scale): cancelled while it runs.
        request_id = await client.submit(
            pb.GenerateRequest(
                prompt="a long call", replay=replay((5, "emulated.qa", 200.0, 4), (5, "", 0, 0))
            )
        )
        for _ in range(400):
            record = (
                await client.stub.GetRequest(
                    pb.GetRequestRequest(request_id=request_id), metadata=client.metadata
                )
            ).record
            if record.state == cpb.REQUEST_STATE_IN_TOOL:
                break
            await asyncio.sleep(0.05)
        assert record.state == cpb.REQUEST_STATE_IN_TOOL
        response = await client.stub.Cancel(
            pb.CancelRequest(request_id=request_id), metadata=client.metadata
        )
        assert response.state == cpb.REQUEST_STATE_CANCELLED
        end = finished(await client.watch(request_id))
        assert end.state == cpb.REQUEST_STATE_CANCELLED
        # The worker dropped it: nothing held, KV free again (at its next report).
        for _ in range(200):
            status = await client.status()
            (worker,) = status.workers
            if (
                worker.running == worker.in_tool == 0
                and worker.kv.free_blocks == worker.kv.total_blocks
            ):
                break
            await asyncio.sleep(0.05)
        assert (worker.running, worker.in_tool) == (0, 0)
        assert worker.kv.free_blocks == worker.kv.total_blocks
    finally:
        await client.close()


async def test_a_worker_drained_by_sigterm_loses_no_request(
    start_process: StartService, redis_server: str
) -> None:
    scheduler, _ = start_system(start_process, redis_server)
    # The first worker drains with no grace: what it holds goes back to the queue at once.
    leaving = start_worker(
        start_process, scheduler, "leaving", "--time-scale", "5", "--drain-seconds", "0"
    )
    client = RawClient(scheduler.target, CLIENT_TOKEN)
    try:
        await client.wait_for_workers(1)
        script = replay((40, "emulated.math", 4.0, 3), (40, "", 0.0, 0))
        ids = [
            await client.submit(pb.GenerateRequest(prompt=f"request {i}", replay=script))
            for i in range(8)
        ]
        for _ in range(400):
            status = await client.status()
            if status.running + status.in_tool > 0:
                break
            await asyncio.sleep(0.05)
        start_worker(start_process, scheduler, "staying", "--time-scale", "20")
        assert leaving.terminate() == 0
        runs = await asyncio.gather(*(client.watch(i) for i in ids))
        for events in runs:
            end = finished(events)
            assert end.state == cpb.REQUEST_STATE_FINISHED, end
            assert end.usage.completion_tokens == 80
            assert end.usage.tool_calls == 1
        status = await client.status()
        assert [w.worker_id for w in status.workers] == ["staying"]
    finally:
        await client.close()


async def test_workers_reconnect_to_a_restarted_scheduler_and_nothing_is_lost(
    start_process: StartService, redis_server: str
) -> None:
    tool_runner = start_process(
        lamps_command(*loopback_serve_args("tool-runner"), "--time-scale", "0.05")
    )
    prefix, port = f"e2e-{uuid.uuid4().hex[:8]}", free_port()
    scheduler = start_scheduler(start_process, redis_server, prefix, tool_runner, port=port)
    for worker_id in ("w1", "w2"):
        start_worker(start_process, scheduler, worker_id, "--time-scale", "10")
    client = RawClient(scheduler.target, CLIENT_TOKEN)
    try:
        await client.wait_for_workers(2)
        script = replay((30, "emulated.qa", 4.0, 6), (30, "emulated.math", 2.0, 3), (20, "", 0, 0))
        ids = [
            await client.submit(pb.GenerateRequest(prompt=f"request {i} " * 20, replay=script))
            for i in range(10)
        ]
        for _ in range(400):  # some generating, some in their tools
            status = await client.status()
            if status.running and status.in_tool:
                break
            await asyncio.sleep(0.02)
        assert status.running, status
        assert status.in_tool, status
        scheduler.proc.kill()  # SIGKILL: nothing is handed over
        scheduler.proc.wait()
        start_scheduler(start_process, redis_server, prefix, tool_runner, port=port)
        status = await client.wait_for_workers(2)
        assert {w.worker_id for w in status.workers} == {"w1", "w2"}
        runs = await asyncio.gather(*(client.watch(i) for i in ids))
        for events in runs:
            end = finished(events)
            assert end.state == cpb.REQUEST_STATE_FINISHED, end
            # Every token once, the script's length exactly, across the restart.
            assert len(generated(events)) == end.usage.completion_tokens == 80
            assert [e.offset for e in events] == list(range(len(events)))
    finally:
        await client.close()


async def test_the_vllm_engine_serves_through_the_scheduler(
    start_process: StartService, redis_server: str, tiny_llama_dir: Path
) -> None:
    scheduler, _ = start_system(start_process, redis_server)
    worker = start_worker(
        start_process,
        scheduler,
        "gpu0",
        "--engine",
        "vllm",
        "--model",
        str(tiny_llama_dir),
        "--dtype",
        "float32",
        "--max-model-len",
        "512",
        "--kv-cache-bytes",
        str(4 << 20),
        "--block-size",
        "32",
        wait=False,
    )
    worker.wait_ready(timeout=180)
    client = RawClient(scheduler.target, CLIENT_TOKEN)
    try:
        status = await client.wait_for_workers(1)
        (registered,) = status.workers
        assert registered.engine == "vllm"
        assert cpb.STRATEGY_SWAP not in registered.strategies  # the CPU build cannot Swap
        events = await client.generate(
            pb.GenerateRequest(
                prompt="The weather today is",
                replay=replay((12, "emulated.math", 1.0, 6), (8, "", 0.0, 0)),
            )
        )
        end = finished(events)
        assert end.state == cpb.REQUEST_STATE_FINISHED, end
        assert len(generated(events)) == end.usage.completion_tokens == 20
        assert end.usage.tool_calls == 1
        # A plain generation: sampled text, stopped by max_tokens.
        events = await client.generate(
            pb.GenerateRequest(
                prompt="Once upon a time", sampling=cpb.SamplingParams(max_tokens=16)
            )
        )
        end = finished(events)
        assert end.state == cpb.REQUEST_STATE_FINISHED, end
        assert 0 < end.usage.completion_tokens <= 16
    finally:
        await client.close()
