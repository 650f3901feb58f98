"""The scheduler's predictor client against a real predictor served in this process."""

from __future__ import annotations

from lamps.predictor import metrics as predictor_metrics
from lamps.scheduler import metrics
from lamps.scheduler.clients import MAX_OUTCOMES_PER_CALL, PredictorClient
from lamps.scheduler.jobs import Outcome


def _sample(counter: object, **labels: str) -> float:
    return float(counter.labels(**labels)._value.get())  # type: ignore[attr-defined]


async def test_a_backlog_of_outcomes_goes_out_in_calls_the_predictor_accepts(
    predictor: str,
) -> None:
    # The predictor refuses a call of more than --max-outcomes (4096 by default); a backlog
    # larger than that must not be dropped whole.
    client = PredictorClient(predictor, token=None, tls=None, timeout_s=10)
    backlog = 4 * MAX_OUTCOMES_PER_CALL + 1
    folded = _sample(predictor_metrics.OUTCOMES, tool="none")
    dropped = metrics.OUTCOMES_DROPPED._value.get()
    for index in range(backlog):
        client.report(f"r{index}", [Outcome("", 0.0, 5, 0)])
    await client.close()
    assert metrics.OUTCOMES_DROPPED._value.get() == dropped
    assert _sample(predictor_metrics.OUTCOMES, tool="none") - folded == backlog
