"""InferCept's waste equations against values worked by hand (GPT-J: a = 0.0408, c = 16.92)."""

from __future__ import annotations

import pytest

from lamps.model.cost import get_profile
from lamps.model.strategy import Strategy
from lamps.scheduler.policy.waste import (
    discard_waste,
    preserve_waste,
    recompute_chunk,
    swap_waste,
    wastes,
)

GPTJ = get_profile("gptj-6b-a100")
M = 458_752


def test_preserve_waste_is_duration_times_context_memory() -> None:
    assert preserve_waste(GPTJ, 1000, 2.0) == pytest.approx(2000 * M)


def test_recompute_chunk_fills_the_iteration_up_to_saturation() -> None:
    assert recompute_chunk(GPTJ, 84) == 300
    assert recompute_chunk(GPTJ, 500) == 1


def test_chunked_discard_waste() -> None:
    # 4 chunks of 250: own T(1000) * 1000 / 2 = 28.86, others 4 * T(250) * 5000 = 542.4.
    assert discard_waste(GPTJ, 1000, 5000, 84) == pytest.approx((28.86 + 542.4) * M)
    assert discard_waste(GPTJ, 0, 5000, 84) == 0.0


def test_swap_waste_is_two_transfers_stalling_the_batch() -> None:
    transfer = 1000 * M / 25e9
    assert swap_waste(GPTJ, 1000, 6000) == pytest.approx(2 * transfer * 6000 * M)


def test_min_waste_choice_and_crossover() -> None:
    found = wastes(GPTJ, 1000, 2.0, running_tokens=5000, decode_tokens=84, cpu_free_tokens=10_000)
    assert found.cheapest() is Strategy.SWAP
    # Preserve stops paying once the call has run longer than swap's waste per token.
    assert found.crossover_s(1000, GPTJ) == pytest.approx(2 * 1000 * M / 25e9 * 6000 / 1000)
    short = wastes(GPTJ, 1000, 1e-4, running_tokens=5000, decode_tokens=84, cpu_free_tokens=0)
    assert short.swap is None
    assert short.cheapest() is Strategy.PRESERVE
    no_swap = wastes(GPTJ, 1000, 2.0, running_tokens=5000, decode_tokens=84, cpu_free_tokens=999)
    assert no_swap.cheapest() is Strategy.DISCARD


def test_zero_length_calls_cost_nothing_to_preserve() -> None:
    found = wastes(GPTJ, 500, 0.0, running_tokens=0, decode_tokens=0, cpu_free_tokens=10**6)
    assert found.preserve == 0.0
    assert found.cheapest() is Strategy.PRESERVE
