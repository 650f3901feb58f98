"""Fixtures of the worker's tests."""

from tests.worker.vllm_support import tiny_llama_dir, vllm_engine, vllm_events

__all__ = ["tiny_llama_dir", "vllm_engine", "vllm_events"]
