"""Per-tool call-duration statistics: priors, online updates, Redis persistence."""

from __future__ import annotations

import math

import pytest
import redis.asyncio as aioredis

from lamps.model.tools import TOOL_STATS, ToolKind
from lamps.predictor.durations import (
    REDIS_KEY_PREFIX,
    DurationStats,
    DurationTable,
    MemoryDurationStore,
    RedisDurationStore,
    prior,
)


def test_known_tools_start_from_table_1_worth_the_seed_weight() -> None:
    stats = prior("chatbot", seed_weight=10)
    published = TOOL_STATS[ToolKind.CHATBOT]
    assert stats == DurationStats(
        count=0, weight=10, mean=published.duration_mean_s, variance=published.duration_std_s**2
    )
    assert prior("weather", seed_weight=10) == DurationStats(0, 0.0, 0.0, 0.0)


def test_updates_are_welfords_mean_and_variance_of_prior_and_calls() -> None:
    stats = DurationStats(count=0, weight=0.0, mean=0.0, variance=0.0)
    calls = [1.0, 2.0, 4.0, 7.0]
    for seconds in calls:
        stats = stats.updated(seconds, max_weight=1000)
    mean = sum(calls) / len(calls)
    assert stats.count == 4
    assert stats.mean == pytest.approx(mean)
    assert stats.variance == pytest.approx(sum((c - mean) ** 2 for c in calls) / len(calls))


def test_the_prior_counts_as_seed_weight_calls() -> None:
    stats = prior("qa", seed_weight=10).updated(1.8, max_weight=1000)
    assert stats.mean == pytest.approx((10 * 0.69 + 1.8) / 11)


def test_past_the_max_weight_old_calls_fade() -> None:
    stats = DurationStats(count=0, weight=0.0, mean=0.0, variance=0.0)
    for _ in range(50):
        stats = stats.updated(1.0, max_weight=10)
    for _ in range(50):
        stats = stats.updated(3.0, max_weight=10)
    # An exact mean would sit at 2.0; a moving average over ~10 calls has followed the change.
    assert stats.mean > 2.9
    assert stats.count == 100


async def test_the_table_serves_means_and_refuses_unknown_tools_and_bad_durations() -> None:
    table = DurationTable(MemoryDurationStore(), ["qa", "math", "weather"], seed_weight=10)
    assert table.tools == ("math", "qa", "weather")
    assert table.expected_seconds("qa") == pytest.approx(0.69)
    assert table.expected_seconds("weather") == 0.0
    await table.observe("weather", 2.0)
    assert table.expected_seconds("weather") == 2.0
    with pytest.raises(KeyError):
        await table.observe("chatbot", 1.0)
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="finite number >= 0"):
            await table.observe("qa", bad)


async def test_redis_applies_the_same_update_atomically_and_keeps_it(redis_server: str) -> None:
    store = RedisDurationStore(redis_server)
    table = DurationTable(store, ["qa"], seed_weight=10, max_weight=20)
    expected = prior("qa", 10)
    for seconds in (0.5, 1.5, 0.9):
        expected = expected.updated(seconds, max_weight=20)
        stats = await table.observe("qa", seconds)
        assert stats.count == expected.count
        assert stats.mean == pytest.approx(expected.mean, rel=1e-12)
        assert stats.variance == pytest.approx(expected.variance, rel=1e-12)
    await table.close()

    reopened = DurationTable(RedisDurationStore(redis_server), ["qa", "math"], seed_weight=10)
    await reopened.refresh()
    assert reopened.get("qa") == stats
    assert reopened.get("math") == prior("math", 10)
    await reopened.close()

    client = aioredis.from_url(redis_server, decode_responses=True)
    assert (await client.hgetall(REDIS_KEY_PREFIX + "qa"))["count"] == "3"
    await client.aclose()


async def test_replicas_sharing_redis_see_each_others_calls(redis_server: str) -> None:
    a = DurationTable(RedisDurationStore(redis_server), ["math"], seed_weight=0)
    b = DurationTable(RedisDurationStore(redis_server), ["math"], seed_weight=0)
    await a.observe("math", 1.0)
    await b.observe("math", 3.0)
    await a.refresh()
    assert a.get("math") == b.get("math")
    assert a.expected_seconds("math") == pytest.approx(2.0)
    await a.close()
    await b.close()
