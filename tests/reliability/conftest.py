"""Fixtures of the reliability tests: one `lamps up` per module, and the check every fault run
must pass."""

from __future__ import annotations

from tests.support.faults.injectors import FaultRun


def assert_nothing_lost_or_duplicated(run: FaultRun) -> None:
    """Every request was accepted and ended exactly once, finished or failed with a message;
    none was lost or duplicated."""
    counts = run.tally
    context = f"{run.fault} ({run.injected}): {counts}"
    assert counts.offered > 0, context
    assert counts.accepted == counts.offered, context
    assert counts.lost == 0, context
    assert counts.duplicated == 0, context
    assert counts.finished + counts.failed == counts.accepted, context
    for log in run.logs:
        if log.failed:
            assert log.error, f"{log.key} ended {log.state} without a message"
