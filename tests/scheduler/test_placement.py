"""Placement: best fit of free KV blocks, and only the strategies a worker offers."""

from __future__ import annotations

import asyncio

from lamps.model.cost import get_profile
from lamps.model.strategy import Strategy
from lamps.scheduler.placement import WorkerHandle, best_fit, never_fits, roomiest
from lamps.v1 import common_pb2 as cpb


def make_worker(
    worker_id: str,
    free: int,
    *,
    total: int = 100,
    strategies: frozenset[Strategy] = frozenset(Strategy),
    max_running: int = 8,
    model: str = "m",
    connected: bool = True,
) -> WorkerHandle:
    worker = WorkerHandle(
        worker_id=worker_id,
        model=model,
        engine="sim",
        strategies=strategies,
        max_running=max_running,
        kv=cpb.KvUsage(block_size=16, total_blocks=total, free_blocks=free),
        last_seen=0.0,
        last_report_at=0.0,
    )
    if connected:
        worker.outbox = asyncio.Queue()
    return worker


def test_best_fit_takes_the_fullest_worker_that_still_fits() -> None:
    workers = [make_worker("roomy", 90), make_worker("snug", 5), make_worker("tight", 1)]
    # 40 tokens and the first generated one need 3 blocks of 16.
    assert best_fit(workers, 40, "") is workers[1]
    assert best_fit(workers, 10, "") is workers[2]
    assert best_fit(workers, 5000, "") is None
    assert roomiest(workers) is workers[0]


def test_promised_blocks_count_until_the_worker_reports_them() -> None:
    worker = make_worker("w", 4)
    assert best_fit([worker], 40, "") is worker
    worker.reserved["r1"] = 3
    assert worker.free_blocks == 1
    assert best_fit([worker], 40, "") is None


def test_workers_that_cannot_take_work_are_skipped() -> None:
    full = make_worker("full", 50, max_running=1)
    full.held.add("r1")
    draining = make_worker("draining", 50)
    draining.draining = True
    away = make_worker("away", 50, connected=False)
    other_model = make_worker("other", 50, model="big")
    candidates = [full, draining, away, other_model]
    assert best_fit(candidates, 10, "m") is None
    assert best_fit(candidates, 10, "big") is other_model
    assert best_fit(candidates, 10, "") is other_model
    # A request paused in a tool does not count against max_running.
    full.in_tool.add("r1")
    assert best_fit([full], 10, "m") is full


def test_a_worker_is_asked_only_for_strategies_it_offers() -> None:
    no_swap = make_worker("w", 10, strategies=frozenset({Strategy.PRESERVE, Strategy.DISCARD}))
    assert no_swap.allowed(Strategy.SWAP) is Strategy.PRESERVE
    assert no_swap.allowed(Strategy.DISCARD) is Strategy.DISCARD
    discard_only = make_worker("d", 10, strategies=frozenset({Strategy.DISCARD}))
    assert discard_only.allowed(Strategy.SWAP) is Strategy.DISCARD
    assert discard_only.allowed(Strategy.PRESERVE) is Strategy.DISCARD
    # Without Swap the policy sees no CPU space to swap into.
    assert no_swap.view(get_profile("gptj-6b-a100")).cpu_free_tokens == 0


def test_a_request_no_worker_could_ever_hold_is_named_and_one_that_must_wait_is_not() -> None:
    workers = [make_worker("a", 0, total=100), make_worker("b", 0, total=50)]
    # Full now, but an empty worker would hold it: it waits.
    assert never_fits(workers, 1000, "m") is None
    too_big = never_fits(workers, 100 * 16, "m")
    assert too_big is not None
    assert "needs 1601 tokens of KV cache and the largest worker holds 1600" in too_big
    wrong = never_fits(workers, 10, "other")
    assert wrong is not None
    assert "no worker serves model 'other' (the workers serve: m)" in wrong
    # With no worker connected yet, nothing is decided: it waits for one.
    assert never_fits([make_worker("c", 0, connected=False)], 10**9, "other") is None
