"""Scheduler throughput: requests per second through the whole lifecycle, and what each costs.

A real redis-server and `lamps scheduler serve` run as their own processes; this process is the
clients and many protocol-level workers that finish every request the moment it is admitted
(one token), batching each burst of admissions into one report. Two phases:

1. throughput: a closed loop of `--concurrency` clients submits `--requests` requests; requests/s
   is counted from the first submission to the moment the scheduler has every request finished;
2. overhead: an open loop submits `--latency-requests` at `--rate` per second; a request's
   scheduling overhead is the time from its Submit call to its Admit arriving at a worker
   (validation, prediction, the store commit, placement and both network hops).

Costs per request come from the processes themselves: CPU seconds of the scheduler (its
/metrics), of Redis (INFO cpu) and of this process, Redis round trips (the scheduler counts
them), scheduling rounds, and reports.

python benchmarks/scheduler_throughput.py --json scheduler_throughput.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from grpc import aio

from lamps.common.config import EventLoop
from lamps.common.server import run_async
from lamps.scheduler.embedded import embedded_redis
from lamps.v1 import common_pb2 as cpb
from lamps.v1 import scheduler_pb2 as pb
from lamps.v1 import scheduler_pb2_grpc as pb_grpc

EOF = aio.EOF  # type: ignore[attr-defined]  # missing from the stubs


@dataclass
class InstantWorker:
    """A worker whose engine finishes each request at once; admissions that arrive together are
    answered in one report."""

    target: str
    worker_id: str
    admitted_at: dict[str, float]
    completed: int = 0
    reports: int = 0
    _pending: list[str] = field(default_factory=list)
    _ready: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _channel: aio.Channel | None = None

    async def start(self) -> None:
        self._channel = aio.insecure_channel(self.target)
        call = pb_grpc.WorkerGatewayServiceStub(self._channel).Connect()  # type: ignore[call-arg]
        await call.write(
            pb.ConnectRequest(
                register=pb.Register(
                    worker_id=self.worker_id,
                    model="bench",
                    engine="sim",
                    kv=self._kv(),
                    strategies=[cpb.STRATEGY_PRESERVE, cpb.STRATEGY_DISCARD],
                    max_running=1_000_000,
                )
            )
        )
        first = await call.read()
        assert isinstance(first, pb.ConnectResponse)
        assert first.HasField("registered")
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._read(call)), loop.create_task(self._write(call))]

    def _kv(self) -> cpb.KvUsage:
        return cpb.KvUsage(block_size=16, total_blocks=1_000_000, free_blocks=1_000_000)

    async def _read(self, call: Any) -> None:
        while (message := await call.read()) is not EOF:
            if message.HasField("admit"):
                admit = message.admit
                self.admitted_at.setdefault(admit.prompt, time.perf_counter())
                self._pending.append(admit.request_id)
                self._ready.set()

    async def _write(self, call: Any) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), 1.0)
            self._ready.clear()
            batch, self._pending = self._pending, []
            updates = []
            for request_id in batch:
                updates.append(pb.RequestUpdate(request_id=request_id, started=pb.Started()))
                updates.append(
                    pb.RequestUpdate(
                        request_id=request_id, tokens=cpb.TokenDelta(token_ids=[1], text="x")
                    )
                )
                updates.append(
                    pb.RequestUpdate(
                        request_id=request_id,
                        completed=pb.Completed(reason=cpb.FINISH_REASON_STOP, completion_tokens=1),
                    )
                )
            await call.write(pb.ConnectRequest(report=pb.Report(kv=self._kv(), updates=updates)))
            self.reports += 1
            self.completed += len(batch)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, aio.AioRpcError):
                await task
        if self._channel is not None:
            await self._channel.close(None)


@dataclass
class Costs:
    """Counters read before and after a phase."""

    scheduler_cpu_s: float
    redis_cpu_s: float
    own_cpu_s: float
    round_trips: float
    rounds: float

    @classmethod
    def read(cls, metrics_url: str, redis_url: str) -> Costs:
        with urllib.request.urlopen(metrics_url, timeout=10) as response:  # noqa: S310
            text = response.read().decode()

        def sample(name: str) -> float:
            found = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.MULTILINE)
            return float(found.group(1)) if found else 0.0

        with redis.Redis.from_url(redis_url) as client:
            cpu = client.info("cpu")
        return cls(
            scheduler_cpu_s=sample("process_cpu_seconds_total"),
            redis_cpu_s=float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]),
            own_cpu_s=time.process_time(),
            round_trips=sample("lamps_scheduler_store_round_trips_total"),
            rounds=sample("lamps_scheduler_round_seconds_count"),
        )

    def minus(self, other: Costs) -> Costs:
        return Costs(*(getattr(self, f) - getattr(other, f) for f in self.__dataclass_fields__))


def start_scheduler(
    redis_url: str, policy: str, log_path: Path, profile_path: Path | None
) -> tuple[subprocess.Popen[bytes], int, int]:
    profile = ["-m", "cProfile", "-o", str(profile_path)] if profile_path else []
    command = [
        sys.executable,
        *profile,
        *("-m", "lamps.cli.main", "scheduler", "serve"),
        *("--host", "127.0.0.1", "--port", "0"),
        *("--metrics-host", "127.0.0.1", "--metrics-port", "0"),
        *("--redis-url", redis_url, "--redis-prefix", "bench", "--policy", policy),
        *("--worker-lease-seconds", "30", "--leader-lease-seconds", "10"),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMPS_")}
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in log_path.read_text(errors="replace").splitlines():
            if line.startswith("{") and '"serving"' in line:
                record = json.loads(line)
                return proc, int(record["port"]), int(record["metrics_port"])
        if proc.poll() is not None:
            raise SystemExit("the scheduler exited:\n" + log_path.read_text())
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("the scheduler did not start:\n" + log_path.read_text())


def request(index: int, phase: str) -> pb.SubmitRequest:
    generate = pb.GenerateRequest(prompt=f"{phase} request {index}: say one word")
    generate.sampling.max_tokens = 1
    return pb.SubmitRequest(request=generate)


async def wait_all_finished(stub: Any, workers: list[InstantWorker], expected: int) -> None:
    """Until the workers have finished `expected` requests and the scheduler has taken them in."""
    while True:
        if sum(worker.completed for worker in workers) >= expected:
            status = await stub.ClusterStatus(pb.ClusterStatusRequest(), timeout=10)
            if status.queued + status.starved + status.running == 0:
                return
        await asyncio.sleep(0.001)


async def closed_loop(stub: Any, count: int, concurrency: int, progress: bool) -> None:
    indices = iter(range(count))
    done = 0

    async def client() -> None:
        nonlocal done
        for index in indices:
            await stub.Submit(request(index, "throughput"), timeout=30)
            done += 1
            if progress and done % 1000 == 0:
                print(f"  submitted {done}/{count}", file=sys.stderr)

    await asyncio.gather(*(client() for _ in range(concurrency)))


async def open_loop(stub: Any, count: int, rate: float) -> dict[str, float]:
    started: dict[str, float] = {}
    loop = asyncio.get_running_loop()
    begin = loop.time()
    calls = []
    for index in range(count):
        delay = begin + index / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        message = request(index, "latency")
        started[message.request.prompt] = time.perf_counter()
        calls.append(asyncio.ensure_future(stub.Submit(message, timeout=30)))
    await asyncio.gather(*calls)
    return started


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(share * len(ordered)), len(ordered) - 1)]


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    async with embedded_redis() as redis_url:
        with tempfile.TemporaryDirectory() as directory:
            proc, port, metrics_port = start_scheduler(
                redis_url, args.policy, Path(directory) / "scheduler.log", args.profile
            )
            try:
                return await measure(args, redis_url, port, metrics_port)
            finally:
                proc.terminate()
                proc.wait(30)


async def measure(
    args: argparse.Namespace, redis_url: str, port: int, metrics_port: int
) -> dict[str, Any]:
    target = f"127.0.0.1:{port}"
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    admitted: dict[str, float] = {}
    workers = [InstantWorker(target, f"bench-{i}", admitted) for i in range(args.workers)]
    for worker in workers:
        await worker.start()
    async with aio.insecure_channel(target) as channel:
        stub = pb_grpc.SchedulerServiceStub(channel)
        try:
            await closed_loop(stub, args.warmup, args.concurrency, progress=False)
            await wait_all_finished(stub, workers, args.warmup)
            print(f"throughput phase: {args.requests} requests", file=sys.stderr)
            before = Costs.read(metrics_url, redis_url)
            reports_before = sum(w.reports for w in workers)
            started = time.perf_counter()
            await closed_loop(stub, args.requests, args.concurrency, progress=True)
            await wait_all_finished(stub, workers, args.warmup + args.requests)
            elapsed = time.perf_counter() - started
            costs = Costs.read(metrics_url, redis_url).minus(before)
            reports = sum(w.reports for w in workers) - reports_before
            print(
                f"overhead phase: {args.latency_requests} requests at {args.rate:g}/s",
                file=sys.stderr,
            )
            submitted = await open_loop(stub, args.latency_requests, args.rate)
            expected = args.warmup + args.requests + args.latency_requests
            await wait_all_finished(stub, workers, expected)
        finally:
            for worker in workers:
                await worker.stop()
    overheads = [(admitted[prompt] - at) * 1000 for prompt, at in submitted.items()]
    count = args.requests
    return {
        "requests_per_s": count / elapsed,
        "p50_overhead_ms": statistics.median(overheads),
        "p99_overhead_ms": percentile(overheads, 0.99),
        "redis_round_trips_per_request": costs.round_trips / count,
        "requests": count,
        "workers": args.workers,
        "concurrency": args.concurrency,
        "overhead_rate_per_s": args.rate,
        "per_request": {
            "scheduler_cpu_ms": costs.scheduler_cpu_s * 1000 / count,
            "redis_cpu_ms": costs.redis_cpu_s * 1000 / count,
            "client_and_workers_cpu_ms": costs.own_cpu_s * 1000 / count,
            "scheduling_rounds": costs.rounds / count,
            "worker_reports": reports / count,
        },
    }


def print_table(result: dict[str, Any]) -> None:
    per = result["per_request"]
    rows = [
        ("requests/s (whole lifecycle)", f"{result['requests_per_s']:.0f}"),
        (
            f"scheduling overhead p50 at {result['overhead_rate_per_s']:g}/s",
            f"{result['p50_overhead_ms']:.2f} ms",
        ),
        (
            f"scheduling overhead p99 at {result['overhead_rate_per_s']:g}/s",
            f"{result['p99_overhead_ms']:.2f} ms",
        ),
        ("Redis round trips per request", f"{result['redis_round_trips_per_request']:.3f}"),
        ("per request: scheduler CPU", f"{per['scheduler_cpu_ms']:.3f} ms"),
        ("per request: Redis CPU", f"{per['redis_cpu_ms']:.3f} ms"),
        ("per request: clients and workers CPU", f"{per['client_and_workers_cpu_ms']:.3f} ms"),
        ("per request: scheduling rounds", f"{per['scheduling_rounds']:.3f}"),
        ("per request: worker reports", f"{per['worker_reports']:.3f}"),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"{'measure':<{width}}  value")
    print(f"{'-' * width}  {'-' * 12}")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000, help="throughput phase requests")
    parser.add_argument("--concurrency", type=int, default=128, help="concurrent clients")
    parser.add_argument("--workers", type=int, default=8, help="protocol-level workers")
    parser.add_argument("--warmup", type=int, default=500, help="requests before measuring")
    parser.add_argument("--rate", type=float, default=500.0, help="overhead phase: requests/s")
    parser.add_argument("--latency-requests", type=int, default=2000, help="overhead phase")
    parser.add_argument("--policy", default="lamps", help="scheduling policy")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument(
        "--profile", type=Path, help="run the scheduler under cProfile and write its stats here"
    )
    args = parser.parse_args(argv)
    for name in ("requests", "concurrency", "workers", "latency_requests"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.rate <= 0 or args.warmup < 0:
        parser.error("--rate must be positive and --warmup not negative")
    result: dict[str, Any] = {}

    async def run() -> None:
        result.update(await bench(args))

    run_async(run(), EventLoop.AUTO)
    print_table(result)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
