"""Engines a worker can run: the interface (`base`), `sim` and `vllm`."""
