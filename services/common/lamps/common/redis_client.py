"""One way to open Redis for every service that keeps state there (scheduler, predictor)."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

# A restarted Redis (lamps up restarts a crashed one on its data) leaves every pooled connection
# dead, and redis-py's asyncio client does not retry by default: the first command on each would
# fail. Retried on a fresh connection it goes through; while Redis is down, a command still
# fails within about a second, for the caller to handle.
RETRIES = 3
BACKOFF_BASE_S = 0.05
BACKOFF_CAP_S = 0.5


def open_redis(url: str, *, decode_responses: bool) -> Any:
    """An asyncio Redis client for `url` that reconnects and retries a command whose connection
    broke (`Any`: redis-py's client type is generic only in its stubs)."""
    return aioredis.from_url(
        url,
        decode_responses=decode_responses,
        retry=Retry(ExponentialBackoff(cap=BACKOFF_CAP_S, base=BACKOFF_BASE_S), RETRIES),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
