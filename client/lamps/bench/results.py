"""What a live replay measured, in the shape of the simulator's results (`source: live`).

Latencies are measured by the client, from the moment a request was sent to its last event, and
converted to the engines' time with the system's time scale, so they compare with `lamps simulate`
directly. What only the simulator can observe (KV held idle, preemptions, the starved lane) is None.
"""

from __future__ import annotations

from collections.abc import Sequence

from lamps.bench.runner import Outcome
from lamps.simulator.metrics import RunResult, latency_columns


def latencies(outcomes: Sequence[Outcome], time_scale: float) -> list[float]:
    """End-to-end latency of every finished request, in engine seconds."""
    return [(o.ended_s - o.sent_s) * time_scale for o in outcomes if o.finished]


def summarize_live(
    policy: str, rate: float, outcomes: Sequence[Outcome], time_scale: float, wall_s: float
) -> RunResult:
    """One row of results from a live replay of `outcomes` at `rate` requests per engine second."""
    done = [outcome for outcome in outcomes if outcome.finished]
    latency = latencies(outcomes, time_scale)
    serving = [
        total - outcome.arrival.spec.tool_time_s
        for total, outcome in zip(latency, done, strict=True)
    ]
    ttft = [
        (outcome.first_token_s - outcome.sent_s) * time_scale
        for outcome in done
        if outcome.first_token_s is not None
    ]
    span = max((max((o.ended_s for o in outcomes), default=0.0)) * time_scale, 1e-9)
    return RunResult(
        policy=policy,
        rate=rate,
        requests=len(outcomes),
        finished=len(done),
        rejected=len(outcomes) - len(done),
        **latency_columns(latency, serving, ttft),
        throughput_rps=len(done) / span,
        makespan_s=span,
        idle_held_gb=None,
        recompute_share=None,
        preemptions=None,
        starved=None,
        wall_s=wall_s,
        source="live",
        failed=len(outcomes) - len(done),
    )
