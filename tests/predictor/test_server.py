"""The Predictor service as a real process: trained heads on a tiny OPT, served over gRPC."""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from grpc import aio

from lamps.predictor.model_file import load_model
from lamps.v1 import predictor_pb2 as pb
from lamps.v1 import predictor_pb2_grpc as pb_grpc
from tests.support.processes import (
    REPO_ROOT,
    ServiceProcess,
    StartService,
    lamps_command,
    loopback_serve_args,
)

# Four prompts fill a batch at once, so no test waits out the long window; the window only
# matters to calls that arrive alone, which lets the batching test see four calls share a pass.
MAX_BATCH = 4
PROMPTS = [
    "please calculate the sum of numbers",
    "search the capital of this country",
    "kindly write me a long story",
    "now calculate numbers sum again",
]


def inputs(prompts: list[str], tools: tuple[str, ...] = ()) -> list[pb.PredictionInput]:
    return [
        pb.PredictionInput(request_id=f"r{i}", prompt=p, tools=tools) for i, p in enumerate(prompts)
    ]


@pytest.fixture(scope="module")
def served(
    trained_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    """One predictor serving the trained heads for the module (loading torch takes a while)."""
    log_path = tmp_path_factory.mktemp("served") / "predictor.log"
    argv = lamps_command(
        *loopback_serve_args("predictor"),
        *("--model", str(trained_model), "--max-batch", str(MAX_BATCH)),
        *("--batch-window-ms", "5000", "--max-prompt-chars", "200", "--max-inputs", "8"),
        *("--max-outcomes", "8"),
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMPS_")}
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            argv, stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT
        )
    service = ServiceProcess(proc=proc, log_path=log_path)
    service.wait_ready(timeout=90)
    yield service
    assert service.terminate() == 0, log_path.read_text()


@pytest.fixture
async def stub(served: ServiceProcess) -> AsyncIterator[pb_grpc.PredictorServiceAsyncStub]:
    async with aio.insecure_channel(served.target) as channel:
        yield pb_grpc.PredictorServiceStub(channel)


def scrape(service: ServiceProcess) -> dict[str, float]:
    """The service's metric samples, by series name with labels."""
    url = f"http://127.0.0.1:{service.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        lines = response.read().decode().splitlines()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in lines
        if line and not line.startswith("#")
    }


async def test_predicts_length_tool_and_duration_from_the_prompt(
    stub: pb_grpc.PredictorServiceAsyncStub, trained_model: Path
) -> None:
    response = await stub.Predict(pb.PredictRequest(inputs=inputs(PROMPTS)), timeout=30)
    assert response.model_version == load_model(trained_model).version
    math_, qa, story, math_again = response.predictions
    assert all(p.from_model for p in response.predictions)
    assert (math_.tool, math_.pre_call_bin, math_.pre_call_tokens) == ("math", 1, 15)
    assert (qa.tool, qa.pre_call_bin, qa.post_call_tokens) == ("qa", 5, 45)
    assert qa.call_duration_seconds == pytest.approx(0.69)  # Table 1's prior for qa
    assert 0.5 < qa.tool_probability <= 1.0
    assert (story.tool, story.pre_call_bin, story.call_duration_seconds) == ("", 30, 0.0)
    assert story.post_call_tokens == 0
    assert math_again.tool == "math"


async def test_tools_outside_the_requests_list_are_never_predicted(
    stub: pb_grpc.PredictorServiceAsyncStub,
) -> None:
    request = pb.PredictRequest(inputs=inputs(PROMPTS, tools=("math",)))
    response = await stub.Predict(request, timeout=30)
    assert {p.tool for p in response.predictions} <= {"math", ""}
    assert response.predictions[0].tool == "math"


async def test_calls_arriving_together_share_one_forward_pass(
    served: ServiceProcess, stub: pb_grpc.PredictorServiceAsyncStub
) -> None:
    before = scrape(served)
    calls = [stub.Predict(pb.PredictRequest(inputs=inputs([p])), timeout=30) for p in PROMPTS]
    responses = await asyncio.gather(*calls)
    assert [r.predictions[0].tool for r in responses] == ["math", "qa", "", "math"]
    after = scrape(served)
    # One more pass, carrying all four calls.
    assert (
        after["lamps_predictor_batch_calls_count"] - before["lamps_predictor_batch_calls_count"]
        == 1
    )
    assert after["lamps_predictor_batch_calls_sum"] - before["lamps_predictor_batch_calls_sum"] == 4
    assert after['lamps_predictor_predictions_total{from_model="true"}'] >= 4


@pytest.mark.parametrize(
    ("request_inputs", "message"),
    [
        ([], "inputs is empty: send at least one PredictionInput"),
        (inputs(["sum " * 60]), "prompt of 240 characters exceeds --max-prompt-chars=200"),
        (inputs(["sum"] * 9), "9 inputs in one call; at most 8"),
        # Bounds found by fuzzing.
        (
            [pb.PredictionInput(request_id="r" * 1_000_000, prompt="sum")],
            "request_id has 1000000 characters; at most 128",
        ),
        (inputs(["sum"], tools=("math",) * 65), "65 tools listed; at most 64"),
        (inputs(["sum"], tools=("m" * 1000,)), "tool names have at most 128 characters"),
    ],
)
async def test_bad_predict_requests_are_invalid_arguments(
    stub: pb_grpc.PredictorServiceAsyncStub, request_inputs: list[pb.PredictionInput], message: str
) -> None:
    with pytest.raises(aio.AioRpcError) as caught:
        await stub.Predict(pb.PredictRequest(inputs=request_inputs), timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (caught.value.details() or "")


@pytest.mark.parametrize(
    ("outcome", "message"),
    [
        (
            pb.Outcome(request_id="x", tool="weather", call_duration_seconds=1),
            "unknown tool 'weather'; known tools: chatbot, image_generation, math, qa,",
        ),
        (
            pb.Outcome(request_id="x", tool="qa", call_duration_seconds=-1),
            "must be a finite number from 0 to 86400, not -1.0",
        ),
        (pb.Outcome(request_id="x", tool="qa", call_duration_seconds=math.nan), "not nan"),
        # Found by fuzzing: a huge duration skewed the statistics, and a huge tool name quoted
        # whole made a status message too long for its trailer.
        (pb.Outcome(request_id="x", tool="qa", call_duration_seconds=1e308), "not 1e+308"),
        (
            pb.Outcome(request_id="x", tool="t" * 1_000_000, call_duration_seconds=1),
            "... (1000000 characters)'; known tools",
        ),
    ],
)
async def test_bad_outcomes_are_invalid_arguments_and_nothing_is_folded_in(
    stub: pb_grpc.PredictorServiceAsyncStub, outcome: pb.Outcome, message: str
) -> None:
    good = pb.Outcome(request_id="ok", tool="math", call_duration_seconds=5.0)
    with pytest.raises(aio.AioRpcError) as caught:
        await stub.ReportOutcome(pb.ReportOutcomeRequest(outcomes=[good, outcome]), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (caught.value.details() or "")
    response = await stub.Predict(pb.PredictRequest(inputs=inputs(PROMPTS)), timeout=30)
    assert response.predictions[0].call_duration_seconds == pytest.approx(9e-5)


async def test_an_outcome_batch_over_the_limit_is_an_invalid_argument(
    stub: pb_grpc.PredictorServiceAsyncStub,
) -> None:
    outcomes = [pb.Outcome(request_id="x", tool="qa", call_duration_seconds=1)] * 9
    with pytest.raises(aio.AioRpcError) as caught:
        await stub.ReportOutcome(pb.ReportOutcomeRequest(outcomes=outcomes), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "9 outcomes in one call; at most 8" in (caught.value.details() or "")


async def test_an_empty_outcome_batch_is_an_invalid_argument(
    stub: pb_grpc.PredictorServiceAsyncStub,
) -> None:
    with pytest.raises(aio.AioRpcError) as caught:
        await stub.ReportOutcome(pb.ReportOutcomeRequest(), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def predicted_duration(service: ServiceProcess, tool: str) -> float:
    async with aio.insecure_channel(service.target) as channel:
        stub = pb_grpc.PredictorServiceStub(channel)
        request = pb.PredictRequest(inputs=[pb.PredictionInput(prompt="p", tools=[tool])])
        response = await stub.Predict(request, timeout=10)
    (prediction,) = response.predictions
    assert not prediction.from_model
    assert prediction.tool == tool
    return prediction.call_duration_seconds


async def report(service: ServiceProcess, *outcomes: pb.Outcome) -> int:
    async with aio.insecure_channel(service.target) as channel:
        stub = pb_grpc.PredictorServiceStub(channel)
        response = await stub.ReportOutcome(pb.ReportOutcomeRequest(outcomes=outcomes), timeout=10)
    return response.accepted


async def test_without_a_model_it_serves_durations_that_outcomes_update(
    start_service: StartService,
) -> None:
    service = start_service(["predictor"])
    assert await predicted_duration(service, "chatbot") == pytest.approx(28.6)
    finished = pb.Outcome(request_id="a", pre_call_tokens=12)  # no tool: counted, not timed
    assert (
        await report(
            service,
            pb.Outcome(request_id="b", tool="chatbot", call_duration_seconds=50.6),
            finished,
        )
        == 2
    )
    assert await predicted_duration(service, "chatbot") == pytest.approx((10 * 28.6 + 50.6) / 11)
    assert any("no --model" in r["msg"] for r in service.records())
    metrics = scrape(service)
    assert metrics['lamps_predictor_outcomes_total{tool="none"}'] == 1
    assert metrics['lamps_predictor_tool_duration_observations{tool="chatbot"}'] == 1


async def test_durations_persist_in_redis_across_a_restart(
    start_service: StartService, redis_server: str
) -> None:
    env = {"LAMPS_REDIS_URL": redis_server}
    first = start_service(["predictor"], env=env)
    await report(first, pb.Outcome(request_id="a", tool="math", call_duration_seconds=0.01))
    learned = await predicted_duration(first, "math")
    assert learned == pytest.approx((10 * 9e-5 + 0.01) / 11)
    assert first.terminate() == 0
    second = start_service(["predictor"], env=env)
    assert await predicted_duration(second, "math") == pytest.approx(learned)


async def test_an_unreachable_redis_stops_start_up(start_service: StartService) -> None:
    service = start_service(["predictor", "--redis-url", "redis://127.0.0.1:1/0"], wait=False)
    assert await asyncio.to_thread(service.proc.wait, 30) == 1
    assert "cannot read duration statistics from Redis" in service.log_path.read_text()


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
async def test_a_missing_or_corrupt_model_stops_start_up_with_a_clear_message(
    damage: str, start_service: StartService, trained_model: Path, tmp_path: Path
) -> None:
    path = tmp_path / "model.safetensors"
    if damage == "corrupt":
        path.write_bytes((await asyncio.to_thread(trained_model.read_bytes))[:100])
    service = start_service(["predictor", "--model", str(path)], wait=False)
    assert await asyncio.to_thread(service.proc.wait, 60) == 1
    log = service.log_path.read_text()
    expected = "does not exist" if damage == "missing" else "is not a readable safetensors file"
    assert f"cannot start: model file {path} {expected}" in log
    assert "Traceback" not in log
