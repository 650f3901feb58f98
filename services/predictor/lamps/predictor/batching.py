"""Micro-batching: calls that arrive close together share one forward pass.

A forward pass over 32 prompts costs far less than 32 passes over one (the weights are read once,
the matrix products are wider), so the server holds the first waiting call for up to `window`
seconds, or until `max_batch` items wait, and runs them together in a worker thread; the event
loop keeps accepting calls meanwhile. Calls arriving while a pass runs form the next batch, so under
load batches fill without waiting for the window at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """What one forward pass did: for metrics and logs."""

    items: int
    calls: int
    seconds: float


@dataclass
class _Pending(Generic[T, R]):
    items: Sequence[T]
    result: asyncio.Future[list[R]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class MicroBatcher(Generic[T, R]):
    """Runs `run(items) -> results` (same length, same order) on batches gathered from calls."""

    def __init__(
        self,
        run: Callable[[list[T]], list[R]],
        *,
        window_seconds: float,
        max_batch: int,
        executor: Executor | None = None,
        on_batch: Callable[[BatchRecord], None] | None = None,
    ) -> None:
        if max_batch < 1 or window_seconds < 0:
            raise ValueError("max_batch must be >= 1 and window_seconds >= 0")
        self._run = run
        self._window = window_seconds
        self._max_batch = max_batch
        self._executor = executor
        self._on_batch = on_batch
        self._queue: asyncio.Queue[_Pending[T, R]] = asyncio.Queue()
        self._held: _Pending[T, R] | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="micro-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def submit(self, items: Sequence[T]) -> list[R]:
        """Results for `items`, computed with whatever other calls arrive alongside."""
        if self._task is None:
            raise RuntimeError("the batcher is not running")
        chunks = [
            _Pending[T, R](items[i : i + self._max_batch])
            for i in range(0, len(items), self._max_batch)
        ]
        for chunk in chunks:
            self._queue.put_nowait(chunk)
        results = await asyncio.gather(*(chunk.result for chunk in chunks))
        return [result for part in results for result in part]

    async def _loop(self) -> None:
        while True:
            batch = await self._gather()
            await self._execute(batch)

    async def _gather(self) -> list[_Pending[T, R]]:
        """The next batch: the first waiting call, then more until full or the window closes."""
        first = self._held or await self._queue.get()
        self._held = None
        batch, size = [first], len(first.items)
        deadline = time.monotonic() + self._window
        while size < self._max_batch:
            try:
                more = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    # asyncio.timeout, not wait_for: on Python 3.11 wait_for can drop an item
                    # that arrives just as it times out.
                    async with asyncio.timeout(remaining):
                        more = await self._queue.get()
                except TimeoutError:
                    break
            if size + len(more.items) > self._max_batch:
                self._held = more  # starts the next batch
                break
            batch.append(more)
            size += len(more.items)
        return batch

    async def _execute(self, batch: list[_Pending[T, R]]) -> None:
        live = [p for p in batch if not p.result.done()]  # callers may have gone
        if not live:
            return
        items = [item for pending in live for item in pending.items]
        started = time.perf_counter()
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._run, items
            )
        except Exception as exc:  # handed to every caller of the batch
            log.exception("batch of %d items failed", len(items))
            for pending in live:
                if not pending.result.done():
                    pending.result.set_exception(exc)
            return
        record = BatchRecord(len(items), len(live), time.perf_counter() - started)
        if self._on_batch is not None:
            self._on_batch(record)
        offset = 0
        for pending in live:
            if not pending.result.done():
                pending.result.set_result(results[offset : offset + len(pending.items)])
            offset += len(pending.items)
