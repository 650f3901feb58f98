"""Faults injected into a running `lamps up`, found through its endpoints.json (each part's pid),
and the run that replays a workload with one of them injected mid-way.

Parts are killed with SIGKILL, so nothing is handed over: `lamps up`'s supervisor restarts them
(a worker keeps its id, Redis replays its append-only file) or a standby scheduler takes over.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lamps.model.workload import Arrival
from lamps.v1 import scheduler_pb2 as pb
from tests.support.faults.driver import (
    SCHEDULER_SERVICE,
    Connection,
    Driver,
    DriveSettings,
    Progress,
)
from tests.support.faults.ledger import RequestLog, Tally, tally

Endpoints = Callable[[], dict[str, Any]]
POLL_S = 0.05
RECOVERY_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class FaultContext:
    """What a fault acts on: the system's parts and the driver's connection."""

    endpoints: Endpoints
    connection: Connection
    workers: int

    def pid(self, part: str) -> int:
        return int(self.endpoints()["parts"][part]["pid"])

    async def status(self) -> pb.ClusterStatusResponse | None:
        try:
            return await self.connection.stub.ClusterStatus(
                pb.ClusterStatusRequest(), metadata=self.connection.metadata, timeout=2.0
            )
        except grpc.RpcError:
            return None


class Fault(Protocol):
    """Something that goes wrong mid-run; `inject` returns what it did, in words."""

    @property
    def name(self) -> str: ...

    async def inject(self, context: FaultContext) -> str: ...


@dataclass(frozen=True)
class NoFault:
    """The baseline: the same workload with nothing injected."""

    name: str = "none (baseline)"

    async def inject(self, context: FaultContext) -> str:
        return "nothing injected"


@dataclass(frozen=True)
class KillPart:
    """SIGKILL one part by name (the supervisor restarts it): `redis`, `scheduler`, ..."""

    part: str
    name: str

    async def inject(self, context: FaultContext) -> str:
        pid = context.pid(self.part)
        os.kill(pid, signal.SIGKILL)
        return f"SIGKILL {self.part} (pid {pid})"


@dataclass(frozen=True)
class KillActiveScheduler:
    """SIGKILL the scheduler that leads: the only one, or of `lamps up --schedulers N`'s
    replicas the one whose health says SERVING (a standby takes over)."""

    name: str = "SIGKILL the active scheduler"

    async def inject(self, context: FaultContext) -> str:
        parts = context.endpoints()["parts"]
        replicas = sorted(name for name in parts if name.startswith("scheduler"))
        if len(replicas) == 1:
            leader = replicas[0]
            how = "restarted by lamps up"
        else:
            leader = await _leader(parts, replicas)
            how = f"one of {len(replicas)} replicas; a standby takes over"
        pid = int(parts[leader]["pid"])
        os.kill(pid, signal.SIGKILL)
        return f"SIGKILL {leader} (pid {pid}; {how})"


async def _leader(parts: dict[str, Any], replicas: list[str]) -> str:
    """The replica whose SchedulerService health says SERVING."""
    async with asyncio.timeout(RECOVERY_TIMEOUT_S):
        while True:
            for name in replicas:
                async with aio.insecure_channel(parts[name]["address"]) as channel:
                    try:
                        response = await health_pb2_grpc.HealthStub(channel).Check(
                            health_pb2.HealthCheckRequest(service=SCHEDULER_SERVICE), timeout=2.0
                        )
                    except grpc.RpcError:
                        continue
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return name
            await asyncio.sleep(POLL_S)


@dataclass(frozen=True)
class KillBusyWorker:
    """SIGKILL a worker that holds requests: they are re-queued and finish elsewhere."""

    name: str = "SIGKILL a worker holding requests"

    async def inject(self, context: FaultContext) -> str:
        async with asyncio.timeout(RECOVERY_TIMEOUT_S):
            while True:
                status = await context.status()
                busy = [w for w in status.workers if w.running + w.in_tool] if status else []
                if busy:
                    worker = max(busy, key=lambda w: w.running + w.in_tool)
                    break
                await asyncio.sleep(POLL_S)
        pid = context.pid(worker.worker_id)
        os.kill(pid, signal.SIGKILL)
        held = worker.running + worker.in_tool
        return f"SIGKILL {worker.worker_id} (pid {pid}) holding {held} request(s)"


@dataclass(frozen=True)
class HangToolRunner:
    """SIGSTOP the tool runner for `seconds` (wall), then SIGCONT: calls hang, then go on."""

    seconds: float
    name: str = "tool runner hangs (SIGSTOP, then SIGCONT)"

    async def inject(self, context: FaultContext) -> str:
        pid = context.pid("tool-runner")
        os.kill(pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(self.seconds)
        finally:  # never leave it stopped, even when the run is cancelled
            os.kill(pid, signal.SIGCONT)
        return f"SIGSTOP tool-runner (pid {pid}) for {self.seconds:g} s, then SIGCONT"


@dataclass(frozen=True)
class DropClient:
    """The client drops its channel (every Submit and Watch in flight) `times` times,
    `interval_s` apart, and resumes each request from its last offset."""

    times: int = 2
    interval_s: float = 0.5
    name: str = "client disconnects and resumes with Watch"

    async def inject(self, context: FaultContext) -> str:
        for index in range(self.times):
            if index:
                await asyncio.sleep(self.interval_s)
            await context.connection.reconnect()
        return f"dropped the channel {self.times} time(s), {self.interval_s:g} s apart"


@dataclass
class FaultRun:
    """One workload replayed with one fault."""

    fault: str
    injected: str
    logs: list[RequestLog] = field(default_factory=list)

    @property
    def tally(self) -> Tally:
        return tally(self.logs)


async def run_with_fault(
    target: str,
    token: str | None,
    endpoints: Endpoints,
    workers: int,
    fault: Fault,
    arrivals: Sequence[Arrival],
    settings: DriveSettings,
    *,
    at: float = 0.5,
    progress: Progress | None = None,
) -> FaultRun:
    """Replay `arrivals`, inject `fault` once a fraction `at` of them has been sent, wait for
    every request to end (or the drain deadline), then for the system to be whole again."""
    connection = Connection(target, token)
    context = FaultContext(endpoints, connection, workers)
    driver = Driver(connection, settings)
    try:
        replaying = asyncio.create_task(driver.replay(arrivals, progress))
        halfway = asyncio.create_task(driver.when_sent(max(1, int(len(arrivals) * at))).wait())
        await asyncio.wait({replaying, halfway}, return_when=asyncio.FIRST_COMPLETED)
        halfway.cancel()
        injected = await fault.inject(context)
        logs = await replaying
        await wait_whole(context)
    finally:
        with contextlib.suppress(Exception):
            await connection.close()
    return FaultRun(fault.name, injected, logs)


async def wait_whole(context: FaultContext) -> None:
    """Until the scheduler answers and lists every worker READY again (restarted parts have
    re-registered), so that the next run starts from a whole system."""
    async with asyncio.timeout(RECOVERY_TIMEOUT_S):
        while True:
            status = await context.status()
            if status is not None:
                ready = [w for w in status.workers if w.state == pb.WORKER_STATE_READY]
                if len(ready) >= context.workers:
                    return
            await asyncio.sleep(POLL_S)


def standard_faults(hang_s: float) -> list[Fault]:
    """Issue 11's faults, baseline first, in the order the report lists them."""
    return [
        NoFault(),
        KillActiveScheduler(),
        KillBusyWorker(),
        KillPart("redis", "SIGKILL Redis (restarted, AOF on)"),
        HangToolRunner(hang_s),
        DropClient(),
    ]
