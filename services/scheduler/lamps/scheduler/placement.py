"""Workers as the scheduler sees them, and placement: best fit of free KV blocks.

A worker's free blocks are what it last reported, less what the scheduler has since promised it
(admissions it has not started yet). Best fit gives a request the worker with the fewest free
blocks that still hold it, which packs work and keeps room for large requests elsewhere.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from lamps.model.cost import CostModel
from lamps.model.strategy import Strategy
from lamps.scheduler.jobs import STRATEGY_TO_PB, timestamp
from lamps.scheduler.policy import EngineView
from lamps.v1 import common_pb2 as cpb
from lamps.v1 import scheduler_pb2 as pb

MAX_FORGOTTEN = 10_000


@dataclass(eq=False, slots=True)
class WorkerHandle:
    """One worker: what it registered, its last report, and the stream to it (None while it is
    disconnected and its lease runs)."""

    worker_id: str
    model: str
    engine: str
    strategies: frozenset[Strategy]
    max_running: int
    kv: cpb.KvUsage
    last_seen: float
    last_report_at: float
    outbox: asyncio.Queue[pb.ConnectResponse | None] | None = None
    draining: bool = False
    # Requests it holds, and blocks promised to those admitted but not started yet.
    held: set[str] = field(default_factory=set)
    in_tool: set[str] = field(default_factory=set)
    reserved: dict[str, int] = field(default_factory=dict)
    # Requests aborted or dropped: late updates about them are ignored, not refused.
    forgotten: set[str] = field(default_factory=set)

    @property
    def block_size(self) -> int:
        return max(int(self.kv.block_size), 1)

    @property
    def free_blocks(self) -> int:
        return int(self.kv.free_blocks) - sum(self.reserved.values())

    @property
    def running(self) -> int:
        return len(self.held) - len(self.in_tool)

    @property
    def ready(self) -> bool:
        return self.outbox is not None and not self.draining

    def blocks_for(self, tokens: int) -> int:
        return math.ceil(max(tokens, 1) / self.block_size)

    def fits(self, tokens: int, model: str) -> bool:
        return (
            self.ready
            and (not model or model == self.model)
            and self.running < self.max_running
            and self.blocks_for(tokens + 1) <= self.free_blocks
        )

    def allowed(self, strategy: Strategy) -> Strategy:
        """`strategy` if this worker can carry it out, else the closest one it can."""
        if strategy in self.strategies:
            return strategy
        for fallback in (Strategy.PRESERVE, Strategy.DISCARD, Strategy.SWAP):
            if fallback in self.strategies:
                return fallback
        return Strategy.DISCARD

    def forget(self, request_id: str) -> None:
        """Ignore late updates about `request_id`; only the most recent ones are remembered
        (an update older than that is refused, which harms nothing)."""
        if len(self.forgotten) >= MAX_FORGOTTEN:
            self.forgotten.clear()
        self.forgotten.add(request_id)

    def send(self, message: pb.ConnectResponse) -> None:
        if self.outbox is not None:
            self.outbox.put_nowait(message)

    def view(self, cost: CostModel) -> EngineView:
        used_tokens = (int(self.kv.total_blocks) - int(self.kv.free_blocks)) * self.block_size
        decode = max(self.running, 1)
        return EngineView(
            running_tokens=used_tokens,
            decode_tokens=decode,
            iteration_s=cost.iteration_s(decode, used_tokens),
            cpu_free_tokens=int(self.kv.cpu_free_blocks) * self.block_size
            if Strategy.SWAP in self.strategies
            else 0,
        )

    def status(self) -> pb.WorkerStatus:
        return pb.WorkerStatus(
            worker_id=self.worker_id,
            model=self.model,
            engine=self.engine,
            state=pb.WORKER_STATE_DRAINING if self.draining else pb.WORKER_STATE_READY,
            kv=self.kv,
            running=self.running,
            in_tool=len(self.in_tool),
            last_report_at=timestamp(self.last_report_at),
            strategies=sorted(STRATEGY_TO_PB[s] for s in self.strategies),
        )


def best_fit(workers: Iterable[WorkerHandle], tokens: int, model: str) -> WorkerHandle | None:
    """The worker with the fewest free blocks that holds `tokens` more, or None."""
    fitting = [worker for worker in workers if worker.fits(tokens, model)]
    if not fitting:
        return None
    return min(fitting, key=lambda worker: (worker.free_blocks, worker.worker_id))


def never_fits(workers: Iterable[WorkerHandle], tokens: int, model: str) -> str | None:
    """Why no ready worker could ever hold `tokens` of `model`, even empty; None if one could,
    or if no worker is ready yet (then the request waits for one)."""
    ready = [worker for worker in workers if worker.ready]
    if not ready:
        return None
    serving = [worker for worker in ready if not model or model == worker.model]
    if not serving:
        models = ", ".join(sorted({worker.model for worker in ready}))
        return f"no worker serves model {model!r} (the workers serve: {models})"
    if any(worker.blocks_for(tokens + 1) <= int(worker.kv.total_blocks) for worker in serving):
        return None
    largest = max(int(w.kv.total_blocks) * w.block_size for w in serving)
    return (
        f"the request needs {tokens + 1} tokens of KV cache and the largest worker holds "
        f"{largest}: shorten the prompt or max_tokens"
    )


def roomiest(workers: Iterable[WorkerHandle]) -> WorkerHandle | None:
    """The ready worker with the most free blocks: the one a new request is ranked against."""
    ready = [worker for worker in workers if worker.ready]
    return max(ready, key=lambda worker: worker.free_blocks) if ready else None
