"""The scheduler's Prometheus series. `lamps_scheduler_queued_requests` is what the chart's
worker autoscaler reads: requests waiting in the ranked queue plus the starved lane."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

QUEUED = Gauge(
    "lamps_scheduler_queued_requests",
    "Requests waiting for a worker: the ranked queue plus the starved lane.",
)
STARVED = Gauge("lamps_scheduler_starved_requests", "Requests in the starved (head) lane.")
RUNNING = Gauge("lamps_scheduler_running_requests", "Requests generating on workers.")
IN_TOOL = Gauge("lamps_scheduler_in_tool_requests", "Requests paused in tool calls.")
QUEUED_PER_WORKER = Gauge(
    "lamps_scheduler_queued_requests_per_worker",
    "Waiting requests per ready worker (all waiting requests when no worker is ready).",
)
WORKERS = Gauge("lamps_scheduler_workers", "Connected workers, by state.", ["state"])
ACCEPTED = Counter("lamps_scheduler_requests_accepted_total", "Requests accepted.")
SHED = Counter(
    "lamps_scheduler_requests_shed_total",
    "Submissions refused with RESOURCE_EXHAUSTED because --max-waiting-requests were waiting.",
)
ADMITTED = Counter(
    "lamps_scheduler_admissions_total", "Admissions of requests to workers (re-admissions count)."
)
ENDED = Counter(
    "lamps_scheduler_requests_ended_total",
    "Requests that ended, by final state (finished, failed, cancelled).",
    ["state"],
)
REQUEUED = Counter(
    "lamps_scheduler_requeued_total",
    "Requests queued again, by why (discarded, preempted, drained, lease_expired, lost).",
    ["reason"],
)
ROUND_SECONDS = Histogram(
    "lamps_scheduler_round_seconds",
    "Scheduling latency: one round (placement, one store commit, messages out).",
    buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
WORKER_KV_USED = Gauge(
    "lamps_scheduler_worker_kv_used_ratio", "Share of a worker's GPU KV blocks in use.", ["worker"]
)
WORKER_KV_FREE = Gauge(
    "lamps_scheduler_worker_kv_free_blocks", "A worker's free GPU KV blocks.", ["worker"]
)
WORKER_REQUESTS = Gauge(
    "lamps_scheduler_worker_requests",
    "Requests a worker holds, by state (running, in_tool).",
    ["worker", "state"],
)
PREDICTION_FALLBACKS = Counter(
    "lamps_scheduler_prediction_fallbacks_total",
    "Requests ranked with default predictions, by why (no_predictor, unavailable).",
    ["reason"],
)
PREDICTOR_UP = Gauge("lamps_scheduler_predictor_up", "1 while the predictor answers, else 0.")
OUTCOMES_DROPPED = Counter(
    "lamps_scheduler_outcomes_dropped_total", "Call outcomes the predictor could not be sent."
)
TOOL_ERRORS = Counter(
    "lamps_scheduler_tool_errors_total", "Tool calls that ended in an error, by code.", ["code"]
)
STORE_ERRORS = Counter(
    "lamps_scheduler_store_errors_total", "Store operations that failed (retried)."
)
REJECTED_WORKER_MESSAGES = Counter(
    "lamps_scheduler_rejected_worker_messages_total",
    "Worker messages refused (about requests the worker does not hold).",
)
REFUSED_INSTRUCTIONS = Counter(
    "lamps_scheduler_refused_instructions_total",
    "Instructions workers could not carry out, by instruction and status code.",
    ["instruction", "code"],
)
STORE_ROUND_TRIPS = Counter(
    "lamps_scheduler_store_round_trips_total", "Round trips to the store (Redis)."
)
LEADER = Gauge("lamps_scheduler_leader", "1 while this replica is the leader, else 0.")
