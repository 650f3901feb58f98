"""What the `vllm` engine learns from vLLM's stat loggers: KV usage per step, and vLLM's own
`vllm:*` Prometheus series re-exported on the worker's metrics port.

vLLM calls its stat loggers from AsyncLLM's output handler, on the event loop, once per engine
step. Between steps nothing is reported: a request that ends while nothing else runs (a Discard, an
abort) frees its blocks without a step to say so. `KvGauge` therefore counts the blocks of requests
ended since the last report and adds them back to the free count until the next report corrects it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from lamps.worker.engines.base import KvReport


class KvGauge:
    """KV cache occupancy as vLLM last reported it, corrected for requests ended since."""

    def __init__(self, total_blocks: int, block_size: int) -> None:
        self.total_blocks = total_blocks
        self.block_size = block_size
        self.usage = 0.0  # fraction of total_blocks in use at the last report
        self.running = 0
        self.waiting = 0
        self.prefix_queries = 0  # tokens looked up in the prefix cache, all reports together
        self.prefix_hits = 0
        self.reports = 0
        self._ended_blocks = 0

    def record(self, stats: Any) -> None:
        """One step's `SchedulerStats`."""
        self.usage = float(stats.kv_cache_usage)
        self.running = int(stats.num_running_reqs)
        self.waiting = int(stats.num_waiting_reqs)
        prefix = getattr(stats, "prefix_cache_stats", None)
        if prefix is not None:
            self.prefix_queries += int(prefix.queries)
            self.prefix_hits += int(prefix.hits)
        self.reports += 1
        self._ended_blocks = 0

    def ended(self, kv_tokens: int) -> None:
        """A request that held `kv_tokens` tokens of KV has ended (its blocks go free)."""
        self._ended_blocks += math.ceil(kv_tokens / self.block_size)

    def report(self, cpu_total_blocks: int = 0, cpu_used_blocks: int = 0) -> KvReport:
        used = round(self.usage * self.total_blocks) - self._ended_blocks
        used = min(self.total_blocks, max(0, used))
        return KvReport(
            block_size=self.block_size,
            total_blocks=self.total_blocks,
            free_blocks=self.total_blocks - used,
            cpu_total_blocks=cpu_total_blocks,
            cpu_free_blocks=max(0, cpu_total_blocks - cpu_used_blocks),
        )


def stat_logger_factory(gauge: Callable[[], KvGauge | None]) -> type:
    """A `StatLoggerBase` subclass (vLLM builds one per engine) feeding the gauge `gauge()`
    returns; the gauge is looked up per step because the engine creates it after vLLM has
    built the loggers (capacity is known only then)."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class KvStatLogger(StatLoggerBase):  # type: ignore[misc]
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            self.engine_index = engine_index

        def record(self, scheduler_stats: Any, *_: Any, **__: Any) -> None:
            # Extra arguments: record()'s signature has grown across vLLM releases.
            target = gauge()
            if scheduler_stats is not None and target is not None:
                target.record(scheduler_stats)

        def log_engine_initialized(self) -> None:
            return None

    return KvStatLogger


class VllmMetrics(Collector):
    """vLLM's `vllm:*` series, read from the registry vLLM writes to."""

    def __init__(self, source: CollectorRegistry = REGISTRY) -> None:
        self._source = source

    def collect(self) -> Iterable[Metric]:
        for metric in self._source.collect():
            if metric.name.startswith("vllm:"):
                yield metric


def export_vllm_metrics(registry: CollectorRegistry = REGISTRY) -> bool:
    """Make vLLM's `vllm:*` series part of what `registry` serves; the worker's metrics endpoint
    serves `REGISTRY`, where in-process vLLM registers them already, so this adds a collector
    only for another registry. Returns whether it added one."""
    if registry is REGISTRY:
        return False
    registry.register(VllmMetrics())
    return True
