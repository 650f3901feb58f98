"""open_channel's bearer token reaches every kind of call, unary and streaming, both ways; and a
target of several addresses reaches the one whose health says SERVING (the leading replica)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from grpc import aio

from lamps.common.channel import open_channel, target_error
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


def _named(name: bytes) -> Callable[[aio.Server], None]:
    """A service whose one method answers with the name of the server it runs in."""

    async def whoami(request: bytes, context: Any) -> bytes:
        return name

    def add(server: aio.Server) -> None:
        methods = {"WhoAmI": grpc.unary_unary_rpc_method_handler(whoami)}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, methods),))

    return add


@pytest.fixture
async def replicas() -> AsyncIterator[list[Server]]:
    config = ServerConfig(host="127.0.0.1", port=0, metrics_host="127.0.0.1", metrics_port=0)
    servers = [Server(config, [Service(SERVICE, _named(name))]) for name in (b"a", b"b")]
    for server in servers:
        await server.start()
    yield servers
    for server in servers:
        await server.stop()


async def test_several_addresses_reach_the_one_that_serves_and_follow_a_change(
    replicas: list[Server],
) -> None:
    first, second = replicas
    await second.set_serving([SERVICE], False)
    target = f"ipv4:127.0.0.1:{first.port},127.0.0.1:{second.port}"
    async with open_channel(target, health_service=SERVICE) as channel:
        whoami = channel.unary_unary(f"/{SERVICE}/WhoAmI", None, None)
        assert {await whoami(b"") for _ in range(6)} == {b"a"}
        # The leader changes: the channel learns it from the health stream, not from a failure.
        await first.set_serving([SERVICE], False)
        await second.set_serving([SERVICE], True)
        # (wait_for_ready: for the moment neither is seen SERVING.)
        for _ in range(200):
            if await whoami(b"", timeout=5, wait_for_ready=True) == b"b":
                break
            await asyncio.sleep(0.01)
        assert {await whoami(b"") for _ in range(6)} == {b"b"}


@pytest.mark.parametrize(
    ("target", "valid"),
    [
        ("127.0.0.1:50051", True),
        ("scheduler.lamps:50051", True),
        ("ipv4:127.0.0.1:50051,127.0.0.1:50052", True),
        ("ipv6:[::1]:50051,[::1]:50052", True),
        ("scheduler", False),
        ("ipv4:127.0.0.1:50051,127.0.0.1", False),
    ],
)
def test_targets_are_host_port_or_several_addresses(target: str, valid: bool) -> None:
    assert (target_error(target) is None) is valid
