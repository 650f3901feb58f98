"""The worker's Prometheus series, beside the gRPC ones every server exports."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

HELD_REQUESTS = Gauge("lamps_worker_held_requests", "Requests the engine holds: running or paused.")
KV_BLOCKS_TOTAL = Gauge("lamps_worker_kv_blocks_total", "KV cache blocks in GPU memory.")
KV_BLOCKS_FREE = Gauge("lamps_worker_kv_blocks_free", "KV cache blocks free now.")
KV_USAGE = Gauge("lamps_worker_kv_usage_ratio", "Share of the KV cache in use, 0 to 1.")
TOKENS_GENERATED = Counter("lamps_worker_generated_tokens_total", "Tokens the engine generated.")
CONNECTED = Gauge(
    "lamps_worker_connected", "1 while registered with the scheduler on a live stream, else 0."
)
RECONNECTS = Counter(
    "lamps_worker_reconnects_total", "Times the stream to the scheduler was lost and retried."
)
INSTRUCTIONS = Counter(
    "lamps_worker_instructions_total", "Instructions received from the scheduler.", ["kind"]
)
REFUSED = Counter(
    "lamps_worker_refused_total", "Instructions refused (answered with Refused).", ["instruction"]
)
RELEASED = Counter(
    "lamps_worker_released_total", "Requests handed back to the scheduler, by reason.", ["reason"]
)
DRAINING = Gauge("lamps_worker_draining", "1 while the worker takes no new work, else 0.")
