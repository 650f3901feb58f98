"""What a simulated (or live) run measured, in the shape `--json` writes."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TypedDict

from lamps.model.cost import CostModel
from lamps.simulator.simulator import Job, RunStats


@dataclass(frozen=True, slots=True)
class RunResult:
    """One policy at one rate. Latencies in seconds (of the engines' time when sped up); `serving`
    latency has tool time taken out."""

    policy: str
    rate: float
    requests: int
    finished: int
    rejected: int
    mean_latency_s: float
    p50_latency_s: float
    p99_latency_s: float
    mean_serving_latency_s: float
    p99_serving_latency_s: float
    mean_ttft_s: float
    p99_ttft_s: float
    throughput_rps: float
    makespan_s: float
    # What only the simulator observes (KV held idle, preemptions, the starved lane) is None in
    # rows measured on a live system.
    idle_held_gb: float | None
    recompute_share: float | None
    preemptions: int | None
    starved: int | None
    wall_s: float
    # "simulated" (lamps simulate) or "live" (lamps bench against a running system).
    source: str = "simulated"
    # Requests that ended in an error (live: refused, failed, or not finished in time).
    failed: int = 0

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def percentile(values: Sequence[float], fraction: float) -> float:
    """The `fraction` quantile by linear interpolation; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(
    policy: str,
    rate: float,
    jobs: Sequence[Job],
    stats: RunStats,
    cost: CostModel,
    wall_s: float,
) -> RunResult:
    done = [job for job in jobs if not job.rejected and job.finish_s is not None]
    latency = [job.finish_s - job.arrival.time_s for job in done if job.finish_s is not None]
    serving = [
        total - job.arrival.spec.tool_time_s for total, job in zip(latency, done, strict=True)
    ]
    ttft = [job.first_token_s - job.arrival.time_s for job in done if job.first_token_s is not None]
    span = max(stats.end_s, 1e-9)
    busy = max(stats.busy_s, 1e-9)
    return RunResult(
        policy=policy,
        rate=rate,
        requests=len(jobs),
        finished=len(done),
        rejected=len(jobs) - len(done),
        **latency_columns(latency, serving, ttft),
        throughput_rps=len(done) / span,
        makespan_s=stats.end_s,
        idle_held_gb=cost.kv_bytes(stats.held_token_seconds / span) / 1e9,
        recompute_share=cost.ms_per_token * stats.recompute_tokens / 1000.0 / busy,
        preemptions=stats.preemptions,
        starved=stats.starved,
        wall_s=wall_s,
    )


class LatencyColumns(TypedDict):
    mean_latency_s: float
    p50_latency_s: float
    p99_latency_s: float
    mean_serving_latency_s: float
    p99_serving_latency_s: float
    mean_ttft_s: float
    p99_ttft_s: float


def latency_columns(
    latency: Sequence[float], serving: Sequence[float], ttft: Sequence[float]
) -> LatencyColumns:
    """The mean and percentile columns of a result, from per-request seconds (simulated or
    live alike)."""
    return LatencyColumns(
        mean_latency_s=_mean(latency),
        p50_latency_s=percentile(latency, 0.5),
        p99_latency_s=percentile(latency, 0.99),
        mean_serving_latency_s=_mean(serving),
        p99_serving_latency_s=percentile(serving, 0.99),
        mean_ttft_s=_mean(ttft),
        p99_ttft_s=percentile(ttft, 0.99),
    )


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else 0.0
