"""Fixtures of the end-to-end tests."""

from tests.worker.vllm_support import tiny_llama_dir

__all__ = ["tiny_llama_dir"]
