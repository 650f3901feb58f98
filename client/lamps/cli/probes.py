"""How `lamps up` tells that a part it started is ready: a service logs the ports it bound and
then says SERVING on gRPC health checking; Redis answers PING."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from redis.exceptions import RedisError

from lamps.cli.supervisor import Child, Probe
from lamps.common.channel import ClientTls, open_channel

POLL_S = 0.05


def serving_record(output: str) -> dict[str, Any] | None:
    """The service's JSON log record saying it serves, with its ports; None before it."""
    for line in output.splitlines():
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("msg") == "serving":
            return record
    return None


def service_probe(tls: ClientTls | None = None) -> Probe:
    """A `lamps <service> serve`: its ports from its log, then SERVING on its health service (a
    worker says so once registered with the scheduler; a scheduler replica, leader or standby,
    at once). `tls`: how to reach it when it serves TLS."""

    async def probe(child: Child) -> None:
        while (record := serving_record(child.output())) is None:
            child.check_running()
            await asyncio.sleep(POLL_S)
        child.port, child.metrics_port = int(record["port"]), int(record["metrics_port"])
        async with open_channel(f"127.0.0.1:{child.port}", tls=tls) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while True:
                child.check_running()
                try:
                    response = await health.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                    if response.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass  # not answering yet; the deadline is the supervisor's
                await asyncio.sleep(POLL_S)

    return probe


def redis_probe(port: int) -> Probe:
    """A redis-server on `port`: ready when it answers PING."""

    async def probe(child: Child) -> None:
        client = aioredis.Redis(host="127.0.0.1", port=port, socket_timeout=1.0)
        try:
            while True:
                child.check_running()
                try:
                    if await client.ping():
                        child.port = port
                        return
                except (RedisError, OSError):
                    pass  # not listening yet
                await asyncio.sleep(POLL_S)
        finally:
            await client.aclose()

    return probe
