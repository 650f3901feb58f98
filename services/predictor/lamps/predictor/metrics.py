"""The predictor's Prometheus series, beside the gRPC ones every server exports."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from lamps.predictor.batching import BatchRecord
from lamps.predictor.durations import DurationTable

PREDICTIONS = Counter(
    "lamps_predictor_predictions_total",
    "Predictions returned; from_model is false when no model is loaded.",
    ["from_model"],
)
PREDICT_SECONDS = Histogram(
    "lamps_predictor_predict_seconds",
    "Time to answer one Predict call, batching wait included.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
BATCH_SIZE = Histogram(
    "lamps_predictor_batch_size",
    "Prompts per forward pass.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
BATCH_CALLS = Histogram(
    "lamps_predictor_batch_calls",
    "Predict calls sharing one forward pass.",
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
BATCH_SECONDS = Histogram(
    "lamps_predictor_batch_seconds",
    "Time of one forward pass (backbone and heads).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
OUTCOMES = Counter(
    "lamps_predictor_outcomes_total",
    "Outcomes reported; tool is none for requests that finished without a call.",
    ["tool"],
)
DURATION_MEAN = Gauge(
    "lamps_predictor_tool_duration_mean_seconds",
    "Current expected call duration of each tool.",
    ["tool"],
)
DURATION_COUNT = Gauge(
    "lamps_predictor_tool_duration_observations",
    "Reported calls behind each tool's duration statistics.",
    ["tool"],
)


def observe_batch(batch: BatchRecord) -> None:
    BATCH_SIZE.observe(batch.items)
    BATCH_CALLS.observe(batch.calls)
    BATCH_SECONDS.observe(batch.seconds)


def publish_durations(table: DurationTable) -> None:
    for tool in table.tools:
        stats = table.get(tool)
        if stats is not None:
            DURATION_MEAN.labels(tool=tool).set(stats.mean)
            DURATION_COUNT.labels(tool=tool).set(stats.count)
