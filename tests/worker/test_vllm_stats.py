"""The KV gauge between vLLM's step reports."""

from __future__ import annotations

from dataclasses import dataclass, field

from lamps.worker.engines.base import KvReport
from lamps.worker.engines.vllm_stats import KvGauge


@dataclass
class PrefixStats:
    queries: int = 0
    hits: int = 0


@dataclass
class SchedulerStats:
    """The fields of vLLM's SchedulerStats the gauge reads."""

    kv_cache_usage: float
    num_running_reqs: int = 0
    num_waiting_reqs: int = 0
    prefix_cache_stats: PrefixStats = field(default_factory=PrefixStats)


def test_reports_usage_as_blocks() -> None:
    gauge = KvGauge(total_blocks=100, block_size=16)
    assert gauge.report() == KvReport(16, 100, 100)
    gauge.record(SchedulerStats(0.25, 2, 1, PrefixStats(64, 32)))
    assert gauge.report() == KvReport(16, 100, 75)
    assert (gauge.running, gauge.waiting, gauge.prefix_queries, gauge.prefix_hits) == (2, 1, 64, 32)


def test_requests_ended_since_the_last_report_free_their_blocks_until_the_next() -> None:
    gauge = KvGauge(total_blocks=100, block_size=16)
    gauge.record(SchedulerStats(0.25))
    gauge.ended(kv_tokens=33)  # three blocks
    assert gauge.report().free_blocks == 78
    gauge.ended(kv_tokens=10_000)  # never below zero used
    assert gauge.report().free_blocks == 100
    gauge.record(SchedulerStats(0.1))  # vLLM's own count again
    assert gauge.report().free_blocks == 90


def test_reports_cpu_swap_space() -> None:
    gauge = KvGauge(total_blocks=10, block_size=16)
    assert gauge.report(cpu_total_blocks=50, cpu_used_blocks=20) == KvReport(16, 10, 10, 50, 30)
