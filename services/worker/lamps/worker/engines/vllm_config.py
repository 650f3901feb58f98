"""How the `vllm` engine builds its AsyncLLM: the worker settings it reads and vLLM's engine
arguments they become, and the conversions between our units and vLLM's."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Protocol


class VllmSettings(Protocol):
    """The WorkerConfig fields the engine reads."""

    @property
    def model(self) -> str: ...
    @property
    def dtype(self) -> str: ...
    @property
    def max_model_len(self) -> int: ...
    @property
    def kv_cache_bytes(self) -> int: ...
    @property
    def block_size(self) -> int: ...
    @property
    def max_running(self) -> int: ...
    @property
    def swap_space_bytes(self) -> int: ...
    @property
    def seed(self) -> int: ...


@dataclass(frozen=True)
class VllmOptions:
    """How to build the AsyncLLM; zeros mean vLLM's defaults."""

    model: str  # a local folder or a hub id
    dtype: str = "auto"
    max_model_len: int = 0
    kv_cache_bytes: int = 0  # 0: vLLM sizes the cache from free device memory
    block_size: int = 0  # 0: the platform's default (128 on the CPU)
    max_running: int = 16
    swap_space_bytes: int = 0  # CPU memory for Swap (CUDA only); 0: no Swap
    seed: int = 0

    @classmethod
    def of(cls, settings: VllmSettings) -> VllmOptions:
        return cls(
            model=settings.model,
            dtype=settings.dtype,
            max_model_len=settings.max_model_len,
            kv_cache_bytes=settings.kv_cache_bytes,
            block_size=settings.block_size,
            max_running=settings.max_running,
            swap_space_bytes=settings.swap_space_bytes,
            seed=settings.seed,
        )


def engine_args(options: VllmOptions, swap: bool) -> Any:
    """vLLM's `AsyncEngineArgs`: priority scheduling, prefix caching, the model in the engine
    process ("uni"), and CPU KV offloading when `swap`."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    args: dict[str, Any] = {
        "model": options.model,
        "dtype": options.dtype,
        "max_num_seqs": options.max_running,
        "seed": options.seed,
        "scheduling_policy": "priority",
        "distributed_executor_backend": "uni",
        "enable_prefix_caching": True,
    }
    if options.max_model_len:
        args["max_model_len"] = options.max_model_len
    if options.kv_cache_bytes:
        args["kv_cache_memory_bytes"] = options.kv_cache_bytes
    if options.block_size:
        args["block_size"] = options.block_size
    if swap:
        args["kv_offloading_backend"] = "native"
        args["kv_offloading_size"] = options.swap_space_bytes / (1 << 30)  # GiB
    return AsyncEngineArgs(**args)


def rank_priority(rank: float) -> int:
    """vLLM's integer priority (lower runs first) with the order of the float rank, exactly."""
    bits: int = struct.unpack(">q", struct.pack(">d", rank))[0]
    return bits if bits >= 0 else -(bits & 0x7FFF_FFFF_FFFF_FFFF) - 1


def can_offload_kv() -> bool:
    """Whether this platform supports vLLM's CPU KV offloading (CUDA-alike and XPU only)."""
    from vllm.platforms import current_platform

    return bool(current_platform.is_cuda_alike() or current_platform.is_xpu())


def block_bytes(config: Any) -> int:
    """Bytes of one KV block on the device (keys and values of every layer), from a VllmConfig."""
    model, parallel = config.model_config, config.parallel_config
    per_token = (
        2
        * model.get_num_layers(parallel)
        * model.get_num_kv_heads(parallel)
        * model.get_head_size()
        * model.dtype.itemsize
    )
    return max(1, int(per_token) * int(config.cache_config.block_size))
