"""open_channel's bearer token reaches every kind of call: unary and streaming, both ways."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc import aio

from lamps.common.channel import open_channel
from lamps.common.config import ServerConfig
from lamps.common.server import Server, Service

SERVICE = "lamps.test.Echo"


async def _unary(request: bytes, context: Any) -> bytes:
    return request


async def _unary_stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
    yield request


async def _stream_unary(requests: AsyncIterator[bytes], context: Any) -> bytes:
    return b"".join([r async for r in requests])


async def _stream_stream(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
    async for request in requests:
        yield request


def _add(server: aio.Server) -> None:
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "UnaryUnary": grpc.unary_unary_rpc_method_handler(_unary),
            "UnaryStream": grpc.unary_stream_rpc_method_handler(_unary_stream),
            "StreamUnary": grpc.stream_unary_rpc_method_handler(_stream_unary),
            "StreamStream": grpc.stream_stream_rpc_method_handler(_stream_stream),
        },
    )
    server.add_generic_rpc_handlers((handler,))


async def _call_each_kind(channel: aio.Channel) -> list[bytes]:
    async def one() -> AsyncIterator[bytes]:
        yield b"x"

    return [
        await channel.unary_unary(f"/{SERVICE}/UnaryUnary", None, None)(b"x"),
        *[r async for r in channel.unary_stream(f"/{SERVICE}/UnaryStream", None, None)(b"x")],
        await channel.stream_unary(f"/{SERVICE}/StreamUnary", None, None)(one()),
        *[r async for r in channel.stream_stream(f"/{SERVICE}/StreamStream", None, None)(one())],
    ]


@pytest.fixture
async def guarded() -> AsyncIterator[str]:
    config = ServerConfig(host="127.0.0.1", port=0, metrics_host="127.0.0.1", metrics_port=0)
    server = Server(config, [Service(SERVICE, _add, auth_tokens=frozenset({"t0k3n"}))])
    await server.start()
    yield f"127.0.0.1:{server.port}"
    await server.stop()


async def test_the_token_reaches_unary_and_streaming_calls(guarded: str) -> None:
    async with open_channel(guarded, token="t0k3n") as channel:
        assert await _call_each_kind(channel) == [b"x"] * 4


@pytest.mark.parametrize("token", [None, "wrong"])
async def test_without_the_right_token_every_kind_is_refused(
    guarded: str, token: str | None
) -> None:
    async with open_channel(guarded, token=token) as channel:
        with pytest.raises(aio.AioRpcError) as caught:
            await _call_each_kind(channel)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
