"""The admission gate's arithmetic: when it sheds, and the retry hint it gives."""

from __future__ import annotations

import grpc
import pytest

from lamps.scheduler.admission import MAX_RETRY_S, MIN_RETRY_S, AdmissionGate
from lamps.scheduler.validation import RequestError


def test_no_limit_never_sheds() -> None:
    AdmissionGate(0).check(10**9)


def test_below_the_limit_passes_and_at_it_sheds_with_an_actionable_message() -> None:
    gate = AdmissionGate(5)
    gate.check(4)
    with pytest.raises(RequestError) as shed:
        gate.check(5)
    assert shed.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "5 requests waiting for a worker (limit 5); retry in 60 s" in shed.value.message
    assert shed.value.retry_after_s == MAX_RETRY_S  # nothing admitted lately: no worker


def test_the_hint_follows_the_recent_admission_rate_within_bounds() -> None:
    gate = AdmissionGate(1000)
    for _ in range(100):  # 100 admissions within the last second: at least 100/s
        gate.admitted()
    # 500 requests beyond half the limit, drained at >= 100/s: at most 5 s.
    assert MIN_RETRY_S <= gate.retry_after_s(1000) <= 5
    assert gate.retry_after_s(501) == MIN_RETRY_S
