"""LAMPS' memory x time score (PAPER.md section 7): the area under a request's memory curve up to
and through its next tool call and after it, under the strategy chosen for that call. Requests with
the smallest area run first."""

from __future__ import annotations

import math

from lamps.model.cost import CostModel
from lamps.model.strategy import Strategy
from lamps.scheduler.policy.estimates import EngineView, RequestEstimate


def area(
    cost: CostModel,
    start_tokens: float,
    tokens: int,
    tokens_per_iteration: int,
    iteration_s: float,
) -> float:
    """Byte-seconds while `tokens` are computed on top of `start_tokens`, `tokens_per_iteration`
    at a time: memory grows linearly from start to start + tokens (a trapezoid)."""
    if tokens <= 0:
        return 0.0
    iterations = math.ceil(tokens / tokens_per_iteration)
    return iterations * iteration_s * cost.kv_bytes(start_tokens + tokens / 2.0)


def memory_time(
    cost: CostModel, estimate: RequestEstimate, strategy: Strategy, engine: EngineView
) -> float:
    """The LAMPS score of a request under `strategy` for its next call."""
    chunk = cost.saturation_tokens
    prefill_s = cost.iteration_s(chunk, engine.running_tokens)
    decode_s = engine.iteration_s
    context, pre = estimate.context_tokens, estimate.pre_call_tokens
    before = area(cost, 0, context, chunk, prefill_s) + area(cost, context, pre, 1, decode_s)
    call = estimate.call
    if call is None:
        return before
    at_call = context + pre
    if strategy is Strategy.PRESERVE:
        during = call.duration_s * cost.kv_bytes(at_call)
        returned = area(cost, at_call, call.return_tokens, chunk, prefill_s)
    elif strategy is Strategy.SWAP:
        during = 2.0 * cost.swap_s(at_call) * cost.kv_bytes(at_call)
        returned = area(cost, at_call, call.return_tokens, chunk, prefill_s)
    else:
        during = 0.0
        returned = area(cost, 0, at_call + call.return_tokens, chunk, prefill_s)
    after_start = at_call + call.return_tokens
    after = area(cost, after_start, estimate.post_call_tokens, 1, decode_s)
    return before + during + returned + after
