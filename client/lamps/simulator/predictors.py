"""What the simulated scheduler is told about a request before it runs.

`PaperPredictor` is the paper's setting: the pre-call output length as the centre of its 10-token
bin (the last of 50 bins holds everything from 490 up), the tool type known (the predictor's tool
head), the call duration the running mean of past calls of that tool, and the tool's returned and
post-call tokens running means of what was seen. `error_pct` adds Gaussian noise of that many
percent to the length before binning, as the paper's ablation does. Only `truth` sees the trace.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Protocol

from lamps.model.tools import TOOL_STATS, ToolKind
from lamps.model.workload import RequestSpec, ToolCallSpec
from lamps.scheduler.policy import CallEstimate, RequestEstimate

LENGTH_BIN_TOKENS = 10
LENGTH_BINS = 50
# Means of the bundled traces, used until calls have been observed.
SEED_RETURN_TOKENS = 24.0
SEED_POST_CALL_TOKENS = 100.0


class Predictor(Protocol):
    def estimate(self, spec: RequestSpec, segment: int, context_tokens: int) -> RequestEstimate:
        """What is predicted of `spec` from `segment` on, with `context_tokens` to compute."""
        ...

    def observe(self, call: ToolCallSpec, post_call_tokens: int) -> None:
        """A call finished: learn its duration, what it returned and what followed it."""
        ...


def length_bin(tokens: float) -> int:
    return min(max(int(tokens) // LENGTH_BIN_TOKENS, 0), LENGTH_BINS - 1)


def bin_centre(index: int) -> int:
    return index * LENGTH_BIN_TOKENS + LENGTH_BIN_TOKENS // 2


@dataclass(slots=True)
class RunningMean:
    mean: float
    count: float = 1.0

    def add(self, value: float) -> None:
        self.count += 1.0
        self.mean += (value - self.mean) / self.count


@dataclass(slots=True)
class PaperPredictor:
    """The paper's predictions (see the module docstring)."""

    error_pct: float = 0.0
    seed: int = 0
    durations: dict[ToolKind, RunningMean] = field(default_factory=dict)
    returned: RunningMean = field(default_factory=lambda: RunningMean(SEED_RETURN_TOKENS))
    post_call: RunningMean = field(default_factory=lambda: RunningMean(SEED_POST_CALL_TOKENS))
    _rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        if self.error_pct < 0:
            raise ValueError("the prediction error must not be negative")
        self._rng = random.Random(self.seed)
        for kind, stats in TOOL_STATS.items():
            self.durations.setdefault(kind, RunningMean(stats.duration_mean_s))

    def estimate(self, spec: RequestSpec, segment: int, context_tokens: int) -> RequestEstimate:
        current = spec.segments[segment]
        length = float(current.output_tokens)
        if self.error_pct:
            length *= 1.0 + self._rng.gauss(0.0, self.error_pct / 100.0)
        call = None
        if current.call is not None:
            call = CallEstimate(
                kind=current.call.kind,
                duration_s=self.durations[current.call.kind].mean,
                return_tokens=round(self.returned.mean),
            )
        return RequestEstimate(
            context_tokens=context_tokens,
            pre_call_tokens=bin_centre(length_bin(length)),
            call=call,
            post_call_tokens=round(self.post_call.mean) if call is not None else 0,
        )

    def observe(self, call: ToolCallSpec, post_call_tokens: int) -> None:
        self.durations[call.kind].add(call.duration_s)
        self.returned.add(call.return_tokens)
        self.post_call.add(post_call_tokens)


def truth(spec: RequestSpec, segment: int, context_tokens: int) -> RequestEstimate:
    """The trace's own values: what an oracle knows."""
    current = spec.segments[segment]
    call = None
    post = 0
    if current.call is not None:
        call = CallEstimate(current.call.kind, current.call.duration_s, current.call.return_tokens)
        post = spec.segments[segment + 1].output_tokens
    return RequestEstimate(
        context_tokens=context_tokens,
        pre_call_tokens=current.output_tokens,
        call=call,
        post_call_tokens=post,
    )
