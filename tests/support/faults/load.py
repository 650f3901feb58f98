"""Overload: one stream of arrivals whose rate changes from phase to phase (2x what the system
sustains, then 0.5x), sent against a scheduler with an admission limit. Requests refused with
RESOURCE_EXHAUSTED are counted shed and not sent again, so the offered load stays as planned.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from lamps.model.cost import CostModel
from lamps.model.workload import Arrival, Trace, poisson_arrivals
from lamps.simulator.runner import Scenario, simulate
from tests.support.faults.driver import Connection, Driver, DriveSettings, Progress
from tests.support.faults.ledger import RequestLog, tally


@dataclass(frozen=True)
class Phase:
    """`duration_s` engine seconds of arrivals at `rate` requests per engine second."""

    name: str
    rate: float
    duration_s: float


@dataclass
class PhaseResult:
    """What happened to the requests sent during one phase."""

    phase: Phase
    logs: list[RequestLog]

    def row(self) -> dict[str, Any]:
        counts = tally(self.logs)
        return {
            "phase": self.phase.name,
            "rate": self.phase.rate,
            "duration_s": self.phase.duration_s,
            "offered": counts.offered,
            "admitted": counts.accepted,
            "shed": counts.shed,
            "shed_with_retry_hint": counts.shed_with_hint,
            "finished": counts.finished,
            "failed": counts.failed,
            "lost": counts.lost,
            "duplicated": counts.duplicated,
            "refused_otherwise": counts.unaccepted,
        }


def sustainable_rate(trace: Trace, cost: CostModel, workers: int, policy: str) -> float:
    """The simulator's throughput (requests per engine second) when saturated: a thousand
    requests arriving far faster than it can serve, so what it finishes per second (backlog
    included) is what it sustains."""
    scenario = Scenario(trace=trace, cost=cost, duration_s=20.0, workers=workers)
    return simulate(scenario, policy, rate=50.0).throughput_rps


def phased_arrivals(trace: Trace, phases: Sequence[Phase], seed: int) -> list[list[Arrival]]:
    """Each phase's Poisson arrivals, on one clock: a phase starts where the last one ended."""
    result: list[list[Arrival]] = []
    offset = 0.0
    for index, phase in enumerate(phases):
        arrivals = poisson_arrivals(trace, phase.rate, phase.duration_s, seed + index)
        result.append(
            [
                replace(a, time_s=a.time_s + offset, request_id=f"{phase.name}-{a.request_id}")
                for a in arrivals
            ]
        )
        offset += phase.duration_s
    return result


async def run_phases(
    target: str,
    token: str | None,
    trace: Trace,
    phases: Sequence[Phase],
    settings: DriveSettings,
    *,
    seed: int = 0,
    progress: Progress | None = None,
) -> list[PhaseResult]:
    """Send every phase's arrivals without shedding retries and split the outcome by phase."""
    per_phase = phased_arrivals(trace, phases, seed)
    connection = Connection(target, token)
    try:
        driver = Driver(connection, replace(settings, retry_shed=False))
        logs = await driver.replay([a for arrivals in per_phase for a in arrivals], progress)
    finally:
        await connection.close()
    results, start = [], 0
    for phase, arrivals in zip(phases, per_phase, strict=True):
        results.append(PhaseResult(phase, logs[start : start + len(arrivals)]))
        start += len(arrivals)
    return results


def per_interval(
    results: Sequence[PhaseResult], time_scale: float, interval_s: float = 5.0
) -> list[dict[str, float]]:
    """Admitted and shed requests per `interval_s` engine seconds of sending, over all phases."""
    admitted: Counter[int] = Counter()
    shed: Counter[int] = Counter()
    for result in results:
        for log in result.logs:
            bucket = int(log.sent_s * time_scale / interval_s)
            if log.accepted:
                admitted[bucket] += 1
            elif log.shed:
                shed[bucket] += 1
    end = max([*admitted, *shed], default=-1) + 1
    return [
        {"start_s": b * interval_s, "admitted": admitted[b], "shed": shed[b]} for b in range(end)
    ]


def shedding_stopped_after(
    results: Sequence[PhaseResult], phase_index: int, time_scale: float
) -> float | None:
    """Engine seconds into phase `phase_index` after which nothing sent was shed (None: the
    phase's last request was shed)."""
    logs = results[phase_index].logs
    if not logs or logs[-1].shed:
        return None
    begun = sum(r.phase.duration_s for r in results[:phase_index])
    shed_at = [log.sent_s * time_scale - begun for log in logs if log.shed]
    return max(max(shed_at, default=0.0), 0.0)
