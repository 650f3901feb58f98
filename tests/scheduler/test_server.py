"""The front door's RPCs: behaviour, idempotency, Watch offsets and every refusal with its code."""

from __future__ import annotations

import asyncio
import socket
import urllib.request
import uuid
from typing import Any

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lamps.common.server import Server, ServerStartError
from lamps.scheduler.config import SchedulerConfig
from lamps.scheduler.server import SchedulerApp, services
from lamps.v1 import common_pb2 as cpb
from lamps.v1 import scheduler_pb2 as pb
from tests.scheduler.conftest import RunningScheduler, StartScheduler, make_request

INVALID = grpc.StatusCode.INVALID_ARGUMENT


async def refused(call: Any) -> aio.AioRpcError:
    with pytest.raises(aio.AioRpcError) as caught:
        await call
    return caught.value


def replay(*segments: tuple[int, str, float, int]) -> pb.GenerateRequest:
    return make_request(segments=list(segments))


BAD_REQUESTS = {
    "empty prompt": (pb.GenerateRequest(), INVALID, "prompt is empty"),
    "text and ids": (
        pb.GenerateRequest(prompt="hi", prompt_token_ids=[1]),
        INVALID,
        "exactly one",
    ),
    "prompt too long": (make_request("x" * 2001), INVALID, "limit is 2000"),
    "too many tokens": (
        pb.GenerateRequest(prompt_token_ids=[1] * 501),
        INVALID,
        "limit is 500",
    ),
    "max tokens above the limit": (make_request(max_tokens=5000), INVALID, "limit of 4096"),
    "negative temperature": (
        pb.GenerateRequest(prompt="hi", sampling=cpb.SamplingParams(temperature=-1)),
        INVALID,
        "temperature",
    ),
    "top_p above one": (
        pb.GenerateRequest(prompt="hi", sampling=cpb.SamplingParams(top_p=1.5)),
        INVALID,
        "top_p",
    ),
    "unknown tool": (make_request(tools=["no.such.tool"]), INVALID, "unknown tools no.such.tool"),
    "unknown replay tool": (
        replay((1, "emulated.nope", 0.1, 1), (1, "", 0, 0)),
        INVALID,
        "emulated.nope",
    ),
    "empty replay": (
        pb.GenerateRequest(prompt="hi", replay=cpb.Replay()),
        INVALID,
        "at least one segment",
    ),
    "last segment calls a tool": (
        replay((1, "emulated.qa", 0.1, 1)),
        INVALID,
        "must not call a tool",
    ),
    "middle segment without a tool": (
        replay((1, "", 0.1, 1), (1, "", 0, 0)),
        INVALID,
        "names no tool",
    ),
    "negative call duration": (
        replay((1, "emulated.qa", -1, 1), (1, "", 0, 0)),
        INVALID,
        "must be 0 or more",
    ),
    "budget below the replay": (
        make_request(segments=[(10, "", 0, 0)], max_tokens=5),
        INVALID,
        "below the 10 tokens",
    ),
    "empty label key": (pb.GenerateRequest(prompt="hi", labels={"": "x"}), INVALID, "label"),
    # Bounds found by fuzzing (tests/fuzz): each was accepted, or answered with a status message
    # so long (the whole string quoted back) that the client dropped it.
    "replay longer than the token limit": (
        replay((4000, "emulated.qa", 0, 1), (1000, "", 0, 0)),
        INVALID,
        "limit is 4096",
    ),
    "replay tool output above the context limit": (
        replay((1, "emulated.qa", 0, 2**32 - 1), (1, "", 0, 0)),
        INVALID,
        "tool_output_tokens",
    ),
    "replay tool name of a megabyte": (
        replay((1, "x" * 1_000_000, 0, 1), (1, "", 0, 0)),
        INVALID,
        "longer than 128",
    ),
    "tool name of a megabyte": (make_request(tools=["x" * 1_000_000]), INVALID, "at most 128"),
    "too many tools": (make_request(tools=["calculator"] * 65), INVALID, "at most 64"),
    "unknown tools are quoted short": (
        make_request(tools=["y" * 100]),
        INVALID,
        "... (100 characters)",
    ),
    "model name of a megabyte": (make_request(model="m" * 1_000_000), INVALID, "at most 256"),
    "stop sequence of a megabyte": (
        pb.GenerateRequest(prompt="hi", sampling=cpb.SamplingParams(stop=["s" * 1_000_000])),
        INVALID,
        "at most 1024 characters",
    ),
}


@pytest.fixture
async def limited(start_scheduler: StartScheduler) -> RunningScheduler:
    return await start_scheduler(
        max_prompt_chars=2000, max_prompt_tokens=500, max_tokens_limit=4096
    )


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
async def test_bad_requests_are_refused_with_a_reason(limited: RunningScheduler, case: str) -> None:
    request, code, words = BAD_REQUESTS[case]
    error = await refused(limited.stub.Submit(pb.SubmitRequest(request=request), timeout=5))
    assert error.code() == code
    assert words in (error.details() or "")
    # Generate refuses the same way, and nothing was queued.
    error = await refused(_first(limited.stub.Generate(request, timeout=5)))
    assert error.code() == code
    status = await limited.stub.ClusterStatus(pb.ClusterStatusRequest(), timeout=5)
    assert status.queued == 0


async def _first(call: Any) -> Any:
    async for response in call:
        return response
    return None


async def test_unknown_and_empty_ids(scheduler: RunningScheduler) -> None:
    stub = scheduler.stub
    for call in (
        stub.Cancel(pb.CancelRequest(request_id="nope"), timeout=5),
        stub.GetRequest(pb.GetRequestRequest(request_id="nope"), timeout=5),
        _first(stub.Watch(pb.WatchRequest(request_id="nope"), timeout=5)),
    ):
        error = await refused(call)
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert "no request 'nope'" in (error.details() or "")
    for call in (
        stub.Cancel(pb.CancelRequest(), timeout=5),
        stub.GetRequest(pb.GetRequestRequest(), timeout=5),
        _first(stub.Watch(pb.WatchRequest(), timeout=5)),
    ):
        error = await refused(call)
        assert error.code() == INVALID
        assert "request_id is empty" in (error.details() or "")


async def test_oracle_lamps_takes_only_replays(start_scheduler: StartScheduler) -> None:
    scheduler = await start_scheduler(policy="oracle-lamps")
    error = await refused(scheduler.stub.Submit(pb.SubmitRequest(request=make_request())))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "oracle-lamps" in (error.details() or "")
    await scheduler.worker()
    request_id = await scheduler.submit(
        make_request(segments=[(3, "emulated.qa", 0.01, 2), (2, "", 0, 0)])
    )
    assert (await scheduler.events(request_id))[-1].finished.state == cpb.REQUEST_STATE_FINISHED


async def test_generate_streams_from_accepted_to_finished(scheduler: RunningScheduler) -> None:
    await scheduler.worker()
    events = [r.event async for r in scheduler.stub.Generate(make_request(), timeout=10)]
    assert events[0].HasField("accepted")
    assert events[0].accepted.request_id == events[0].request_id
    assert events[-1].finished.state == cpb.REQUEST_STATE_FINISHED
    assert "".join(e.tokens.text for e in events if e.HasField("tokens")) == "xxx"


async def test_idempotency_keys(scheduler: RunningScheduler) -> None:
    stub = scheduler.stub
    request = make_request("first")
    first = await stub.Submit(pb.SubmitRequest(request=request, idempotency_key="k1"))
    again = await stub.Submit(pb.SubmitRequest(request=request, idempotency_key="k1"))
    assert first.created
    assert not again.created
    assert again.request_id == first.request_id
    error = await refused(
        stub.Submit(pb.SubmitRequest(request=make_request("other"), idempotency_key="k1"))
    )
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert first.request_id in (error.details() or "")
    error = await refused(stub.Submit(pb.SubmitRequest(request=request, idempotency_key="k" * 300)))
    assert error.code() == INVALID
    status = await stub.ClusterStatus(pb.ClusterStatusRequest())
    assert status.queued == 1


async def test_idempotency_keys_survive_a_restart(start_scheduler: StartScheduler) -> None:
    first = await start_scheduler()
    request = make_request("kept")
    created = await first.stub.Submit(pb.SubmitRequest(request=request, idempotency_key="k"))
    await first.server.stop()
    second = await start_scheduler()
    again = await second.stub.Submit(pb.SubmitRequest(request=request, idempotency_key="k"))
    assert (again.request_id, again.created) == (created.request_id, False)
    error = await refused(
        second.stub.Submit(pb.SubmitRequest(request=make_request("x"), idempotency_key="k"))
    )
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_watch_resumes_from_any_offset(scheduler: RunningScheduler) -> None:
    await scheduler.worker()
    request_id = await scheduler.submit(
        make_request(segments=[(2, "emulated.qa", 0.01, 1), (2, "", 0, 0)])
    )
    everything = await scheduler.events(request_id)
    for offset in range(len(everything) + 1):
        assert await scheduler.events(request_id, offset) == everything[offset:]
    error = await refused(
        _first(scheduler.stub.Watch(pb.WatchRequest(request_id=request_id, from_offset=99)))
    )
    assert error.code() == grpc.StatusCode.OUT_OF_RANGE
    record = await scheduler.record(request_id)
    assert record.next_offset == len(everything)


async def test_watch_follows_a_request_while_it_runs(scheduler: RunningScheduler) -> None:
    worker = await scheduler.worker(auto=False)
    request_id = await scheduler.submit(make_request())
    await worker.expect("admit")
    call = scheduler.stub.Watch(pb.WatchRequest(request_id=request_id, from_offset=3))
    await worker.report(
        pb.RequestUpdate(request_id=request_id, tokens=cpb.TokenDelta(token_ids=[5], text="a")),
        pb.RequestUpdate(request_id=request_id, completed=pb.Completed()),
    )
    events = [response.event async for response in call]
    assert [e.WhichOneof("kind") for e in events] == ["tokens", "finished"]
    assert events[0].offset == 3


async def test_get_request_and_cluster_status(scheduler: RunningScheduler) -> None:
    request_id = await scheduler.submit(make_request(labels={"run": "t1"}))
    record = await scheduler.record(request_id)
    assert record.state == cpb.REQUEST_STATE_QUEUED
    assert record.labels["run"] == "t1"
    assert record.prediction.pre_call_tokens > 0
    status = await scheduler.stub.ClusterStatus(pb.ClusterStatusRequest())
    assert status.policy == "lamps"
    assert status.leader_id == scheduler.app.replica_id
    assert (status.queued, status.running, len(status.workers)) == (1, 0, 0)
    await scheduler.worker(auto=False)
    await scheduler.workers[0].expect("admit")
    status = await scheduler.stub.ClusterStatus(pb.ClusterStatusRequest())
    assert (status.queued, status.running) == (0, 1)
    assert status.workers[0].worker_id == "w1"
    assert status.workers[0].running == 1


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (loopback)
        body: bytes = response.read()
    return body.decode()


async def test_the_queue_depth_metric_the_autoscaler_reads(scheduler: RunningScheduler) -> None:
    for index in range(3):
        await scheduler.submit(make_request(f"waiting {index}"))
    url = f"http://127.0.0.1:{scheduler.server.metrics_port}/metrics"
    # Gauges are refreshed every 0.1 s: wait for the refresh that counts all three.
    for _ in range(100):
        lines = (await asyncio.to_thread(scrape, url)).splitlines()
        if "lamps_scheduler_queued_requests 3.0" in lines:
            break
        await asyncio.sleep(0.02)
    assert "lamps_scheduler_queued_requests 3.0" in lines
    assert "lamps_scheduler_leader 1.0" in lines


async def health(target: str, service: str) -> int:
    async with aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return int(response.status)


async def test_only_the_leader_reports_its_services_ready(start_scheduler: StartScheduler) -> None:
    leader = await start_scheduler(replica_id="one", leader_lease_seconds=1.0)
    standby = await start_scheduler(replica_id="two", leader_lease_seconds=1.0)
    serving, not_serving = (
        health_pb2.HealthCheckResponse.SERVING,
        health_pb2.HealthCheckResponse.NOT_SERVING,
    )
    # The standby is alive (liveness) but not ready (its services), from its first moment: a
    # client following health never reaches it while it stands by.
    assert await health(standby.target, "") == serving
    for name in ("lamps.v1.SchedulerService", "lamps.v1.WorkerGatewayService"):
        assert await health(leader.target, name) == serving
        assert await health(standby.target, name) == not_serving
    await leader.server.stop()
    for _ in range(300):
        if await health(standby.target, "lamps.v1.SchedulerService") == serving:
            break
        await asyncio.sleep(0.02)
    assert await health(standby.target, "lamps.v1.SchedulerService") == serving


async def test_a_standby_refuses_with_the_leaders_id(start_scheduler: StartScheduler) -> None:
    leader = await start_scheduler(replica_id="one")
    standby = await start_scheduler(replica_id="two")
    error = await refused(standby.stub.Submit(pb.SubmitRequest(request=make_request())))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "standby; the leader is one" in (error.details() or "")
    status = await standby.stub.ClusterStatus(pb.ClusterStatusRequest())
    assert status.leader_id == "one"
    assert (await leader.stub.ClusterStatus(pb.ClusterStatusRequest())).leader_id == "one"


async def test_a_scheduler_that_cannot_bind_its_port_gives_up_instead_of_hanging(
    redis_server: str,
) -> None:
    # It has led (on a real Redis) before the bind fails: stopping its election must still end.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = SchedulerConfig(
            host="127.0.0.1",
            port=taken.getsockname()[1],
            metrics_host="127.0.0.1",
            metrics_port=0,
            redis_url=redis_server,
            redis_prefix=f"bind-{uuid.uuid4().hex[:8]}",
        )
        app = SchedulerApp(config)
        server = Server(config, services(app), lifespan=app.running, on_drain=app.drain)
        app.attach(server)
        with pytest.raises(ServerStartError, match="cannot listen"):
            await asyncio.wait_for(server.start(), timeout=60)
