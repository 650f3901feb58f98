"""The scheduler's gRPC server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from grpc import aio

from lamps.common.server import Service, serve
from lamps.scheduler.config import SchedulerConfig
from lamps.v1 import scheduler_pb2 as pb
from lamps.v1 import scheduler_pb2_grpc as pb_grpc

_NOT_YET = "is not available in this release: the request lifecycle has not landed yet"


class SchedulerServicer(pb_grpc.SchedulerServiceServicer):
    """The front door. Its RPCs answer UNIMPLEMENTED until the lifecycle lands."""

    async def Generate(
        self, request: pb.GenerateRequest, context: aio.ServicerContext[object, object]
    ) -> AsyncIterator[pb.GenerateResponse]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"Generate {_NOT_YET}")
        yield pb.GenerateResponse()  # type: ignore[unreachable]  # makes this a stream handler

    async def Submit(
        self, request: pb.SubmitRequest, context: aio.ServicerContext[object, object]
    ) -> pb.SubmitResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"Submit {_NOT_YET}")

    async def Watch(
        self, request: pb.WatchRequest, context: aio.ServicerContext[object, object]
    ) -> AsyncIterator[pb.WatchResponse]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"Watch {_NOT_YET}")
        yield pb.WatchResponse()  # type: ignore[unreachable]  # makes this a stream handler

    async def Cancel(
        self, request: pb.CancelRequest, context: aio.ServicerContext[object, object]
    ) -> pb.CancelResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"Cancel {_NOT_YET}")

    async def GetRequest(
        self, request: pb.GetRequestRequest, context: aio.ServicerContext[object, object]
    ) -> pb.GetRequestResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"GetRequest {_NOT_YET}")

    async def ClusterStatus(
        self, request: pb.ClusterStatusRequest, context: aio.ServicerContext[object, object]
    ) -> pb.ClusterStatusResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"ClusterStatus {_NOT_YET}")


class WorkerGatewayServicer(pb_grpc.WorkerGatewayServiceServicer):
    """Where workers connect. Answers UNIMPLEMENTED until the worker protocol lands."""

    async def Connect(
        self,
        request_iterator: AsyncIterator[pb.ConnectRequest],
        context: aio.ServicerContext[object, object],
    ) -> AsyncIterator[pb.ConnectResponse]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"Connect {_NOT_YET}")
        yield pb.ConnectResponse()  # type: ignore[unreachable]  # makes this a stream handler


def services(config: SchedulerConfig) -> list[Service]:
    """The scheduler's services: clients present their tokens, workers the cluster tokens."""
    return [
        Service.of(
            pb.DESCRIPTOR.services_by_name["SchedulerService"],
            pb_grpc.add_SchedulerServiceServicer_to_server,
            SchedulerServicer(),
            config.auth_tokens,
        ),
        Service.of(
            pb.DESCRIPTOR.services_by_name["WorkerGatewayService"],
            pb_grpc.add_WorkerGatewayServiceServicer_to_server,
            WorkerGatewayServicer(),
            config.cluster_tokens,
        ),
    ]


def main(config: SchedulerConfig) -> int:
    return serve("scheduler", config, services(config))
