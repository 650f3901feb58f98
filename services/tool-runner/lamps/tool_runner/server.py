"""The tool runner's gRPC server."""

from __future__ import annotations

import grpc
from grpc import aio

from lamps.common.server import Service, serve
from lamps.tool_runner.config import ToolRunnerConfig
from lamps.v1 import tool_runner_pb2 as pb
from lamps.v1 import tool_runner_pb2_grpc as pb_grpc

_NOT_YET = "is not available in this release: the tool registry has not landed yet"


class ToolRunnerServicer(pb_grpc.ToolRunnerServiceServicer):
    """Tool calls. Answers UNIMPLEMENTED until the registry lands."""

    async def Execute(
        self, request: pb.ExecuteRequest, context: aio.ServicerContext[object, object]
    ) -> pb.ExecuteResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"Execute {_NOT_YET}")

    async def ListTools(
        self, request: pb.ListToolsRequest, context: aio.ServicerContext[object, object]
    ) -> pb.ListToolsResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"ListTools {_NOT_YET}")


def services(config: ToolRunnerConfig) -> list[Service]:
    return [
        Service.of(
            pb.DESCRIPTOR.services_by_name["ToolRunnerService"],
            pb_grpc.add_ToolRunnerServiceServicer_to_server,
            ToolRunnerServicer(),
            config.auth_tokens,
        )
    ]


def main(config: ToolRunnerConfig) -> int:
    return serve("tool-runner", config, services(config))
