"""Micro-batching: concurrent calls share one run; big calls are split; errors reach callers."""

from __future__ import annotations

import asyncio
import threading

import pytest

from lamps.predictor.batching import BatchRecord, MicroBatcher


class Doubler:
    """A stand-in model that records the batches it is given."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.threads: set[str] = set()

    def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(items)
        self.threads.add(threading.current_thread().name)
        return [2 * i for i in items]


async def test_calls_arriving_together_share_one_run_and_get_their_own_results() -> None:
    model, records = Doubler(), list[BatchRecord]()
    batcher = MicroBatcher(model, window_seconds=30, max_batch=6, on_batch=records.append)
    batcher.start()
    results = await asyncio.gather(*(batcher.submit([i, 10 + i]) for i in range(3)))
    await batcher.stop()
    # Six items fill the batch, so it runs at once instead of waiting out the 30 s window.
    assert results == [[0, 20], [2, 22], [4, 24]]
    assert model.batches == [[0, 10, 1, 11, 2, 12]]
    assert records[0].items == 6
    assert records[0].calls == 3
    assert threading.main_thread().name not in model.threads


async def test_a_call_larger_than_max_batch_is_split_in_order() -> None:
    model = Doubler()
    batcher = MicroBatcher(model, window_seconds=0, max_batch=4)
    batcher.start()
    assert await batcher.submit(list(range(10))) == [2 * i for i in range(10)]
    await batcher.stop()
    assert [len(b) for b in model.batches] == [4, 4, 2]


async def test_a_call_that_would_overflow_the_batch_starts_the_next_one() -> None:
    model, records = Doubler(), list[BatchRecord]()
    batcher: MicroBatcher[int, int] = MicroBatcher(
        model, window_seconds=0.05, max_batch=4, on_batch=records.append
    )
    batcher.start()
    await asyncio.gather(batcher.submit([1, 2, 3]), batcher.submit([4, 5]))
    await batcher.stop()
    assert model.batches == [[1, 2, 3], [4, 5]]
    assert [r.calls for r in records] == [1, 1]


async def test_a_failing_run_fails_every_call_of_its_batch() -> None:
    def broken(items: list[int]) -> list[int]:
        raise RuntimeError("out of memory")

    batcher = MicroBatcher(broken, window_seconds=30, max_batch=2)
    batcher.start()
    outcomes = await asyncio.gather(
        batcher.submit([1]), batcher.submit([2]), return_exceptions=True
    )
    await batcher.stop()
    assert [str(o) for o in outcomes] == ["out of memory", "out of memory"]


async def test_a_cancelled_caller_does_not_break_the_batch() -> None:
    model = Doubler()
    batcher = MicroBatcher(model, window_seconds=0.2, max_batch=8)
    batcher.start()
    gone = asyncio.ensure_future(batcher.submit([1]))
    await asyncio.sleep(0)
    gone.cancel()
    assert await batcher.submit([5]) == [10]
    await batcher.stop()
    assert model.batches == [[5]]


def test_a_batcher_needs_a_positive_batch() -> None:
    with pytest.raises(ValueError, match="max_batch must be >= 1"):
        MicroBatcher(Doubler(), window_seconds=0, max_batch=0)


async def test_submitting_before_start_is_an_error() -> None:
    batcher: MicroBatcher[int, int] = MicroBatcher(Doubler(), window_seconds=0, max_batch=1)
    with pytest.raises(RuntimeError, match="not running"):
        await batcher.submit([1])
