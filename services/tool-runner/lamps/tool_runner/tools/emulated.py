"""Emulated tools: they sleep like a real API type and return text of a chosen length.

Benchmarks need InferCept's workload (PAPER.md section 4) without the real tools. An emulated call
sleeps for a duration drawn from a log-normal with the type's published mean and deviation, or for
an explicit `duration_seconds` (the scheduler replays trace durations that way, as the papers'
experiments do), multiplied by the runner's time scale so a benchmark replayed 10x faster sleeps
10x less. It returns `output_tokens` words, one word per token of the usual tokenizers.

Each tool draws from its own generator seeded by the runner's seed and the tool's name, so runs
with one seed sleep alike and adding a tool does not shift the others' sequences.
"""

from __future__ import annotations

import asyncio
import math
import random
from dataclasses import dataclass
from typing import Any

from lamps.model.tools import (
    MEAN_TOOL_OUTPUT_TOKENS,
    TOOL_STATS,
    ToolKind,
    lognormal_parameters,
)
from lamps.tool_runner.registry import Tool, ToolSpec

EMULATED_PREFIX = "emulated."
MAX_OUTPUT_TOKENS = 8192
MAX_DURATION_SECONDS = 3600.0
# Words that stay one token each in GPT-style and LLaMA-style vocabularies.
WORDS = (
    *("the", "result", "of", "this", "call", "is", "ready", "and"),
    *("it", "has", "been", "sent", "back", "to", "you", "now"),
)


@dataclass(frozen=True)
class EmulatedProfile:
    """How one emulated tool behaves: its call durations and its output length."""

    name: str
    description: str
    duration_mean_seconds: float
    duration_std_seconds: float
    output_tokens: int = MEAN_TOOL_OUTPUT_TOKENS

    def __post_init__(self) -> None:
        if not (self.duration_mean_seconds > 0 and math.isfinite(self.duration_mean_seconds)):
            raise ValueError(f"{self.name}: duration_mean_seconds must be a positive number")
        if not (self.duration_std_seconds >= 0 and math.isfinite(self.duration_std_seconds)):
            raise ValueError(f"{self.name}: duration_std_seconds must not be negative")
        if not 0 <= self.output_tokens <= MAX_OUTPUT_TOKENS:
            raise ValueError(f"{self.name}: output_tokens must be 0 to {MAX_OUTPUT_TOKENS}")

    @classmethod
    def of(cls, kind: ToolKind) -> EmulatedProfile:
        """The profile of one of InferCept's six API types."""
        stats = TOOL_STATS[kind]
        return cls(
            name=EMULATED_PREFIX + kind.value,
            description=f"Emulates InferCept's {stats.description} tool",
            duration_mean_seconds=stats.duration_mean_s,
            duration_std_seconds=stats.duration_std_s,
        )


class DurationSampler:
    """Draws call durations (seconds) for one profile from its own seeded generator."""

    def __init__(self, profile: EmulatedProfile, seed: int) -> None:
        self._mu, self._sigma = lognormal_parameters(
            profile.duration_mean_seconds, profile.duration_std_seconds
        )
        # Benchmark noise, not security: a seeded, reproducible generator is the point.
        self._rng = random.Random(f"{seed}:{profile.name}")

    def sample(self) -> float:
        return self._rng.lognormvariate(self._mu, self._sigma)


def output_text(tokens: int) -> str:
    """`tokens` words of a fixed sequence: the same length gives the same text."""
    return " ".join(WORDS[i % len(WORDS)] for i in range(tokens))


def emulated_schema(default_tokens: int) -> dict[str, Any]:
    # Models write their own arguments (a prompt, a query); extra properties are accepted.
    return {
        "type": "object",
        "properties": {
            "duration_seconds": {
                "type": "number",
                "minimum": 0,
                "maximum": MAX_DURATION_SECONDS,
                "description": "How long the call takes before the time scale; "
                "drawn from the tool's distribution when absent",
            },
            "output_tokens": {
                "type": "integer",
                "minimum": 0,
                "maximum": MAX_OUTPUT_TOKENS,
                "description": f"Tokens of text to return (default {default_tokens})",
            },
        },
        "additionalProperties": True,
    }


class EmulatedTool(Tool):
    """A tool that behaves like an API type of the workload, for benchmarks."""

    def __init__(self, profile: EmulatedProfile, *, seed: int, time_scale: float) -> None:
        self.profile = profile
        self.time_scale = time_scale
        self.sampler = DurationSampler(profile, seed)
        self._spec = ToolSpec(
            name=profile.name,
            description=(
                f"{profile.description}: sleeps about {profile.duration_mean_seconds:g} s "
                f"(std {profile.duration_std_seconds:g} s) and returns "
                f"{profile.output_tokens} tokens of text"
            ),
            arguments_schema=emulated_schema(profile.output_tokens),
            timeout_seconds=600.0,
            max_concurrency=1024,
        )

    @property
    def spec(self) -> ToolSpec:
        return self._spec

    async def call(self, arguments: dict[str, Any]) -> str:
        duration = arguments.get("duration_seconds")
        seconds = float(duration) if duration is not None else self.sampler.sample()
        await asyncio.sleep(seconds * self.time_scale)
        return output_text(int(arguments.get("output_tokens", self.profile.output_tokens)))


def builtin_emulated_tools(*, seed: int, time_scale: float) -> list[EmulatedTool]:
    """One emulated tool per API type: `emulated.math`, `emulated.qa`, ..."""
    return [
        EmulatedTool(EmulatedProfile.of(kind), seed=seed, time_scale=time_scale)
        for kind in ToolKind
    ]
