"""Overload against a running `lamps up` with an admission limit: at twice the rate it sustains
it serves what it admits and sheds the rest with RESOURCE_EXHAUSTED and a retry hint; when the
rate drops to half, shedding stops."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from lamps.model.cost import get_profile
from lamps.model.workload import load_trace
from tests.support.faults.driver import DriveSettings
from tests.support.faults.ledger import tally
from tests.support.faults.load import Phase, run_phases, sustainable_rate
from tests.support.lamps_up import LampsUp, lamps_up

TIME_SCALE = 20.0
# The trace's longest request holds 2,048 tokens of context: every request must fit.
KV_TOKENS = 2400
MAX_WAITING = 4
PROFILE = get_profile("gptj-6b-a100").with_kv_tokens(KV_TOKENS)


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LampsUp]:
    directory = tmp_path_factory.mktemp("load")
    args = (
        *("--port", "0", "--workers", "1", "--time-scale", str(TIME_SCALE)),
        *("--kv-cache-bytes", str(int(PROFILE.kv_bytes(KV_TOKENS)))),
        *("--max-waiting-requests", str(MAX_WAITING)),
    )
    with lamps_up(directory, *args) as running:
        yield running
        assert running.stop() == 0, running.stderr


async def test_overload_is_shed_with_a_retry_hint_and_shedding_stops_when_the_rate_drops(
    system: LampsUp,
) -> None:
    trace = load_trace("lamps_single_api")
    rate = sustainable_rate(trace, PROFILE, workers=1, policy="lamps")
    phases = [Phase("2x", 2 * rate, 40.0), Phase("0.5x", 0.5 * rate, 90.0)]
    settings = DriveSettings(time_scale=TIME_SCALE, key_prefix=uuid.uuid4().hex[:8])

    overload, recovery = await run_phases(system.target, None, trace, phases, settings)

    for phase in (overload, recovery):
        counts = tally(phase.logs)
        # What was admitted was served: every admitted request ended once, none lost.
        assert counts.lost == counts.duplicated == 0, counts
        assert counts.finished + counts.failed == counts.accepted, counts
        assert counts.accepted + counts.shed == counts.offered, counts
        assert counts.shed_with_hint == counts.shed, counts
    assert tally(overload.logs).shed > 0
    # Half the rate drains the queue: the second half of the lower rate's requests all got in.
    late = recovery.logs[len(recovery.logs) // 2 :]
    assert late
    assert all(log.accepted for log in late), [log.refused for log in late if not log.accepted]
