"""The scheduler: the front door clients call, the ranked queue in Redis, the request lifecycle,
placement on workers and tool orchestration (DESIGN.md sections 3-6)."""
