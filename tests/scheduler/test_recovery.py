"""A scheduler process killed with SIGKILL while requests are queued, running and in tools: a
restarted one (or a standby) rebuilds from Redis, and every accepted request finishes once."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import redis
from grpc import aio

from lamps.scheduler.embedded import redis_server_binary
from lamps.v1 import common_pb2 as cpb
from lamps.v1 import scheduler_pb2 as pb
from lamps.v1 import scheduler_pb2_grpc as pb_grpc
from tests.scheduler.conftest import StartScheduler, make_request
from tests.support.processes import ServiceProcess, StartService
from tests.support.protocol_worker import ProtocolWorker

SEGMENTS = [(3, "emulated.qa", 0.6, 2), (2, "emulated.math", 0.3, 1), (2, "", 0.0, 0)]
EXPECTED_TOKENS = sum(output for output, *_ in SEGMENTS)
REQUESTS = 10


def scheduler_args(redis_url: str, prefix: str, tool_runner: str, replica: str) -> list[str]:
    return [
        "scheduler",
        *("--redis-url", redis_url, "--redis-prefix", prefix),
        *("--tool-runner-address", tool_runner, "--replica-id", replica),
        *("--leader-lease-seconds", "1", "--worker-lease-seconds", "3"),
        *("--policy", "infercept"),
    ]


async def submit_all(target: str) -> list[str]:
    async with aio.insecure_channel(target) as channel:
        stub = pb_grpc.SchedulerServiceStub(channel)
        ids = []
        for index in range(REQUESTS):
            response = await stub.Submit(
                pb.SubmitRequest(request=make_request(f"request {index}", segments=SEGMENTS)),
                timeout=10,
            )
            ids.append(response.request_id)
        return ids


async def wait_for_every_state(target: str, ids: Sequence[str]) -> None:
    """Until some request is queued, some running and some in a tool."""
    wanted = {cpb.REQUEST_STATE_QUEUED, cpb.REQUEST_STATE_RUNNING, cpb.REQUEST_STATE_IN_TOOL}
    async with aio.insecure_channel(target) as channel:
        stub = pb_grpc.SchedulerServiceStub(channel)
        for _ in range(300):
            seen = set()
            for request_id in ids:
                record = await stub.GetRequest(pb.GetRequestRequest(request_id=request_id))
                seen.add(record.record.state)
            if wanted <= seen:
                return
            await asyncio.sleep(0.02)
    raise AssertionError("the requests never were queued, running and in tools at once")


async def wait_until_leader(target: str, replica: str) -> None:
    async with aio.insecure_channel(target) as channel:
        stub = pb_grpc.SchedulerServiceStub(channel)
        for _ in range(300):
            status = await stub.ClusterStatus(pb.ClusterStatusRequest(), timeout=5)
            if status.leader_id == replica:
                return
            await asyncio.sleep(0.05)
    raise AssertionError(f"{replica} never became the leader")


async def reconnect(workers: Sequence[ProtocolWorker], target: str) -> None:
    """Each worker re-registers with the new scheduler, claiming what it still holds."""
    for worker in workers:
        await worker.close()
        worker.target = target
        for _ in range(100):
            try:
                await worker.connect()
                break
            except aio.AioRpcError:
                await worker.close()
                await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"{worker.worker_id} could not reconnect")


async def wait_until_ended(stub: pb_grpc.SchedulerServiceAsyncStub, ids: Sequence[str]) -> None:
    ended = {cpb.REQUEST_STATE_FINISHED, cpb.REQUEST_STATE_FAILED, cpb.REQUEST_STATE_CANCELLED}
    records: list[pb.RequestRecord] = []
    for _ in range(400):
        records = [
            (await stub.GetRequest(pb.GetRequestRequest(request_id=rid), timeout=5)).record
            for rid in ids
        ]
        if all(record.state in ended for record in records):
            return
        await asyncio.sleep(0.05)
    stuck = [
        (r.request_id[:8], cpb.RequestState.Name(r.state), r.worker_id)
        for r in records
        if r.state not in ended
    ]
    status = await stub.ClusterStatus(pb.ClusterStatusRequest(), timeout=5)
    raise AssertionError(f"requests never ended: {stuck}; cluster: {status}")


async def assert_each_finished_once(target: str, ids: Sequence[str]) -> None:
    async with aio.insecure_channel(target) as channel:
        stub = pb_grpc.SchedulerServiceStub(channel)
        await wait_until_ended(stub, ids)
        for request_id in ids:
            call = stub.Watch(pb.WatchRequest(request_id=request_id), timeout=30)
            events = [response.event async for response in call]
            assert [e.offset for e in events] == list(range(len(events)))
            finished = [e.finished for e in events if e.HasField("finished")]
            assert len(finished) == 1, request_id
            assert finished[0].state == cpb.REQUEST_STATE_FINISHED
            tokens = sum(len(e.tokens.token_ids) for e in events if e.HasField("tokens"))
            assert tokens == EXPECTED_TOKENS
            assert finished[0].usage.completion_tokens == EXPECTED_TOKENS
            assert finished[0].usage.tool_calls == 2


async def start_workers(target: str) -> list[ProtocolWorker]:
    workers = [
        ProtocolWorker(target, f"w{index}", max_running=2, segment_seconds=0.3)
        for index in range(2)
    ]
    for worker in workers:
        worker.heartbeat = True
        await worker.connect()
    return workers


async def test_a_restarted_scheduler_finishes_every_request_exactly_once(
    start_service: StartService, redis_server: str
) -> None:
    tool_runner = start_service(["tool-runner"]).target
    prefix = f"kill-{uuid.uuid4().hex[:8]}"
    first = start_service(scheduler_args(redis_server, prefix, tool_runner, "first"))
    workers = await start_workers(first.target)
    try:
        ids = await submit_all(first.target)
        await wait_for_every_state(first.target, ids)
        kill(first)
        second = start_service(scheduler_args(redis_server, prefix, tool_runner, "second"))
        await wait_until_leader(second.target, "second")
        await reconnect(workers, second.target)
        await assert_each_finished_once(second.target, ids)
    finally:
        for worker in workers:
            await worker.stop()


async def test_a_standby_takes_over_from_a_killed_leader(
    start_service: StartService, redis_server: str
) -> None:
    tool_runner = start_service(["tool-runner"]).target
    prefix = f"standby-{uuid.uuid4().hex[:8]}"
    leader = start_service(scheduler_args(redis_server, prefix, tool_runner, "leader"))
    standby = start_service(scheduler_args(redis_server, prefix, tool_runner, "standby"))
    workers = await start_workers(leader.target)
    try:
        ids = await submit_all(leader.target)
        await wait_for_every_state(leader.target, ids)
        kill(leader)
        await wait_until_leader(standby.target, "standby")
        await reconnect(workers, standby.target)
        await assert_each_finished_once(standby.target, ids)
    finally:
        for worker in workers:
            await worker.stop()


def kill(service: ServiceProcess) -> None:
    service.proc.kill()
    service.proc.wait(10)


async def test_a_leader_stopping_gracefully_hands_over_at_once(
    start_scheduler: StartScheduler,
) -> None:
    # A lease far longer than the test: only the resignation lets the standby lead in time.
    leader = await start_scheduler(replica_id="old", leader_lease_seconds=60.0)
    standby = await start_scheduler(replica_id="new", leader_lease_seconds=60.0)
    worker = await leader.worker(auto=False)
    request_id = await leader.submit(make_request("handed over"))
    await worker.expect("admit")
    await worker.close()
    await leader.server.stop()
    await wait_until_leader(standby.target, "new")
    worker.target = standby.target
    await worker.connect(held=[request_id])
    await worker.report(
        pb.RequestUpdate(request_id=request_id, tokens=cpb.TokenDelta(token_ids=[4])),
        pb.RequestUpdate(request_id=request_id, completed=pb.Completed()),
    )
    events = await standby.events(request_id)
    assert events[-1].finished.state == cpb.REQUEST_STATE_FINISHED
    assert [e.offset for e in events] == list(range(len(events)))


async def test_a_redis_outage_stalls_but_loses_nothing(
    start_service: StartService, tmp_path: Path
) -> None:
    port = free_port()
    redis = start_redis(tmp_path, port)
    try:
        url = f"redis://127.0.0.1:{port}/0"
        scheduler = start_service(["scheduler", "--redis-url", url, "--leader-lease-seconds", "30"])
        before = await submit_all(scheduler.target)
        stop(redis)
        async with aio.insecure_channel(scheduler.target) as channel:
            stub = pb_grpc.SchedulerServiceStub(channel)
            # While Redis is away nothing can be stored, so nothing is acknowledged.
            waiting = asyncio.ensure_future(
                stub.Submit(
                    pb.SubmitRequest(request=make_request("during", segments=SEGMENTS)), timeout=30
                )
            )
            await asyncio.sleep(0.5)
            assert not waiting.done()
            redis = start_redis(tmp_path, port)
            during = (await waiting).request_id
        workers = await start_workers(scheduler.target)
        try:
            await assert_each_finished_once(scheduler.target, [*before, during])
        finally:
            for worker in workers:
                await worker.stop()
        assert scheduler.proc.poll() is None
    finally:
        stop(redis)


def start_redis(directory: Path, port: int) -> subprocess.Popen[bytes]:
    """A redis-server that keeps its data across a restart (append-only file)."""
    command = [
        str(redis_server_binary()),
        *("--bind", "127.0.0.1", "--port", str(port), "--dir", str(directory)),
        *("--appendonly", "yes", "--appendfsync", "always", "--save", ""),
    ]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            with redis.Redis(port=port, socket_timeout=1) as client:
                if client.ping():
                    return proc
        except redis.ConnectionError:
            time.sleep(0.02)
    raise AssertionError("redis-server did not start")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        proc.wait(10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
