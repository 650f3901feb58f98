"""The worker: an inference engine (`sim` or `vllm`) and the agent that connects it to the
scheduler's WorkerGateway (DESIGN.md section 7)."""
