"""Per-tool Prometheus series: calls by outcome, failures by code, durations, calls running now.

Tool names are labels, so a caller naming tools that do not exist must not mint series: unknown
names are counted under one label.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

UNKNOWN_TOOL_LABEL = "(unknown)"
OK_OUTCOME = "ok"

TOOL_CALLS = Counter(
    "lamps_tool_calls_total",
    "Tool calls answered, by tool and outcome (ok, or the error code).",
    ["tool", "outcome"],
)
TOOL_ERRORS = Counter(
    "lamps_tool_errors_total",
    "Tool calls that ended in an error, by tool and error code.",
    ["tool", "code"],
)
TOOL_CALL_SECONDS = Histogram(
    "lamps_tool_call_duration_seconds",
    "Time from receiving a tool call to its result, by tool.",
    ["tool"],
    # From the calculator's 0.1 ms to the chatbot type's tens of seconds (PAPER.md section 4).
    buckets=(
        0.0001,
        0.0005,
        0.001,
        0.005,
        0.01,
        0.05,
        0.1,
        0.25,
        0.5,
        1,
        2.5,
        5,
        10,
        20,
        30,
        60,
        120,
        300,
    ),
)
TOOL_CALLS_IN_FLIGHT = Gauge(
    "lamps_tool_calls_in_flight",
    "Tool calls running now (holding a concurrency slot), by tool.",
    ["tool"],
)
