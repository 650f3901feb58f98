"""Fixtures of the chart's tests: the tiny Llama a rendered `vllm` worker serves here."""

from tests.worker.vllm_support import tiny_llama_dir

__all__ = ["tiny_llama_dir"]
