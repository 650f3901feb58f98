"""Runs a grid of simulations (policies x rates) on one workload, for `lamps simulate`, the
benchmark reports and `lamps bench --compare-simulator`."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from lamps.cli.progress import Progress
from lamps.model.cost import CostModel
from lamps.model.workload import Trace, poisson_arrivals
from lamps.scheduler.policy import DEFAULT_STARVATION_THRESHOLD, create_policy
from lamps.simulator.metrics import RunResult, summarize
from lamps.simulator.predictors import PaperPredictor
from lamps.simulator.simulator import Fit, Placement, Simulator


@dataclass(frozen=True, slots=True)
class Scenario:
    """Everything a run depends on besides the policy and the rate."""

    trace: Trace
    cost: CostModel
    duration_s: float = 1800.0
    seed: int = 0
    workers: int = 1
    placement: Placement = Placement.GLOBAL
    fit: Fit = Fit.SPREAD
    prediction_error_pct: float = 0.0
    starvation_threshold: int | None = DEFAULT_STARVATION_THRESHOLD
    max_batched_tokens: int | None = None


def simulate(scenario: Scenario, policy_name: str, rate: float) -> RunResult:
    """One policy at one rate; the arrivals depend only on the seed, so policies see the same."""
    return simulate_latencies(scenario, policy_name, rate)[0]


def simulate_latencies(
    scenario: Scenario, policy_name: str, rate: float
) -> tuple[RunResult, list[float]]:
    """`simulate`, and the end-to-end latency of every finished request (for CDF plots)."""
    cost = scenario.cost
    policy = create_policy(policy_name, cost, scenario.starvation_threshold)
    arrivals = poisson_arrivals(scenario.trace, rate, scenario.duration_s, scenario.seed)
    simulator = Simulator(
        policy,
        cost,
        predictor=PaperPredictor(error_pct=scenario.prediction_error_pct, seed=scenario.seed),
        workers=scenario.workers,
        placement=scenario.placement,
        fit=scenario.fit,
        max_batched_tokens=scenario.max_batched_tokens,
    )
    started = time.perf_counter()
    jobs = simulator.run(arrivals)
    wall = time.perf_counter() - started
    latencies = [
        job.finish_s - job.arrival.time_s
        for job in jobs
        if not job.rejected and job.finish_s is not None
    ]
    return summarize(policy_name, rate, jobs, simulator.stats, cost, wall), latencies


def simulate_grid(
    scenario: Scenario,
    policies: Sequence[str],
    rates: Sequence[float],
    progress: Progress | None = None,
) -> list[RunResult]:
    """Every policy at every rate, in rate-major order; `progress(label, done_fraction)`."""
    for name in policies:
        create_policy(name, scenario.cost)  # fail before any run on an unknown name
    results: list[RunResult] = []
    total = len(policies) * len(rates)
    for rate in rates:
        for name in policies:
            if progress is not None:
                progress(f"{name} at {rate:g} req/s", len(results) / total)
            results.append(simulate(scenario, name, rate))
    if progress is not None:
        progress("done", 1.0)
    return results
