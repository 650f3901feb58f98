"""Per-tool call-duration statistics, learned online from reported outcomes.

Each tool keeps a count, a mean and a variance. Before any call is seen they hold a prior from
InferCept's Table 1 (`lamps.model.tools.TOOL_STATS`, PAPER.md section 4) worth `seed_weight`
observations, so the first real calls move the estimate without a single outlier swinging it.
Each outcome is folded in with weight 1/w, where w grows by one per outcome up to `max_weight`:
until then this is Welford's exact running mean and (population) variance of prior plus
observations; from then on it is an exponentially weighted average with alpha = 1/max_weight,
so a tool that gets slower is followed instead of being drowned by a million old calls.

Where the scheduler gives a Redis URL the statistics live in Redis, one hash per tool, updated by
a Lua script so replicas of the predictor fold outcomes in atomically and share what they learn.
"""

from __future__ import annotations

import abc
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from lamps.model.tools import TOOL_STATS, ToolKind

log = logging.getLogger(__name__)

# A prior worth ten calls: after 10 real calls the data have half the say, after 90 nine tenths.
DEFAULT_SEED_WEIGHT = 10.0
# Past 500 calls, each new call moves the estimate by 1/500: a shift in a tool's latency shows
# after a few hundred calls, while the noise of single calls is averaged over about as many.
DEFAULT_MAX_WEIGHT = 500.0
REDIS_KEY_PREFIX = "lamps:predictor:durations:"


@dataclass(frozen=True, slots=True)
class DurationStats:
    """One tool's running statistics; `count` counts real outcomes only, not the prior."""

    count: int
    weight: float
    mean: float
    variance: float

    @property
    def std(self) -> float:
        return math.sqrt(max(self.variance, 0.0))

    def updated(self, seconds: float, max_weight: float) -> DurationStats:
        """Fold in one observed call (the formula `_UPDATE_SCRIPT` applies in Redis)."""
        weight = min(self.weight + 1.0, max_weight)
        alpha = 1.0 / weight
        delta = seconds - self.mean
        return DurationStats(
            count=self.count + 1,
            weight=weight,
            mean=self.mean + alpha * delta,
            variance=(1.0 - alpha) * (self.variance + alpha * delta * delta),
        )


def prior(tool: str, seed_weight: float) -> DurationStats:
    """The statistics a tool starts from: Table 1's for the six known kinds, nothing otherwise."""
    try:
        stats = TOOL_STATS[ToolKind(tool)]
    except ValueError:
        return DurationStats(count=0, weight=0.0, mean=0.0, variance=0.0)
    return DurationStats(
        count=0,
        weight=seed_weight,
        mean=stats.duration_mean_s,
        variance=stats.duration_std_s**2,
    )


class DurationStore(abc.ABC):
    """Where the statistics live between outcomes and across restarts."""

    @abc.abstractmethod
    async def load(self, priors: Mapping[str, DurationStats]) -> dict[str, DurationStats]:
        """The current statistics of each tool in `priors`, the prior where none are stored."""

    @abc.abstractmethod
    async def observe(
        self, tool: str, seconds: float, prior: DurationStats, max_weight: float
    ) -> DurationStats:
        """Fold one call into `tool`'s statistics (starting from `prior`) and return the result."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections."""


class MemoryDurationStore(DurationStore):
    """Statistics in this process only: lost on restart. For local runs without Redis."""

    def __init__(self) -> None:
        self._stats: dict[str, DurationStats] = {}

    async def load(self, priors: Mapping[str, DurationStats]) -> dict[str, DurationStats]:
        return {tool: self._stats.get(tool, seed) for tool, seed in priors.items()}

    async def observe(
        self, tool: str, seconds: float, prior: DurationStats, max_weight: float
    ) -> DurationStats:
        self._stats[tool] = self._stats.get(tool, prior).updated(seconds, max_weight)
        return self._stats[tool]

    async def close(self) -> None:
        return None


# KEYS[1]: the tool's hash. ARGV: seconds, max weight, then the prior's weight, mean, variance.
# Numbers go back as strings: Redis would truncate Lua numbers to integers.
_UPDATE_SCRIPT = """
local stored = redis.call('HMGET', KEYS[1], 'count', 'weight', 'mean', 'variance')
local count = tonumber(stored[1]) or 0
local weight = tonumber(stored[2]) or tonumber(ARGV[3])
local mean = tonumber(stored[3]) or tonumber(ARGV[4])
local variance = tonumber(stored[4]) or tonumber(ARGV[5])
local seconds = tonumber(ARGV[1])
weight = math.min(weight + 1, tonumber(ARGV[2]))
local alpha = 1 / weight
local delta = seconds - mean
mean = mean + alpha * delta
variance = (1 - alpha) * (variance + alpha * delta * delta)
count = count + 1
local out = {tostring(count), string.format('%.17g', weight), string.format('%.17g', mean),
             string.format('%.17g', variance)}
redis.call('HSET', KEYS[1], 'count', out[1], 'weight', out[2], 'mean', out[3], 'variance', out[4])
return out
"""


class RedisDurationStore(DurationStore):
    """Statistics in Redis hashes `<prefix><tool>`, shared by every predictor replica."""

    def __init__(self, url: str, prefix: str = REDIS_KEY_PREFIX) -> None:
        from lamps.common.redis_client import open_redis

        self._client: Any = open_redis(url, decode_responses=True)
        self._prefix = prefix
        self._update = self._client.register_script(_UPDATE_SCRIPT)

    async def load(self, priors: Mapping[str, DurationStats]) -> dict[str, DurationStats]:
        async with self._client.pipeline(transaction=False) as pipe:
            for tool in priors:
                pipe.hgetall(self._prefix + tool)
            rows = await pipe.execute()
        return {
            tool: _from_strings(row) if row else seed
            for (tool, seed), row in zip(priors.items(), rows, strict=True)
        }

    async def observe(
        self, tool: str, seconds: float, prior: DurationStats, max_weight: float
    ) -> DurationStats:
        args = [seconds, max_weight, prior.weight, prior.mean, prior.variance]
        count, weight, mean, variance = await self._update(
            keys=[self._prefix + tool], args=[repr(float(a)) for a in args]
        )
        return _from_strings({"count": count, "weight": weight, "mean": mean, "variance": variance})

    async def close(self) -> None:
        await self._client.aclose()


def _from_strings(row: Mapping[str, str]) -> DurationStats:
    return DurationStats(
        count=int(row["count"]),
        weight=float(row["weight"]),
        mean=float(row["mean"]),
        variance=float(row["variance"]),
    )


class DurationTable:
    """What the server reads and writes: a local copy of every known tool's statistics.

    Predictions read the local copy (no round trip per request); outcomes go to the store and the
    copy takes the store's answer. `refresh` picks up what other replicas learned.
    """

    def __init__(
        self,
        store: DurationStore,
        tools: Iterable[str],
        seed_weight: float = DEFAULT_SEED_WEIGHT,
        max_weight: float = DEFAULT_MAX_WEIGHT,
    ) -> None:
        if seed_weight < 0 or max_weight < 1:
            raise ValueError("seed weight must be >= 0 and max weight >= 1")
        self._store = store
        self._priors = {tool: prior(tool, seed_weight) for tool in sorted(set(tools))}
        self._max_weight = max_weight
        self._stats = dict(self._priors)

    @property
    def tools(self) -> tuple[str, ...]:
        return tuple(self._priors)

    def get(self, tool: str) -> DurationStats | None:
        return self._stats.get(tool)

    def expected_seconds(self, tool: str) -> float:
        """The mean duration of `tool`'s calls; 0 for a tool with neither prior nor outcomes."""
        stats = self._stats.get(tool)
        return stats.mean if stats is not None else 0.0

    async def refresh(self) -> None:
        self._stats.update(await self._store.load(self._priors))

    async def observe(self, tool: str, seconds: float) -> DurationStats:
        """Fold one call in; `tool` must be one of `tools`, `seconds` finite and >= 0."""
        if tool not in self._priors:
            raise KeyError(tool)
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"a call duration must be a finite number >= 0, not {seconds}")
        stats = await self._store.observe(tool, seconds, self._priors[tool], self._max_weight)
        self._stats[tool] = stats
        return stats

    async def close(self) -> None:
        await self._store.close()
