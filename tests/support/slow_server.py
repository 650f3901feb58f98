"""A server built with `lamps.common.serve` whose one method sleeps: for shutdown tests.

    python -m tests.support.slow_server --port 0 --metrics-port 0 --grace-seconds 5

`/lamps.test.Slow/Sleep` takes the seconds to sleep as ASCII bytes and answers b"slept".
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import grpc
from grpc import aio

from lamps.common import config as cfg
from lamps.common.server import Service, serve

SERVICE = "lamps.test.Slow"
METHOD = f"/{SERVICE}/Sleep"


async def sleep(request: bytes, context: aio.ServicerContext[Any, Any]) -> bytes:
    await asyncio.sleep(float(request.decode()))
    return b"slept"


def sleep_method(channel: aio.Channel) -> aio.UnaryUnaryMultiCallable[bytes, bytes]:
    """The client side of Sleep: raw bytes both ways."""
    return channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)


def add_to_server(server: aio.Server) -> None:
    handler = grpc.method_handlers_generic_handler(
        SERVICE, {"Sleep": grpc.unary_unary_rpc_method_handler(sleep)}
    )
    server.add_generic_rpc_handlers((handler,))


def main(argv: list[str]) -> int:
    config = cfg.parse(cfg.ServerConfig, argv, prog="slow_server")
    return serve("slow", config, [Service(name=SERVICE, add_to_server=add_to_server)])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
