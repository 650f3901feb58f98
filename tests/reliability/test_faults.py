"""Issue 11's faults, each injected into a running `lamps up` (two sim workers, a leading and a
standby scheduler) halfway through a replayed trace: whatever breaks, every request accepted
ends exactly once, nothing is lost and nothing is repeated or skipped in what clients see (the
harness: tests/support/faults)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from lamps.model.workload import Trace, load_trace, poisson_arrivals
from tests.reliability.conftest import assert_nothing_lost_or_duplicated
from tests.support.faults.driver import DriveSettings
from tests.support.faults.injectors import (
    DropClient,
    Fault,
    HangToolRunner,
    KillActiveScheduler,
    KillBusyWorker,
    KillPart,
    NoFault,
    run_with_fault,
)
from tests.support.lamps_up import LampsUp, lamps_up

TIME_SCALE = 20.0
WORKERS = 2
# About 24 requests per run: enough that a fault lands on requests in every state.
RATE = 4.0
DURATION_S = 6.0


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LampsUp]:
    directory = tmp_path_factory.mktemp("faults")
    args = (
        *("--port", "0", "--workers", str(WORKERS), "--schedulers", "2"),
        *("--time-scale", str(TIME_SCALE)),
    )
    with lamps_up(directory, *args) as running:
        yield running
        assert running.stop() == 0, running.stderr


@pytest.fixture(scope="module")
def trace() -> Trace:
    return load_trace("lamps_single_api")


FAULTS: list[Fault] = [
    NoFault(),
    KillActiveScheduler(),
    KillBusyWorker(),
    KillPart("redis", "SIGKILL Redis"),
    HangToolRunner(seconds=1.0),
    DropClient(times=2, interval_s=0.2),
]


@pytest.mark.parametrize("fault", FAULTS, ids=lambda fault: fault.name)
async def test_a_fault_mid_run_loses_and_repeats_nothing(
    system: LampsUp, trace: Trace, fault: Fault
) -> None:
    arrivals = poisson_arrivals(trace, RATE, DURATION_S, seed=FAULTS.index(fault))
    settings = DriveSettings(time_scale=TIME_SCALE, key_prefix=uuid.uuid4().hex[:8])

    run = await run_with_fault(
        system.target, None, system.endpoints, WORKERS, fault, arrivals, settings
    )

    assert_nothing_lost_or_duplicated(run)
