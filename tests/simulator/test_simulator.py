"""The simulator's invariants, over random workloads, and the gain LAMPS exists for."""

from __future__ import annotations

import statistics
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lamps.model.cost import CostModel, get_profile
from lamps.model.engine import EngineModel, Iteration
from lamps.model.strategy import Strategy
from lamps.model.tools import ToolKind
from lamps.model.workload import Arrival, RequestSpec, SegmentSpec, ToolCallSpec
from lamps.scheduler.policy import POLICIES, CallView, Decision, EngineView, create_policy
from lamps.scheduler.policy.policies import Fcfs
from lamps.simulator.simulator import Fit, Job, Placement, Simulator


class PreserveAlways(Fcfs):
    """Keeps every KV through its calls: the fastest a request can run alone."""

    name = "preserve-always"

    def at_intercept(self, call: CallView, planned: Strategy, engine: EngineView) -> Decision:
        return Decision(Strategy.PRESERVE)


def spec(request_id: str, prompt: int, segments: list[tuple[int, float, int]]) -> RequestSpec:
    """A request from (output tokens, call seconds, returned tokens); the last has no call."""
    parts = [
        SegmentSpec(output, ToolCallSpec(ToolKind.QA, duration, returned))
        for output, duration, returned in segments[:-1]
    ]
    parts.append(SegmentSpec(segments[-1][0], None))
    return RequestSpec(request_id, prompt, tuple(parts))


segments_strategy = st.lists(
    st.tuples(
        st.integers(1, 60),
        st.sampled_from([0.0, 1e-4, 0.05, 0.5, 3.0]),
        st.integers(0, 30),
    ),
    min_size=1,
    max_size=4,
)
workload_strategy = st.lists(
    st.tuples(st.floats(0.0, 3.0), st.integers(1, 600), segments_strategy),
    min_size=1,
    max_size=12,
)


def arrivals_of(workload: list[tuple[float, int, list[tuple[int, float, int]]]]) -> list[Arrival]:
    ordered = sorted(workload, key=lambda item: item[0])
    return [
        Arrival(time, f"r{index}", spec(f"r{index}", prompt, segments))
        for index, (time, prompt, segments) in enumerate(ordered)
    ]


def watch_memory(simulator: Simulator) -> list[str]:
    """Check every engine's memory after each iteration; returns the violations seen."""
    violations: list[str] = []

    def wrap(engine: EngineModel) -> Callable[[float], Iteration | None]:
        step = engine.step

        def checked(now: float) -> Iteration | None:
            result = step(now)
            if engine.used > engine.capacity or engine.cpu_used > engine.cost.cpu_swap_tokens:
                violations.append(f"{engine.used}/{engine.capacity} at {now}")
            return result

        return checked

    for engine in simulator.engines:
        engine.step = wrap(engine)  # type: ignore[method-assign,assignment]
    return violations


def latency(job: Job) -> float:
    assert job.finish_s is not None
    return job.finish_s - job.arrival.time_s


def isolated_latency(arrival: Arrival, cost: CostModel) -> float:
    alone = Arrival(0.0, arrival.request_id, arrival.spec)
    (job,) = Simulator(PreserveAlways(cost), cost).run([alone])
    return latency(job)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    workload=workload_strategy,
    policy=st.sampled_from(list(POLICIES)),
    kv_tokens=st.sampled_from([700, 1500, 4000]),
    workers=st.sampled_from([1, 2]),
    placement=st.sampled_from(list(Placement)),
)
def test_no_request_is_lost_or_run_past_memory_or_faster_than_alone(
    workload: list[tuple[float, int, list[tuple[int, float, int]]]],
    policy: str,
    kv_tokens: int,
    workers: int,
    placement: Placement,
) -> None:
    cost = get_profile("gptj-6b-a100").with_kv_tokens(kv_tokens)
    arrivals = arrivals_of(workload)
    simulator = Simulator(create_policy(policy, cost), cost, workers=workers, placement=placement)
    violations = watch_memory(simulator)
    jobs = simulator.run(arrivals)  # raises if any request is left unfinished
    assert violations == []
    assert len(jobs) == len(arrivals)
    assert len({job.arrival.request_id for job in jobs}) == len(arrivals)
    for job in jobs:
        assert job.finish_s is not None
        if job.rejected:
            # Only a request whose context can never fit is refused.
            largest = job.arrival.spec.context_before(len(job.arrival.spec.segments) - 1)
            assert largest + job.arrival.spec.segments[-1].output_tokens > kv_tokens * 0.9
            continue
        assert job.first_token_s is not None
        assert job.segment == len(job.arrival.spec.segments) - 1
        assert len(job.strategies) == len(job.arrival.spec.calls)
        assert latency(job) >= isolated_latency(job.arrival, cost) - 1e-9
    for engine in simulator.engines:
        assert engine.used == 0
        assert engine.cpu_used == 0


def test_with_zero_length_calls_every_strategy_costs_about_the_same() -> None:
    cost = get_profile("gptj-6b-a100").with_kv_tokens(20_000)
    arrivals = [
        Arrival(index * 0.05, f"r{index}", spec(f"r{index}", 400, [(50, 0.0, 10)] * 3))
        for index in range(200)
    ]
    means = {}
    for policy in ("fcfs", "infercept", "lamps", "lamps-plus"):
        jobs = Simulator(create_policy(policy, cost), cost).run(arrivals)
        means[policy] = statistics.fmean(latency(job) for job in jobs)
    assert max(means.values()) < 3 * min(means.values()), means


def head_of_line_workload() -> list[Arrival]:
    """Long, memory-hungry requests with a long call arrive just before many short ones."""
    arrivals = []
    for index in range(6):
        long = spec(f"long{index}", 1500, [(400, 8.0, 20), (300, 0.0, 0)])
        arrivals.append(Arrival(index * 0.01, long.request_id, long))
    for index in range(60):
        short = spec(f"short{index}", 200, [(20, 0.01, 10), (20, 0.0, 0)])
        arrivals.append(Arrival(0.1 + index * 0.05, short.request_id, short))
    return arrivals


@pytest.mark.parametrize("policy", ["lamps", "lamps-plus", "oracle-lamps"])
def test_lamps_beats_fcfs_on_head_of_line_blocking(policy: str) -> None:
    cost = get_profile("gptj-6b-a100").with_kv_tokens(8000)
    results = {}
    for name in ("fcfs", "infercept", policy):
        jobs = Simulator(create_policy(name, cost), cost).run(head_of_line_workload())
        results[name] = statistics.fmean(latency(job) for job in jobs)
    assert results[policy] < results["fcfs"], results
    assert results[policy] < results["infercept"], results


@pytest.mark.parametrize(("fit", "engines_used"), [(Fit.SPREAD, 2), (Fit.BEST, 1)])
def test_a_global_queue_spreads_or_packs_requests_by_free_kv(fit: Fit, engines_used: int) -> None:
    cost = get_profile("gptj-6b-a100").with_kv_tokens(4000)
    simulator = Simulator(create_policy("fcfs", cost), cost, workers=2, fit=fit)
    arrivals = [Arrival(0.0, f"r{i}", spec(f"r{i}", 300, [(5, 0.0, 0)])) for i in range(2)]
    simulator.run(arrivals)
    assert sum(engine.iteration > 0 for engine in simulator.engines) == engines_used


def test_a_global_queue_uses_every_worker_under_load() -> None:
    cost = get_profile("gptj-6b-a100").with_kv_tokens(4000)
    simulator = Simulator(create_policy("lamps", cost), cost, workers=3)
    jobs = simulator.run(head_of_line_workload())
    assert all(job.finish_s is not None for job in jobs)
    assert all(engine.iteration > 0 for engine in simulator.engines)


def test_requests_larger_than_memory_are_rejected_not_stuck() -> None:
    cost = get_profile("gptj-6b-a100").with_kv_tokens(500)
    big = spec("big", 1000, [(10, 0.0, 0)])
    (job,) = Simulator(create_policy("lamps", cost), cost).run([Arrival(0.0, "big", big)])
    assert job.rejected
