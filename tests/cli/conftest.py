"""Fixtures of the command-line tests: `lamps up` with the vllm engine loads the tiny Llama."""

from tests.worker.vllm_support import tiny_llama_dir

__all__ = ["tiny_llama_dir"]
