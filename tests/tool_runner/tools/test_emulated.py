"""Emulated tools: durations with InferCept's means and deviations, text of the asked length."""

from __future__ import annotations

import math
import statistics

import pytest

from lamps.model.tools import MEAN_TOOL_OUTPUT_TOKENS, TOOL_STATS, ToolKind
from lamps.tool_runner.tools.emulated import (
    DurationSampler,
    EmulatedProfile,
    EmulatedTool,
    builtin_emulated_tools,
    output_text,
)
from lamps.v1 import common_pb2
from lamps.v1 import tool_runner_pb2 as pb
from tests.tool_runner.conftest import TIME_SCALE, RunningToolRunner

SAMPLES = 20_000
# Standard errors allowed either way; with a fixed seed the test is deterministic, and 4 standard
# errors would be exceeded by chance once in about 16,000 seeds.
TOLERANCE_SE = 4.0


def lognormal_kurtosis(mean: float, std: float) -> float:
    """E[(X - mean)^4] / std^4 of the log-normal with this mean and deviation."""
    s2 = math.log(1 + (std / mean) ** 2)
    return math.exp(4 * s2) + 2 * math.exp(3 * s2) + 3 * math.exp(2 * s2) - 3


@pytest.mark.parametrize("kind", list(ToolKind))
def test_sampled_durations_match_the_papers_mean_and_deviation(kind: ToolKind) -> None:
    stats = TOOL_STATS[kind]
    sampler = DurationSampler(EmulatedProfile.of(kind), seed=20241024)
    durations = [sampler.sample() for _ in range(SAMPLES)]
    mean, std = stats.duration_mean_s, stats.duration_std_s

    mean_se = std / math.sqrt(SAMPLES)
    assert abs(statistics.fmean(durations) - mean) < TOLERANCE_SE * mean_se

    # Var(sample variance) = std^4 (kurtosis - 1) / n; the delta method carries it to the std.
    std_se = std * math.sqrt((lognormal_kurtosis(mean, std) - 1) / SAMPLES) / 2
    assert abs(statistics.stdev(durations) - std) < TOLERANCE_SE * std_se
    assert min(durations) > 0


def test_one_seed_gives_one_sequence_per_tool() -> None:
    qa, chatbot = EmulatedProfile.of(ToolKind.QA), EmulatedProfile.of(ToolKind.CHATBOT)

    def draws(profile: EmulatedProfile, seed: int) -> list[float]:
        sampler = DurationSampler(profile, seed)
        return [sampler.sample() for _ in range(5)]

    assert draws(qa, 1) == draws(qa, 1)
    assert draws(qa, 1) != draws(qa, 2)
    # Tools draw from their own generators: their sequences are not shifted copies.
    scaled = [d / qa.duration_mean_seconds for d in draws(qa, 1)]
    assert scaled != [d / chatbot.duration_mean_seconds for d in draws(chatbot, 1)]


def test_output_is_one_word_per_token_and_deterministic() -> None:
    assert output_text(0) == ""
    assert len(output_text(50).split(" ")) == 50
    assert output_text(50) == output_text(50)
    assert output_text(3) == "the result of"


def test_there_is_one_emulated_tool_per_api_type() -> None:
    tools = builtin_emulated_tools(seed=0, time_scale=1.0)
    assert sorted(t.spec.name for t in tools) == sorted(f"emulated.{k.value}" for k in ToolKind)


async def test_an_explicit_duration_replaces_the_draw_and_is_scaled() -> None:
    tool = EmulatedTool(EmulatedProfile.of(ToolKind.CHATBOT), seed=0, time_scale=0.0)
    # 10 hours at time scale 0: no sleep at all, whatever the duration.
    text = await tool.call({"duration_seconds": 36_000, "output_tokens": 4})
    assert text == "the result of this"
    assert await tool.call({}) == output_text(MEAN_TOOL_OUTPUT_TOKENS)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("duration_mean_seconds", 0.0, "duration_mean_seconds must be a positive number"),
        ("duration_std_seconds", -1.0, "duration_std_seconds must not be negative"),
        ("output_tokens", 10**6, "output_tokens must be 0 to 8192"),
    ],
)
def test_a_profile_refuses_unusable_values(field: str, value: float, message: str) -> None:
    values: dict[str, float] = {
        "duration_mean_seconds": 1.0,
        "duration_std_seconds": 0.5,
        field: value,
    }
    with pytest.raises(ValueError, match=message):
        EmulatedProfile(name="x", description="", **values)  # type: ignore[arg-type]


async def test_an_emulated_call_through_the_server_sleeps_the_scaled_duration(
    tool_runner: RunningToolRunner,
) -> None:
    duration = 5.0
    result = await tool_runner.execute("emulated.qa", {"duration_seconds": duration, "q": "why"})
    assert result.error.code == common_pb2.TOOL_ERROR_CODE_UNSPECIFIED
    assert result.output == output_text(MEAN_TOOL_OUTPUT_TOKENS)
    # It slept the scaled duration, not the trace's: the runner runs at TIME_SCALE.
    assert duration * TIME_SCALE <= result.duration_seconds < duration


async def test_a_declared_emulated_tool_is_listed_and_called(
    tool_runner: RunningToolRunner,
) -> None:
    listed = await tool_runner.stub.ListTools(pb.ListToolsRequest(), timeout=10)
    search = next(tool for tool in listed.tools if tool.name == "search")
    assert search.source == pb.TOOL_SOURCE_CONFIG
    assert "A made-up search API" in search.description
    result = await tool_runner.execute("search", {"query": "lamps"})
    assert len(result.output.split(" ")) == 7


async def test_an_emulated_duration_past_the_timeout_times_out(
    tool_runner: RunningToolRunner,
) -> None:
    result = await tool_runner.execute(
        "emulated.image_generation", {"duration_seconds": 3000}, timeout_seconds=0.1
    )
    assert result.error.code == common_pb2.TOOL_ERROR_CODE_TIMEOUT
    assert "did not answer within 0.1 s" in result.error.message
