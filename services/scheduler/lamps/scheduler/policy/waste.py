"""InferCept's memory waste of a paused request under each strategy (PAPER.md section 6).

Waste is GPU memory held without doing useful work, in byte-seconds: the paused request's own KV
while its call runs (Preserve), the recompute that stalls it and the rest of the batch (Discard,
recomputed in chunks that fill the iteration up to the saturation point), or the transfers that
stall the batch (Swap, out and back).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lamps.model.cost import CostModel
from lamps.model.strategy import Strategy


def preserve_waste(cost: CostModel, context_tokens: int, duration_s: float) -> float:
    """W_P = T_api * C * M."""
    return duration_s * cost.kv_bytes(context_tokens)


def recompute_chunk(cost: CostModel, decode_tokens: int) -> int:
    """c_h = max(S - running tokens, 1): what one iteration can recompute for free."""
    return max(cost.saturation_tokens - decode_tokens, 1)


def discard_waste(
    cost: CostModel, context_tokens: int, other_tokens: int, decode_tokens: int
) -> float:
    """Chunked recompute: T(C) * C * M / 2 + n * T(C / n) * C_other * M with n chunks."""
    if context_tokens <= 0:
        return 0.0
    chunks = math.ceil(context_tokens / recompute_chunk(cost, decode_tokens))
    own = cost.iteration_s(context_tokens) * cost.kv_bytes(context_tokens) / 2.0
    chunk_s = cost.iteration_s(math.ceil(context_tokens / chunks))
    return own + chunks * chunk_s * cost.kv_bytes(other_tokens)


def swap_waste(cost: CostModel, context_tokens: int, batch_tokens: int) -> float:
    """W_S = 2 * T_swap(C) * C_batch * M: out and back, stalling the batch each way."""
    return 2.0 * cost.swap_s(context_tokens) * cost.kv_bytes(batch_tokens)


@dataclass(frozen=True, slots=True)
class Wastes:
    preserve: float
    discard: float
    swap: float | None

    def cheapest(self) -> Strategy:
        """The strategy of least waste; ties go to Preserve, then Discard (no transfers)."""
        best, waste = Strategy.PRESERVE, self.preserve
        if self.discard < waste:
            best, waste = Strategy.DISCARD, self.discard
        if self.swap is not None and self.swap < waste:
            best = Strategy.SWAP
        return best

    def crossover_s(self, context_tokens: int, cost: CostModel) -> float:
        """Call time after which Preserve wastes more than the best alternative."""
        alternative = min(self.discard, self.swap if self.swap is not None else math.inf)
        return alternative / cost.kv_bytes(max(context_tokens, 1))


def wastes(
    cost: CostModel,
    context_tokens: int,
    duration_s: float,
    *,
    running_tokens: int,
    decode_tokens: int,
    cpu_free_tokens: int,
) -> Wastes:
    """The three wastes of pausing a request of `context_tokens` for `duration_s`, beside a batch
    holding `running_tokens`. Swap is out of the question (None) when CPU swap space is short."""
    swap = None
    if cpu_free_tokens >= context_tokens:
        swap = swap_waste(cost, context_tokens, running_tokens + context_tokens)
    return Wastes(
        preserve=preserve_waste(cost, context_tokens, duration_s),
        discard=discard_waste(cost, context_tokens, running_tokens, decode_tokens),
        swap=swap,
    )
