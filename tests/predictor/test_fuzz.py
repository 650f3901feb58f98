"""Hostile Predict calls against a predictor that runs a model (tests/fuzz fuzzes one without):
prompts of odd text, huge or invalid UTF-8, long tool lists, reach the tokenizer and the forward
pass, which must answer a prediction or INVALID_ARGUMENT, never an error of its own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf.descriptor import MethodDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.fuzz import (
    PREDICTOR,
    SERVER_FAULTS,
    FuzzTarget,
    Rpc,
    call,
    fuzz_inputs,
    is_expected,
    is_serving,
    open_channel,
)
from tests.support.processes import (
    ServiceProcess,
    lamps_command,
    loopback_serve_args,
    spawn_service,
)


@pytest.fixture(scope="module")
def predictor_with_model(
    trained_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    """A predictor with the trained heads that batches nothing (each call runs at once)."""
    log_path = tmp_path_factory.mktemp("fuzz") / "predictor.log"
    argv = lamps_command(
        *loopback_serve_args("predictor"),
        *("--model", str(trained_model), "--batch-window-ms", "0"),
    )
    service = spawn_service(argv, log_path)
    service.wait_ready(timeout=90)
    yield service
    assert service.terminate() == 0, log_path.read_text()


@pytest.mark.parametrize("method", list(PREDICTOR.methods), ids=lambda m: m.name)
def test_fuzzed_calls_with_a_model_get_a_prediction_or_invalid_argument(
    predictor_with_model: ServiceProcess, method: MethodDescriptor
) -> None:
    rpc = Rpc(FuzzTarget(predictor_with_model.target, (PREDICTOR,)), method)
    with open_channel(predictor_with_model.target) as channel:

        @settings(
            max_examples=30,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(data=st.data())
        def fuzz(data: st.DataObject) -> None:
            fuzz_input = data.draw(fuzz_inputs(rpc.method))
            outcome = call(channel, rpc, fuzz_input)
            assert outcome.code not in SERVER_FAULTS, outcome
            assert is_expected(rpc.method, fuzz_input, outcome), outcome

        fuzz()
        assert is_serving(channel, PREDICTOR.full_name)
    errors = [r for r in predictor_with_model.records() if r["level"] == "ERROR"]
    assert errors == []
