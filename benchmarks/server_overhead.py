"""What lamps.common's interceptors cost per RPC: a bare grpc.aio server against ours, one run.

    python benchmarks/server_overhead.py [--calls 6000] [--concurrency 32] [--repeats 3]
                                         [--json out.json]

Both servers answer the same echo method on loopback, in this process, with the same client.
"ours" carries the request-id/metrics/access-log interceptor and bearer-token auth, as every
lamps service does. The table gives calls per second (median of the repeats) and the extra
microseconds each call costs; the machine is shared and noisy, so read the ratio, not the rates.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

from lamps.common.config import EventLoop
from lamps.common.interceptors import AuthInterceptor, ObservabilityInterceptor
from lamps.common.server import run_async

SERVICE = "lamps.bench.Echo"
BEARER = "bench-token"


async def _echo(request: bytes, context: aio.ServicerContext[Any, Any]) -> bytes:
    return request


async def calls_per_second(interceptors: list[Any], calls: int, concurrency: int) -> float:
    server = aio.server(interceptors=interceptors)
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE, {"Echo": grpc.unary_unary_rpc_method_handler(_echo)}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    metadata = (("authorization", f"Bearer {BEARER}"),)
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            echo = channel.unary_unary(
                f"/{SERVICE}/Echo", request_serializer=None, response_deserializer=None
            )
            for _ in range(200):  # warm up the channel and the caches
                await echo(b"x", metadata=metadata)

            async def client(n: int) -> None:
                for _ in range(n):
                    await echo(b"x", metadata=metadata)

            started = time.perf_counter()
            await asyncio.gather(*(client(calls // concurrency) for _ in range(concurrency)))
            elapsed = time.perf_counter() - started
    finally:
        await server.stop(0)
    return (calls // concurrency) * concurrency / elapsed


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    def ours() -> list[Any]:
        return [ObservabilityInterceptor(), AuthInterceptor({SERVICE: frozenset({BEARER})})]

    variants: dict[str, Callable[[], list[Any]]] = {"bare": list, "ours": ours}
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for repeat in range(args.repeats):
        for name, make in variants.items():
            rates[name].append(await calls_per_second(make(), args.calls, args.concurrency))
        print(f"  repeat {repeat + 1}/{args.repeats} done", file=sys.stderr)
    bare = statistics.median(rates["bare"])
    intercepted = statistics.median(rates["ours"])
    return {
        "calls": args.calls,
        "concurrency": args.concurrency,
        "repeats": args.repeats,
        "bare_calls_per_s": round(bare, 1),
        "ours_calls_per_s": round(intercepted, 1),
        "ratio": round(intercepted / bare, 3),
        "extra_us_per_call": round((1 / intercepted - 1 / bare) * 1e6, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=6000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    args = parser.parse_args()
    result: dict[str, Any] = {}

    async def run() -> None:
        result.update(await measure(args))

    run_async(run(), EventLoop.AUTO)
    print(f"{'server':<8}{'calls/s':>10}")
    print(f"{'bare':<8}{result['bare_calls_per_s']:>10.0f}")
    print(f"{'ours':<8}{result['ours_calls_per_s']:>10.0f}")
    print(
        f"ours/bare = {result['ratio']:.2f}; interceptors add "
        f"{result['extra_us_per_call']:.0f} us per call (client and server share this process)"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
