"""The GPU cost model: what a token costs in memory and in time on one serving replica.

Iteration time is linear in the tokens computed and in the KV cache read by attention:

    T(x, k) = a * x + b * k + c        (milliseconds)

with x the tokens computed in the iteration (prefill chunks plus one per decoding request), k the
context tokens of the requests in the batch (attention reads their KV once per iteration) and c the
fixed cost of an iteration (weights read, kernel launches, sampling). a and c are the reference
code's fits (PAPER.md section 5); b is not in the papers: it is the time to stream one token's KV
from HBM, kv_bytes_per_token / memory bandwidth, so that long contexts cost what they cost on a GPU.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

GB = 10**9

# A100 80 GB SXM (NVIDIA's data sheet): HBM2e bandwidth and memory size.
A100_HBM_BYTES_PER_S = 2.039e12
A100_MEMORY_BYTES = 80 * GB
# PCIe 4.0 x16 moves 32 GB/s in theory; pinned host copies measure about 25 GB/s.
PCIE4_BYTES_PER_S = 25 * GB
# vLLM's default gpu_memory_utilization, and what it leaves aside for activations and the
# CUDA graph pool on an A100 (measured by vLLM's profile run; about 1-2 GB for these models).
VLLM_GPU_MEMORY_UTILIZATION = 0.9
ACTIVATION_RESERVE_BYTES = 2 * GB
# LAMPS' reference runs give vLLM 32 GB of CPU swap space (PAPER.md section 2).
LAMPS_CPU_SWAP_BYTES = 32 * GB


@dataclass(frozen=True, slots=True)
class CostModel:
    """Memory and time costs of one serving replica (one GPU, or one tensor-parallel group)."""

    name: str
    description: str
    kv_bytes_per_token: int
    kv_capacity_tokens: int
    block_size: int
    ms_per_token: float
    ms_per_context_token: float
    ms_per_iteration: float
    saturation_tokens: int
    swap_bytes_per_second: float
    cpu_swap_bytes: int

    def __post_init__(self) -> None:
        positive = {
            "kv_bytes_per_token": self.kv_bytes_per_token,
            "kv_capacity_tokens": self.kv_capacity_tokens,
            "block_size": self.block_size,
            "saturation_tokens": self.saturation_tokens,
            "swap_bytes_per_second": self.swap_bytes_per_second,
        }
        for field, value in positive.items():
            if value <= 0:
                raise ValueError(f"cost model {self.name!r}: {field} must be positive, got {value}")
        if min(self.ms_per_token, self.ms_per_context_token, self.ms_per_iteration) < 0:
            raise ValueError(f"cost model {self.name!r}: iteration costs must not be negative")
        if self.kv_capacity_tokens < self.block_size:
            raise ValueError(
                f"cost model {self.name!r}: KV capacity of {self.kv_capacity_tokens} tokens "
                f"is less than one block of {self.block_size}"
            )

    def iteration_s(self, tokens: int, context_tokens: int = 0) -> float:
        """Seconds for one iteration that computes `tokens` over `context_tokens` of KV."""
        ms = (
            self.ms_per_token * tokens
            + self.ms_per_context_token * context_tokens
            + self.ms_per_iteration
        )
        return ms / 1000.0

    def swap_s(self, tokens: int) -> float:
        """Seconds to move `tokens` of KV one way between GPU and CPU memory."""
        return tokens * self.kv_bytes_per_token / self.swap_bytes_per_second

    def kv_bytes(self, tokens: float) -> float:
        return tokens * self.kv_bytes_per_token

    @property
    def kv_capacity_blocks(self) -> int:
        return self.kv_capacity_tokens // self.block_size

    @property
    def cpu_swap_tokens(self) -> int:
        return self.cpu_swap_bytes // self.kv_bytes_per_token

    def blocks_for(self, tokens: int) -> int:
        return math.ceil(tokens / self.block_size)

    def with_kv_tokens(self, tokens: int) -> CostModel:
        """The same replica with a different KV capacity (to sweep how much memory binds)."""
        return dataclasses.replace(self, kv_capacity_tokens=tokens)


def kv_capacity(
    gpu_bytes: float, weight_bytes: float, kv_bytes_per_token: int, gpus: int = 1
) -> int:
    """KV tokens vLLM has left after the weights and its activation reserve on `gpus` GPUs."""
    usable = gpus * (gpu_bytes * VLLM_GPU_MEMORY_UTILIZATION - ACTIVATION_RESERVE_BYTES)
    return int((usable - weight_bytes) // kv_bytes_per_token)


def _gptj_6b_a100() -> CostModel:
    # GPT-J 6B: 28 layers x hidden 4096, K and V in fp16 -> 2 * 2 * 28 * 4096 = 458,752 B/token.
    kv_bytes = 2 * 2 * 28 * 4096
    return CostModel(
        name="gptj-6b-a100",
        description="GPT-J 6B, fp16, one A100 80 GB (LAMPS' reference runs)",
        kv_bytes_per_token=kv_bytes,
        # 6.05e9 parameters in fp16 = 12.1 GB of weights.
        kv_capacity_tokens=kv_capacity(A100_MEMORY_BYTES, 12.1 * GB, kv_bytes),
        block_size=16,
        # a and c: LAMPS' fit of the reference runs (PAPER.md section 5).
        ms_per_token=0.0408,
        ms_per_context_token=kv_bytes / A100_HBM_BYTES_PER_S * 1000.0,
        ms_per_iteration=16.92,
        saturation_tokens=384,
        swap_bytes_per_second=PCIE4_BYTES_PER_S,
        cpu_swap_bytes=LAMPS_CPU_SWAP_BYTES,
    )


def _vicuna_13b_a100x2() -> CostModel:
    # LLaMA-13B shape: 40 layers x hidden 5120 -> 2 * 2 * 40 * 5120 = 819,200 B/token, split over
    # two GPUs by tensor parallelism, so each GPU streams half of it per iteration and each PCIe
    # link moves half of it when swapping.
    kv_bytes = 2 * 2 * 40 * 5120
    return CostModel(
        name="vicuna-13b-a100x2",
        description="Vicuna-13B v1.3, fp16, tensor parallel over two A100 80 GB (InferCept's runs)",
        kv_bytes_per_token=kv_bytes,
        # 13.0e9 parameters in fp16 = 26 GB of weights, split over the two GPUs.
        kv_capacity_tokens=kv_capacity(A100_MEMORY_BYTES, 26.0 * GB, kv_bytes, gpus=2),
        block_size=16,
        # a and c: the InferCept fit for this model on two GPUs (PAPER.md section 5).
        ms_per_token=0.0279,
        ms_per_context_token=kv_bytes / 2 / A100_HBM_BYTES_PER_S * 1000.0,
        ms_per_iteration=15.4,
        saturation_tokens=384,
        swap_bytes_per_second=2 * PCIE4_BYTES_PER_S,
        cpu_swap_bytes=LAMPS_CPU_SWAP_BYTES,
    )


PROFILES: dict[str, CostModel] = {
    profile.name: profile for profile in (_gptj_6b_a100(), _vicuna_13b_a100x2())
}


def get_profile(name: str) -> CostModel:
    """The named profile; a ValueError naming the known ones otherwise."""
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(sorted(PROFILES))
        raise ValueError(f"unknown cost profile {name!r}; known profiles: {known}") from None
