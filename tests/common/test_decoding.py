"""Requests that cannot be decoded (invalid UTF-8, truncated, corrupt) are the caller's error:
INVALID_ARGUMENT with the parser's reason, on unary calls and client streams alike, and only
once the caller has been authenticated."""

from __future__ import annotations

import grpc
import pytest
from grpc import aio

from tests.support.processes import StartService

EXECUTE = "/lamps.v1.ToolRunnerService/Execute"
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
# ExecuteRequest.request_id (field 2) holding a byte that is not UTF-8, and a truncated field.
BAD_UTF8 = b"\x12\x01\xff"
TRUNCATED = b"\x0a\x05\x12"


@pytest.mark.parametrize("body", [BAD_UTF8, TRUNCATED], ids=["invalid-utf8", "truncated"])
async def test_an_undecodable_request_is_invalid_argument(
    start_service: StartService, body: bytes
) -> None:
    service = start_service(["tool-runner"])
    async with aio.insecure_channel(service.target) as channel:
        execute = channel.unary_unary(EXECUTE, None, None)
        with pytest.raises(aio.AioRpcError) as caught:
            await execute(body, timeout=10)
        # The service still answers what it can decode.
        assert await execute(b"", timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid protobuf message" in (caught.value.details() or "")


async def test_an_undecodable_message_on_a_client_stream_ends_it_as_invalid_argument(
    start_service: StartService,
) -> None:
    service = start_service(["tool-runner"])
    async with aio.insecure_channel(service.target) as channel:
        stream = channel.stream_stream(REFLECTION, None, None)
        # ServerReflectionRequest.host (field 1) with invalid UTF-8.
        call = stream(iter([BAD_UTF8.replace(b"\x12", b"\x0a")]), timeout=10)
        with pytest.raises(aio.AioRpcError) as caught:
            await call.read()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_an_unauthenticated_caller_is_refused_before_decoding(
    start_service: StartService,
) -> None:
    service = start_service(["tool-runner"], env={"LAMPS_AUTH_TOKENS": "secret"})
    async with aio.insecure_channel(service.target) as channel:
        with pytest.raises(aio.AioRpcError) as caught:
            await channel.unary_unary(EXECUTE, None, None)(BAD_UTF8, timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
