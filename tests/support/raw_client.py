"""A thin client of the raw `lamps.v1` stubs, for tests that exercise the gRPC API itself (the SDK
has its own tests)."""

from __future__ import annotations

import asyncio

from grpc import aio

from lamps.v1 import common_pb2 as cpb
from lamps.v1 import scheduler_pb2 as pb
from lamps.v1 import scheduler_pb2_grpc as pb_grpc

STREAM_TIMEOUT_S = 120.0


class RawClient:
    """The Scheduler service's stubs with a bearer token; streams are collected whole."""

    def __init__(self, target: str, token: str | None = None) -> None:
        self.channel = aio.insecure_channel(target)
        self.stub = pb_grpc.SchedulerServiceStub(self.channel)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()

    async def __aenter__(self) -> RawClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close(None)

    async def generate(self, request: pb.GenerateRequest) -> list[cpb.RequestEvent]:
        call = self.stub.Generate(request, metadata=self.metadata, timeout=STREAM_TIMEOUT_S)
        return [response.event async for response in call]

    async def submit(self, request: pb.GenerateRequest) -> str:
        response = await self.stub.Submit(
            pb.SubmitRequest(request=request), metadata=self.metadata, timeout=10
        )
        return str(response.request_id)

    async def watch(self, request_id: str) -> list[cpb.RequestEvent]:
        call = self.stub.Watch(
            pb.WatchRequest(request_id=request_id),
            metadata=self.metadata,
            timeout=STREAM_TIMEOUT_S,
        )
        return [response.event async for response in call]

    async def status(self) -> pb.ClusterStatusResponse:
        return await self.stub.ClusterStatus(
            pb.ClusterStatusRequest(), metadata=self.metadata, timeout=10
        )

    async def wait_for_workers(self, count: int) -> pb.ClusterStatusResponse:
        for _ in range(600):
            status = await self.status()
            if len(status.workers) >= count:
                return status
            await asyncio.sleep(0.05)
        raise AssertionError(f"{count} workers never registered: {status}")
