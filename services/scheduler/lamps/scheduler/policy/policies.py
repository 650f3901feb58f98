"""The scheduling policies, one interface, chosen by name (`create_policy`).

A policy answers three questions and nothing else, from plain values, with no I/O or clock:
- `plan`: where a request goes in the waiting queue (its rank; smaller runs first), and the
  strategy planned for its next tool call; asked at arrival and each time it re-enters the queue.
- `at_intercept`: the strategy to apply when the request stops at a tool call, and optionally when
  to ask again (`revisit_after_s`) while the call runs.
- `revisit`: the same question later in the call, with the time the call has run so far.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from lamps.model.cost import CostModel
from lamps.model.strategy import Strategy
from lamps.scheduler.policy.estimates import CallView, EngineView, RequestEstimate, RequestView
from lamps.scheduler.policy.score import memory_time
from lamps.scheduler.policy.waste import wastes

# LAMPS' starvation guard (PAPER.md section 7): passed over this many times, a request moves to
# the head lane.
DEFAULT_STARVATION_THRESHOLD = 100
# lamps-plus: how much score (token-seconds of KV) one second of waiting is worth.
DEFAULT_AGING_TOKEN_SECONDS = 300.0


@dataclass(frozen=True, slots=True)
class Plan:
    rank: float
    strategy: Strategy


@dataclass(frozen=True, slots=True)
class Decision:
    strategy: Strategy
    revisit_after_s: float | None = None


class Policy(ABC):
    """A scheduling policy (see the module docstring)."""

    name: ClassVar[str]
    description: ClassVar[str]
    needs_truth: ClassVar[bool] = False

    def __init__(
        self, cost: CostModel, starvation_threshold: int | None = DEFAULT_STARVATION_THRESHOLD
    ) -> None:
        self.cost = cost
        self.starvation_threshold = starvation_threshold

    @abstractmethod
    def plan(self, request: RequestView, engine: EngineView) -> Plan: ...

    def at_intercept(self, call: CallView, planned: Strategy, engine: EngineView) -> Decision:
        return Decision(planned)

    def revisit(self, call: CallView, current: Strategy, engine: EngineView) -> Decision:
        return Decision(current)

    def min_waste(self, context_tokens: int, duration_s: float, engine: EngineView) -> Strategy:
        return wastes(
            self.cost,
            context_tokens,
            duration_s,
            running_tokens=engine.running_tokens,
            decode_tokens=engine.decode_tokens,
            cpu_free_tokens=engine.cpu_free_tokens,
        ).cheapest()

    def _elapsed_decision(self, call: CallView, engine: EngineView) -> Decision:
        """InferCept's online rule: the call is assumed to last as long as it has run so far;
        keep the KV while that is cheapest and ask again when it stops being so."""
        found = wastes(
            self.cost,
            call.context_tokens,
            call.elapsed_s,
            running_tokens=engine.running_tokens,
            decode_tokens=engine.decode_tokens,
            cpu_free_tokens=engine.cpu_free_tokens,
        )
        strategy = found.cheapest()
        if strategy is not Strategy.PRESERVE:
            return Decision(strategy)
        crossover = found.crossover_s(call.context_tokens, self.cost)
        return Decision(strategy, revisit_after_s=max(crossover - call.elapsed_s, 1e-3))


class Fcfs(Policy):
    name = "fcfs"
    description = "vLLM: first come first served, Discard at every call, re-queued at the tail"

    def __init__(self, cost: CostModel, starvation_threshold: int | None = None) -> None:
        super().__init__(cost, None)

    def plan(self, request: RequestView, engine: EngineView) -> Plan:
        return Plan(rank=request.enqueued_s, strategy=Strategy.DISCARD)


class InferCept(Policy):
    name = "infercept"
    description = "FCFS by arrival; the least-waste strategy chosen online while each call runs"

    def __init__(self, cost: CostModel, starvation_threshold: int | None = None) -> None:
        super().__init__(cost, None)

    def plan(self, request: RequestView, engine: EngineView) -> Plan:
        return Plan(rank=request.arrival_s, strategy=Strategy.PRESERVE)

    def at_intercept(self, call: CallView, planned: Strategy, engine: EngineView) -> Decision:
        return self._elapsed_decision(call, engine)

    def revisit(self, call: CallView, current: Strategy, engine: EngineView) -> Decision:
        return self._elapsed_decision(call, engine)


class ShortestJobFirst(Policy):
    name = "sjf"
    description = "shortest predicted output first; LAMPS' predicted strategy per call"

    def plan(self, request: RequestView, engine: EngineView) -> Plan:
        estimate = request.estimate
        return Plan(
            rank=float(estimate.pre_call_tokens + estimate.post_call_tokens),
            strategy=_predicted_strategy(self, estimate, engine),
        )


class Lamps(Policy):
    name = "lamps"
    description = "LAMPS as published: predicted strategy at arrival, memory x time rank"

    def plan(self, request: RequestView, engine: EngineView) -> Plan:
        return _lamps_plan(self, request.estimate, engine)


class OracleLamps(Policy):
    name = "oracle-lamps"
    description = "LAMPS with the true lengths and call durations: the limit to measure against"
    needs_truth = True

    def plan(self, request: RequestView, engine: EngineView) -> Plan:
        if request.truth is None:
            raise ValueError("oracle-lamps needs the true lengths, which only a replay knows")
        return _lamps_plan(self, request.truth, engine)

    def at_intercept(self, call: CallView, planned: Strategy, engine: EngineView) -> Decision:
        duration = call.true_duration_s
        if duration is None:
            raise ValueError("oracle-lamps needs the true call duration")
        return Decision(self.min_waste(call.context_tokens, duration, engine))


class LampsPlus(Policy):
    name = "lamps-plus"
    description = (
        "LAMPS' rank with aging instead of a starvation lane; at the intercept the strategy is "
        "chosen again from the true context and the free swap space, and revised online if the "
        "call outlasts its prediction"
    )

    def __init__(
        self,
        cost: CostModel,
        starvation_threshold: int | None = None,
        aging_token_seconds: float = DEFAULT_AGING_TOKEN_SECONDS,
    ) -> None:
        # Aging replaces the lane: a hard lane turns into FIFO whenever the queue stays long,
        # which is exactly when ranking pays.
        super().__init__(cost, None)
        self.aging = aging_token_seconds

    def plan(self, request: RequestView, engine: EngineView) -> Plan:
        plan = _lamps_plan(self, request.estimate, engine)
        # Waiting lowers the rank at `aging` token-seconds of score per second since arrival;
        # the same slope for every request keeps the key static: score + aging * arrival.
        tokens = plan.rank / self.cost.kv_bytes_per_token
        return Plan(rank=tokens + self.aging * request.arrival_s, strategy=plan.strategy)

    def at_intercept(self, call: CallView, planned: Strategy, engine: EngineView) -> Decision:
        strategy = self.min_waste(call.context_tokens, call.predicted_duration_s, engine)
        if strategy is not Strategy.PRESERVE:
            return Decision(strategy)
        return Decision(strategy, revisit_after_s=max(call.predicted_duration_s, 1e-3))

    def revisit(self, call: CallView, current: Strategy, engine: EngineView) -> Decision:
        # The call outlived its prediction: fall back on InferCept's online estimate.
        return self._elapsed_decision(call, engine)


def _predicted_strategy(policy: Policy, estimate: RequestEstimate, engine: EngineView) -> Strategy:
    if estimate.call is None:
        return Strategy.PRESERVE
    return policy.min_waste(estimate.context_at_call, estimate.call.duration_s, engine)


def _lamps_plan(policy: Policy, estimate: RequestEstimate, engine: EngineView) -> Plan:
    strategy = _predicted_strategy(policy, estimate, engine)
    return Plan(rank=memory_time(policy.cost, estimate, strategy, engine), strategy=strategy)


POLICIES: dict[str, Callable[..., Policy]] = {
    cls.name: cls for cls in (Fcfs, InferCept, ShortestJobFirst, Lamps, OracleLamps, LampsPlus)
}


def create_policy(
    name: str, cost: CostModel, starvation_threshold: int | None = DEFAULT_STARVATION_THRESHOLD
) -> Policy:
    """The policy called `name`; a ValueError naming the known policies otherwise."""
    try:
        factory = POLICIES[name]
    except KeyError:
        known = ", ".join(POLICIES)
        raise ValueError(f"unknown policy {name!r}; known policies: {known}") from None
    return factory(cost, starvation_threshold)
