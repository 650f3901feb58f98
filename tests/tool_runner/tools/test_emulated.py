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
