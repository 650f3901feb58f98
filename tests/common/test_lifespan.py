"""A service's resources open before it serves and close after its last call ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lamps.common.config import ServerConfig
from lamps.common.server import Server, Service


async def test_lifespan_wraps_serving_and_in_flight_calls() -> None:
    events: list[str] = []

    @asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        events.append("open")
        yield
        events.append("close")

    async def work(request: bytes, context: aio.ServicerContext[Any, Any]) -> bytes:
        events.append("call started")
        await asyncio.sleep(0.3)
        events.append("call finished")
        return request

    def add(server: aio.Server) -> None:
        handler = grpc.method_handlers_generic_handler(
            "lamps.test.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(work)}
        )
        server.add_generic_rpc_handlers((handler,))

    config = ServerConfig(host="127.0.0.1", port=0, metrics_host="127.0.0.1", metrics_port=0)
    server = Server(config, [Service(name="lamps.test.Echo", add_to_server=add)], lifespan=lifespan)
    await server.start()
    assert events == ["open"]
    async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        echo = channel.unary_unary(
            "/lamps.test.Echo/Echo", request_serializer=None, response_deserializer=None
        )
        call = asyncio.ensure_future(echo(b"hi"))
        await asyncio.sleep(0.1)
        await server.stop()
        assert await call == b"hi"
    assert events == ["open", "call started", "call finished", "close"]


class UnreachableRedis:
    """A resource whose opening fails, as a Redis that refuses connections does."""

    async def __aenter__(self) -> None:
        raise ConnectionError("redis://127.0.0.1:1 refused the connection")

    async def __aexit__(self, *exc_info: object) -> None:
        return None


async def test_a_failing_lifespan_stops_start_up() -> None:
    config = ServerConfig(host="127.0.0.1", port=0, metrics_host="127.0.0.1", metrics_port=0)
    server = Server(config, [], lifespan=UnreachableRedis)
    with pytest.raises(ConnectionError, match="refused"):
        await server.start()
    assert server.port == 0  # it never bound a port


async def test_readiness_holds_health_at_not_serving_until_it_returns() -> None:
    ready = asyncio.Event()
    config = ServerConfig(host="127.0.0.1", port=0, metrics_host="127.0.0.1", metrics_port=0)
    server = Server(config, [], readiness=ready.wait)
    await server.start()
    try:
        async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest()
            response = await stub.Check(request, timeout=5)
            assert response.status == health_pb2.HealthCheckResponse.NOT_SERVING
            ready.set()
            for _ in range(500):
                response = await stub.Check(request, timeout=5)
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    break
                await asyncio.sleep(0.01)
            assert response.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await server.stop()
