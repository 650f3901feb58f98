"""Fixtures of the scheduler's tests: a scheduler and a tool runner served in this process on
loopback (real gRPC, a real Redis), clients, and protocol-level workers."""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from grpc import aio

from lamps.common.server import Server
from lamps.predictor.config import PredictorConfig
from lamps.predictor.server import Predictor
from lamps.predictor.server import services as predictor_services
from lamps.scheduler.config import SchedulerConfig
from lamps.scheduler.server import SchedulerApp, services
from lamps.tool_runner.catalog import open_catalog
from lamps.tool_runner.config import ToolRunnerConfig
from lamps.tool_runner.registry import CallLimits, ToolRegistry
from lamps.tool_runner.server import services as tool_runner_services
from lamps.v1 import common_pb2 as cpb
from lamps.v1 import scheduler_pb2 as pb
from lamps.v1 import scheduler_pb2_grpc as pb_grpc
from tests.support.protocol_worker import ProtocolWorker

LOOPBACK: dict[str, Any] = {
    "host": "127.0.0.1",
    "port": 0,
    "metrics_host": "127.0.0.1",
    "metrics_port": 0,
    "grace_seconds": 0.2,
}


@dataclass
class RunningScheduler:
    """A scheduler served in this process, a client of it, and workers connected to it."""

    server: Server
    app: SchedulerApp
    channel: aio.Channel
    workers: list[ProtocolWorker] = field(default_factory=list)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    @property
    def stub(self) -> pb_grpc.SchedulerServiceAsyncStub:
        return pb_grpc.SchedulerServiceStub(self.channel)

    async def worker(self, worker_id: str = "w1", **options: Any) -> ProtocolWorker:
        worker = ProtocolWorker(self.target, worker_id, **options)
        self.workers.append(worker)
        await worker.connect()
        return worker

    async def submit(self, request: pb.GenerateRequest, key: str = "") -> str:
        response = await self.stub.Submit(
            pb.SubmitRequest(request=request, idempotency_key=key), timeout=10
        )
        return response.request_id

    async def events(self, request_id: str, from_offset: int = 0) -> list[cpb.RequestEvent]:
        """The request's whole log from `from_offset`, waiting for it to end."""
        call = self.stub.Watch(
            pb.WatchRequest(request_id=request_id, from_offset=from_offset), timeout=20
        )
        return [response.event async for response in call]

    async def record(self, request_id: str) -> pb.RequestRecord:
        response = await self.stub.GetRequest(
            pb.GetRequestRequest(request_id=request_id), timeout=10
        )
        return response.record


StartScheduler = Callable[..., Awaitable[RunningScheduler]]


@asynccontextmanager
async def serving(config: SchedulerConfig) -> AsyncIterator[RunningScheduler]:
    app = SchedulerApp(config)
    server = Server(config, services(app), lifespan=app.running)
    app.attach(server)
    await server.start()
    channel = aio.insecure_channel(f"127.0.0.1:{server.port}")
    running = RunningScheduler(server=server, app=app, channel=channel)
    try:
        yield running
    finally:
        for worker in running.workers:
            await worker.stop()
        await channel.close(None)
        await server.stop()


@pytest.fixture(scope="session")
async def tool_runner() -> AsyncIterator[str]:
    """A real tool runner in this process; its emulated tools sleep as long as asked."""
    config = ToolRunnerConfig(**LOOPBACK)
    registry = ToolRegistry(CallLimits(max_arguments_bytes=65536, max_output_chars=65536))

    @asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        async with open_catalog(config, registry):
            yield

    server = Server(config, tool_runner_services(config, registry), lifespan=lifespan)
    await server.start()
    yield f"127.0.0.1:{server.port}"
    await server.stop()


@pytest.fixture
async def start_scheduler(redis_server: str, tool_runner: str) -> AsyncIterator[StartScheduler]:
    """Start schedulers on the test's Redis (own key prefix), with the tool runner; options
    override the configuration."""
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    stack: list[Any] = []

    async def start(**options: Any) -> RunningScheduler:
        settings: dict[str, Any] = {
            **LOOPBACK,
            "redis_url": redis_server,
            "redis_prefix": prefix,
            "tool_runner_address": tool_runner,
            "policy": "lamps",
            "worker_lease_seconds": 2.0,
            "leader_lease_seconds": 2.0,
            "report_interval_seconds": 0.05,
            **options,
        }
        context = serving(SchedulerConfig(**settings))
        running = await context.__aenter__()
        stack.append(context)
        return running

    yield start
    for context in reversed(stack):
        await context.__aexit__(None, None, None)


@pytest.fixture
async def scheduler(start_scheduler: StartScheduler) -> RunningScheduler:
    return await start_scheduler()


def make_request(
    prompt: str = "What is 2 + 2? Use the calculator.",
    *,
    segments: list[tuple[int, str, float, int]] | None = None,
    max_tokens: int = 0,
    **fields: Any,
) -> pb.GenerateRequest:
    """A generation; `segments` makes it a replay: (output tokens, tool, seconds, tool tokens)."""
    request = pb.GenerateRequest(prompt=prompt, **fields)
    request.sampling.max_tokens = max_tokens
    if segments is not None:
        for output, tool, seconds, returned in segments:
            request.replay.segments.add(
                output_tokens=output,
                tool=tool,
                tool_duration_seconds=seconds,
                tool_output_tokens=returned,
            )
    return request


@pytest.fixture
def free_port() -> int:
    """A loopback port nothing listens on (a service that is down)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
async def predictor() -> AsyncIterator[str]:
    """A real predictor in this process, without a model (it answers durations only)."""
    config = PredictorConfig(**LOOPBACK)
    service = Predictor(config)
    server = Server(config, predictor_services(config, service), lifespan=service.running)
    await server.start()
    yield f"127.0.0.1:{server.port}"
    await server.stop()
