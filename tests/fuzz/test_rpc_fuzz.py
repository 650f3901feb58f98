"""Every RPC of every service, fed hostile bytes: oversized fields, invalid UTF-8, huge repeated
fields, out-of-range enums, unknown fields, wrong wire types, truncated messages.

Each RPC must answer only as `is_expected` allows (never UNKNOWN or INTERNAL), its server
must stay up and SERVING, and every request the fuzzing got accepted must end once cancelled,
leaving the queue empty and the real worker's KV cache as it was.
"""

from __future__ import annotations

import os

import pytest
from google.protobuf.descriptor import MethodDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lamps.client import Client, RequestState
from tests.fuzz.conftest import FuzzSystem, real_worker, wait_until_idle
from tests.support.fuzz import (
    GATEWAY,
    PREDICTOR,
    SCHEDULER,
    SERVER_FAULTS,
    TOOL_RUNNER,
    Rpc,
    call,
    fuzz_inputs,
    is_expected,
    is_serving,
    lamps_targets,
    open_channel,
    run_fuzz,
    settle,
)
from tests.support.system import CLIENT_TOKEN, CLUSTER_TOKEN

METHODS = [m for s in (SCHEDULER, GATEWAY, PREDICTOR, TOOL_RUNNER) for m in s.methods]
# Enough to meet every kind of hostile value in a suite run; FUZZ_EXAMPLES=500 hunts further.
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.full_name)
def test_fuzzed_calls_get_only_the_expected_codes_and_leak_nothing(
    fuzz_system: FuzzSystem, method: MethodDescriptor
) -> None:
    service = method.containing_service.full_name
    rpc = Rpc(fuzz_system.target(service), method)
    accepted: list[str] = []
    process = fuzz_system.process_of(service)
    logged = len(process.records())
    with open_channel(rpc.target.address) as channel:

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(data=st.data())
        def fuzz(data: st.DataObject) -> None:
            fuzz_input = data.draw(fuzz_inputs(method, fuzz_system.accepted))
            outcome = call(channel, rpc, fuzz_input)
            accepted.extend(outcome.accepted)
            assert outcome.code not in SERVER_FAULTS, outcome
            assert is_expected(method, fuzz_input, outcome), outcome

        try:
            fuzz()
        finally:
            fuzz_system.accepted.extend(accepted)
        assert process.proc.poll() is None
        assert is_serving(channel, service)
    # An exception a handler swallowed (and logged) is a bug too.
    assert [r for r in process.records()[logged:] if r["level"] == "ERROR"] == []
    with open_channel(fuzz_system.system.target) as channel:
        leaked = settle(channel, fuzz_system.target(SCHEDULER.full_name), accepted)
    assert not leaked
    status = wait_until_idle(fuzz_system)
    assert (status.queued, status.starved, status.running, status.in_tool) == (0, 0, 0, 0)
    assert real_worker(status).kv.free_blocks == fuzz_system.baseline_free_blocks


def test_the_real_worker_still_serves_after_fuzzed_workers(fuzz_system: FuzzSystem) -> None:
    with Client(fuzz_system.system.target, token=CLIENT_TOKEN, timeout_s=60) as client:
        result = client.complete("What is 2+3?", max_tokens=8, model="sim")
    assert result.state is RequestState.FINISHED, result.error_message
    assert result.usage.completion_tokens == 8


def test_the_seeded_sweep_covers_every_rpc_and_finds_nothing_wrong(
    fuzz_system: FuzzSystem,
) -> None:
    system = fuzz_system.system
    assert system.tool_runner is not None
    targets = lamps_targets(
        system.target,
        fuzz_system.predictor.target,
        system.tool_runner.target,
        client_token=CLIENT_TOKEN,
        cluster_token=CLUSTER_TOKEN,
    )
    rows = run_fuzz(targets, 4, seed=11)
    assert [(r.service, r.method) for r in rows] == [
        (m.containing_service.full_name, m.name) for m in METHODS
    ]
    assert all(r.inputs == 4 and r.serving for r in rows)
    assert [r for r in rows if r.server_errors or r.unexpected or r.leaked] == []
