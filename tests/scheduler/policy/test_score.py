"""LAMPS' memory x time score against values worked by hand."""

from __future__ import annotations

import pytest

from lamps.model.cost import get_profile
from lamps.model.strategy import Strategy
from lamps.scheduler.policy import CallEstimate, EngineView, RequestEstimate
from lamps.scheduler.policy.score import area, memory_time

GPTJ = get_profile("gptj-6b-a100")
M = 458_752
ENGINE = EngineView(running_tokens=0, decode_tokens=0, iteration_s=0.02, cpu_free_tokens=10**6)
PREFILL_S = (0.0408 * 384 + 16.92) / 1000
REQUEST = RequestEstimate(
    context_tokens=384,
    pre_call_tokens=10,
    call=CallEstimate(kind=None, duration_s=1.0, return_tokens=16),
    post_call_tokens=4,
)
BEFORE = (PREFILL_S * 192 + 10 * 0.02 * 389) * M
AFTER = 4 * 0.02 * 412 * M


def test_area_is_a_trapezoid_over_whole_iterations() -> None:
    assert area(GPTJ, 100, 10, 1, 0.02) == pytest.approx(10 * 0.02 * 105 * M)
    assert area(GPTJ, 0, 385, 384, 0.5) == pytest.approx(2 * 0.5 * 192.5 * M)
    assert area(GPTJ, 0, 0, 384, 0.5) == 0.0


def test_preserve_score_holds_the_context_through_the_call() -> None:
    returned = PREFILL_S * (394 + 8) * M
    expected = BEFORE + 1.0 * 394 * M + returned + AFTER
    assert memory_time(GPTJ, REQUEST, Strategy.PRESERVE, ENGINE) == pytest.approx(expected)


def test_discard_score_recomputes_the_context_after_the_call() -> None:
    recompute = 2 * PREFILL_S * (410 / 2) * M  # 410 tokens in two chunks of up to 384
    expected = BEFORE + recompute + AFTER
    assert memory_time(GPTJ, REQUEST, Strategy.DISCARD, ENGINE) == pytest.approx(expected)


def test_swap_score_pays_two_transfers() -> None:
    transfer = 394 * M / 25e9
    returned = PREFILL_S * (394 + 8) * M
    expected = BEFORE + 2 * transfer * 394 * M + returned + AFTER
    assert memory_time(GPTJ, REQUEST, Strategy.SWAP, ENGINE) == pytest.approx(expected)


def test_a_request_without_a_call_scores_its_whole_run() -> None:
    done = RequestEstimate(context_tokens=384, pre_call_tokens=10, call=None)
    assert memory_time(GPTJ, done, Strategy.PRESERVE, ENGINE) == pytest.approx(BEFORE)
