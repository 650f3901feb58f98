"""Each policy's rank and strategy choices, and the registry."""

from __future__ import annotations

import pytest

from lamps.model.cost import get_profile
from lamps.model.strategy import Strategy
from lamps.model.tools import ToolKind
from lamps.scheduler.policy import (
    POLICIES,
    CallEstimate,
    CallView,
    EngineView,
    RequestEstimate,
    RequestView,
    create_policy,
)
from lamps.scheduler.policy.policies import LampsPlus
from lamps.scheduler.policy.score import memory_time

GPTJ = get_profile("gptj-6b-a100")
ENGINE = EngineView(running_tokens=5000, decode_tokens=50, iteration_s=0.03, cpu_free_tokens=10**5)


def estimate(pre: int, duration: float, context: int = 500) -> RequestEstimate:
    call = CallEstimate(kind=ToolKind.CHATBOT, duration_s=duration, return_tokens=20)
    return RequestEstimate(context, pre, call, post_call_tokens=50)


def view(pre: int, duration: float, arrival: float = 0.0, **extra: object) -> RequestView:
    return RequestView(arrival, arrival, estimate(pre, duration), **extra)  # type: ignore[arg-type]


def test_registry_has_every_policy_and_refuses_unknown_names() -> None:
    assert list(POLICIES) == ["fcfs", "infercept", "sjf", "lamps", "oracle-lamps", "lamps-plus"]
    with pytest.raises(ValueError, match="known policies: fcfs, infercept"):
        create_policy("lifo", GPTJ)


def test_fcfs_discards_and_requeues_at_the_tail() -> None:
    fcfs = create_policy("fcfs", GPTJ)
    assert fcfs.starvation_threshold is None
    plan = fcfs.plan(RequestView(arrival_s=1.0, enqueued_s=9.0, estimate=estimate(10, 1)), ENGINE)
    assert plan.rank == 9.0
    call = CallView(context_tokens=600, kind=ToolKind.QA, predicted_duration_s=0.7)
    assert fcfs.at_intercept(call, plan.strategy, ENGINE).strategy is Strategy.DISCARD


def test_infercept_keeps_arrival_order_and_revises_online() -> None:
    infercept = create_policy("infercept", GPTJ)
    plan = infercept.plan(RequestView(1.0, 9.0, estimate(10, 1)), ENGINE)
    assert plan.rank == 1.0
    call = CallView(context_tokens=1000, kind=ToolKind.CHATBOT, predicted_duration_s=30.0)
    first = infercept.at_intercept(call, plan.strategy, ENGINE)
    assert first.strategy is Strategy.PRESERVE  # nothing has been waited for yet
    assert first.revisit_after_s is not None
    later = CallView(1000, ToolKind.CHATBOT, 30.0, elapsed_s=first.revisit_after_s * 1.01)
    assert infercept.revisit(later, Strategy.PRESERVE, ENGINE).strategy is Strategy.SWAP


def test_lamps_uses_predictions_and_never_the_truth() -> None:
    lamps = create_policy("lamps", GPTJ)
    request = view(100, 20.0, truth=estimate(400, 0.001))
    plan = lamps.plan(request, ENGINE)
    assert plan.strategy is Strategy.SWAP  # a 20 s call of 600 tokens: swap is cheapest
    assert plan.rank == pytest.approx(memory_time(GPTJ, request.estimate, Strategy.SWAP, ENGINE))
    short_call = lamps.plan(view(100, 1e-4), ENGINE)
    assert short_call.strategy is Strategy.PRESERVE


def test_lamps_ranks_smaller_memory_time_first() -> None:
    lamps = create_policy("lamps", GPTJ)
    short = lamps.plan(view(20, 1e-4), ENGINE)
    long = lamps.plan(view(480, 1e-4), ENGINE)
    assert short.rank < long.rank


def test_oracle_lamps_reads_the_truth_and_refuses_without_it() -> None:
    oracle = create_policy("oracle-lamps", GPTJ)
    truth = estimate(400, 0.001)
    plan = oracle.plan(view(100, 20.0, truth=truth), ENGINE)
    assert plan.rank == pytest.approx(memory_time(GPTJ, truth, Strategy.PRESERVE, ENGINE))
    with pytest.raises(ValueError, match="true lengths"):
        oracle.plan(view(100, 20.0), ENGINE)
    call = CallView(1000, ToolKind.MATH, 20.0, true_duration_s=1e-4)
    assert oracle.at_intercept(call, Strategy.SWAP, ENGINE).strategy is Strategy.PRESERVE


def test_sjf_ranks_by_predicted_output() -> None:
    sjf = create_policy("sjf", GPTJ)
    assert sjf.plan(view(30, 1.0), ENGINE).rank == 80.0
    assert sjf.plan(view(300, 1.0), ENGINE).rank == 350.0


def test_lamps_plus_chooses_again_at_the_intercept_from_the_true_context() -> None:
    plus = create_policy("lamps-plus", GPTJ)
    assert plus.starvation_threshold is None
    # Planned Preserve from a short prediction, but the true context is large and the call long.
    call = CallView(context_tokens=1800, kind=ToolKind.CHATBOT, predicted_duration_s=25.0)
    assert plus.at_intercept(call, Strategy.PRESERVE, ENGINE).strategy is Strategy.SWAP
    tight = EngineView(5000, 50, 0.03, cpu_free_tokens=100)
    assert plus.at_intercept(call, Strategy.SWAP, tight).strategy is Strategy.DISCARD
    short = CallView(context_tokens=500, kind=ToolKind.QA, predicted_duration_s=0.05)
    decision = plus.at_intercept(short, Strategy.PRESERVE, ENGINE)
    assert decision.strategy is Strategy.PRESERVE
    assert decision.revisit_after_s == pytest.approx(0.05)
    overrun = CallView(500, ToolKind.QA, 0.05, elapsed_s=60.0)
    assert plus.revisit(overrun, Strategy.PRESERVE, ENGINE).strategy is not Strategy.PRESERVE


def test_lamps_plus_ages_waiting_requests() -> None:
    plus = LampsPlus(GPTJ, aging_token_seconds=300.0)
    early = plus.plan(view(100, 1.0, arrival=0.0), ENGINE)
    late = plus.plan(view(100, 1.0, arrival=10.0), ENGINE)
    assert late.rank - early.rank == pytest.approx(3000.0)
