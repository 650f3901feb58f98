"""One live system for the fuzzing tests: tool runner, scheduler with one sim worker, and a
predictor (without a model, so it starts in a second), each a real process on loopback."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from lamps.v1 import scheduler_pb2
from tests.support.fuzz import (
    GATEWAY,
    PREDICTOR,
    SCHEDULER,
    TOOL_RUNNER,
    FuzzTarget,
    open_channel,
)
from tests.support.processes import ServiceProcess, lamps_command, loopback_serve_args
from tests.support.redis import RedisProcess
from tests.support.system import CLIENT_TOKEN, CLUSTER_TOKEN, LocalSystem, running_system


@dataclass
class FuzzSystem:
    """The processes, a fuzz target per service, and the real worker's KV when idle."""

    system: LocalSystem
    predictor: ServiceProcess
    baseline_free_blocks: int
    accepted: list[str] = field(default_factory=list)

    def target(self, service_name: str) -> FuzzTarget:
        assert self.system.tool_runner is not None
        if service_name == SCHEDULER.full_name:
            return FuzzTarget(self.system.target, (SCHEDULER,), CLIENT_TOKEN)
        if service_name == GATEWAY.full_name:
            return FuzzTarget(self.system.target, (GATEWAY,), CLUSTER_TOKEN)
        if service_name == PREDICTOR.full_name:
            return FuzzTarget(self.predictor.target, (PREDICTOR,))
        return FuzzTarget(self.system.tool_runner.target, (TOOL_RUNNER,))

    def process_of(self, service_name: str) -> ServiceProcess:
        if service_name == PREDICTOR.full_name:
            return self.predictor
        if service_name == TOOL_RUNNER.full_name:
            assert self.system.tool_runner is not None
            return self.system.tool_runner
        assert self.system.scheduler is not None
        return self.system.scheduler


def cluster_status(channel: grpc.Channel) -> scheduler_pb2.ClusterStatusResponse:
    stub = channel.unary_unary(
        "/lamps.v1.SchedulerService/ClusterStatus",
        scheduler_pb2.ClusterStatusRequest.SerializeToString,
        scheduler_pb2.ClusterStatusResponse.FromString,
    )
    response: scheduler_pb2.ClusterStatusResponse = stub(
        scheduler_pb2.ClusterStatusRequest(),
        metadata=(("authorization", f"Bearer {CLIENT_TOKEN}"),),
        timeout=10,
    )
    return response


def real_worker(status: scheduler_pb2.ClusterStatusResponse) -> scheduler_pb2.WorkerStatus:
    """The sim worker the system started (fuzzed workers register under other ids)."""
    found = [w for w in status.workers if w.worker_id == "w1"]
    assert found, f"the real worker is no longer connected: {status}"
    return found[0]


@pytest.fixture(scope="package")
def fuzz_system(
    tmp_path_factory: pytest.TempPathFactory, redis_process: RedisProcess
) -> Iterator[FuzzSystem]:
    directory: Path = tmp_path_factory.mktemp("fuzz")
    redis_process.flush()
    with running_system(directory, redis_process.url) as system:
        predictor = system.spawn(lamps_command(*loopback_serve_args("predictor")))
        with open_channel(system.target) as channel:
            baseline = int(real_worker(cluster_status(channel)).kv.free_blocks)
        yield FuzzSystem(system, predictor, baseline)


def wait_until_idle(
    fuzz: FuzzSystem, timeout_s: float = 30.0
) -> scheduler_pb2.ClusterStatusResponse:
    """The cluster's status once nothing is queued or running and the real worker's KV is back
    to what it was before the fuzzing; the last status seen if that never happens."""
    deadline = time.monotonic() + timeout_s
    with open_channel(fuzz.system.target) as channel:
        while True:
            status = cluster_status(channel)
            idle = status.queued == status.starved == status.running == status.in_tool == 0
            worker = real_worker(status)
            if idle and worker.kv.free_blocks == fuzz.baseline_free_blocks:
                return status
            if time.monotonic() > deadline:
                return status
            time.sleep(0.1)
