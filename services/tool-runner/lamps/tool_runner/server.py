"""The tool runner's gRPC server: `Execute` and `ListTools` over the registry."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from grpc import aio

from lamps.common.server import Service, serve
from lamps.tool_runner.catalog import open_catalog
from lamps.tool_runner.config import ToolRunnerConfig
from lamps.tool_runner.registry import CallLimits, RegisteredTool, ToolOutcome, ToolRegistry
from lamps.v1 import common_pb2
from lamps.v1 import tool_runner_pb2 as pb
from lamps.v1 import tool_runner_pb2_grpc as pb_grpc


class ToolRunnerServicer(pb_grpc.ToolRunnerServiceServicer):
    """Tool calls for paused requests. Failures are results with errors, never RPC errors."""

    def __init__(self, registry: ToolRegistry) -> None:
        self.registry = registry

    async def Execute(
        self, request: pb.ExecuteRequest, context: aio.ServicerContext[object, object]
    ) -> pb.ExecuteResponse:
        outcome = await self.registry.execute(
            request.call.name,
            request.call.arguments_json,
            timeout_seconds=request.timeout_seconds,
            request_id=request.request_id,
        )
        return pb.ExecuteResponse(result=result_message(request.call.call_id, outcome))

    async def ListTools(
        self, request: pb.ListToolsRequest, context: aio.ServicerContext[object, object]
    ) -> pb.ListToolsResponse:
        return pb.ListToolsResponse(tools=[tool_info(tool) for tool in self.registry.tools()])


def result_message(call_id: str, outcome: ToolOutcome) -> common_pb2.ToolResult:
    result = common_pb2.ToolResult(
        call_id=call_id, output=outcome.output, duration_seconds=outcome.duration_seconds
    )
    if outcome.error is not None:
        result.error.code = common_pb2.ToolErrorCode.Value("TOOL_ERROR_CODE_" + outcome.error.name)
        result.error.message = outcome.message
    return result


def tool_info(tool: RegisteredTool) -> pb.ToolInfo:
    spec = tool.spec
    return pb.ToolInfo(
        name=spec.name,
        description=spec.description,
        arguments_schema_json=json.dumps(spec.arguments_schema, sort_keys=True),
        timeout_seconds=spec.timeout_seconds,
        max_concurrency=spec.max_concurrency,
        source=pb.ToolSource.Value("TOOL_SOURCE_" + tool.source.name),
    )


def services(config: ToolRunnerConfig, registry: ToolRegistry) -> list[Service]:
    return [
        Service.of(
            pb.DESCRIPTOR.services_by_name["ToolRunnerService"],
            pb_grpc.add_ToolRunnerServiceServicer_to_server,
            ToolRunnerServicer(registry),
            config.client_tokens(),
        )
    ]


def main(config: ToolRunnerConfig) -> int:
    registry = ToolRegistry(
        CallLimits(
            max_arguments_bytes=config.max_arguments_bytes,
            max_output_chars=config.max_output_chars,
            busy_wait_seconds=config.busy_wait_seconds,
        )
    )

    @asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        async with open_catalog(config, registry):
            yield

    return serve("tool-runner", config, services(config, registry), lifespan=lifespan)
