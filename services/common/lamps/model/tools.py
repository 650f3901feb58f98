"""The six tool (API) types of InferCept's workload and their measured statistics.

Numbers are InferCept's Table 1 (PAPER.md section 4). The live system uses them to seed per-tool
call-duration statistics before any call has been observed, the tool runner's emulated tools draw
their sleeps from them, and the simulator labels trace calls with them.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass


class ToolKind(enum.StrEnum):
    """The API types of PAPER.md section 4, by the name tools and traces use for them."""

    MATH = "math"
    QA = "qa"
    VIRTUAL_ENVIRONMENT = "virtual_environment"
    CHATBOT = "chatbot"
    IMAGE_GENERATION = "image_generation"
    TEXT_TO_SPEECH = "text_to_speech"


@dataclass(frozen=True, slots=True)
class ToolStats:
    """Mean and standard deviation of one tool type's calls (InferCept Table 1)."""

    kind: ToolKind
    description: str
    duration_mean_s: float
    duration_std_s: float
    calls_per_request_mean: float
    calls_per_request_std: float
    context_tokens_mean: float
    context_tokens_std: float

    def lognormal_parameters(self) -> tuple[float, float]:
        """(mu, sigma) of the log-normal with this mean and standard deviation."""
        return lognormal_parameters(self.duration_mean_s, self.duration_std_s)


def lognormal_parameters(mean: float, std: float) -> tuple[float, float]:
    """(mu, sigma) of the log-normal whose mean and standard deviation are `mean` and `std`.

    Durations are positive and right-skewed; a log-normal matched on the first two moments keeps
    both the published mean and deviation, which a clipped normal would not.
    """
    variance_ratio = 1.0 + (std / mean) ** 2
    sigma = math.sqrt(math.log(variance_ratio))
    mu = math.log(mean) - sigma * sigma / 2.0
    return mu, sigma


TOOL_STATS: dict[ToolKind, ToolStats] = {
    stats.kind: stats
    for stats in (
        ToolStats(ToolKind.MATH, "calculator", 9e-5, 6e-5, 3.75, 1.3, 1422, 738),
        ToolStats(ToolKind.QA, "question answering (Wikipedia)", 0.69, 0.17, 2.52, 1.73, 1846, 428),
        ToolStats(
            ToolKind.VIRTUAL_ENVIRONMENT,
            "virtual environment (ALFWorld)",
            0.09,
            0.014,
            28.18,
            15.2,
            2185,
            115,
        ),
        ToolStats(ToolKind.CHATBOT, "chatbot (a human's reply)", 28.6, 15.6, 4.45, 1.96, 753, 703),
        ToolStats(ToolKind.IMAGE_GENERATION, "image generation", 20.03, 7.8, 6.91, 3.93, 1247, 792),
        ToolStats(ToolKind.TEXT_TO_SPEECH, "text to speech", 17.24, 7.6, 6.91, 3.93, 1251, 792),
    )
}


def nearest_kind(duration_s: float) -> ToolKind:
    """The tool type whose mean duration is closest to `duration_s` on a log scale.

    Used to label trace calls that carry a duration but no tool name.
    """
    floor = 1e-6
    target = math.log(max(duration_s, floor))
    return min(
        TOOL_STATS.values(),
        key=lambda stats: abs(math.log(stats.duration_mean_s) - target),
    ).kind


# Tokens a tool call returns, on average: 24.2 over the 716 calls of
# traces/infercept_mixed.json that record `api_token_length` (PAPER.md section 3).
MEAN_TOOL_OUTPUT_TOKENS = 24
