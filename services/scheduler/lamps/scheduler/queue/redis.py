"""The queue store in Redis (DESIGN.md section 5).

Keys, under a prefix (default `lamps`):
- `req:<id>` hash: the request's record; `active` set: requests not yet ended;
- `queue` sorted set: the ranked queue by rank; `starved` list: the starvation lane, head first;
- `events:<id>` stream: the request's event log, entry id `0-<offset + 1>` so a Watch can resume
  at any offset and a repeated append is refused by Redis instead of duplicated;
- `idem:<key>`: idempotency keys; `worker:<id>`: worker leases (TTL); `tools` hash: per-tool call
  counts and summed durations; `meta` hash; `leader`: the leader lease (TTL).

A whole commit is one Lua script (one round trip, atomic, fenced by the leader lease). The script
runs a list of commands from a short allow-list; keys are built by this module only. Scripts touch
keys they do not declare, so this store needs a standalone Redis (or one primary), not a cluster.
"""

from __future__ import annotations

from typing import Any

from redis.exceptions import RedisError, ResponseError

from lamps.common.redis_client import open_redis
from lamps.scheduler.queue.store import (
    Commit,
    NotLeaderError,
    Snapshot,
    Store,
    StoreError,
    ToolStats,
)

# ARGV[2] holds every command of the commit as netstrings ("<length>:<bytes>"): a count, then
# that many items, command name first. One argument instead of hundreds keeps the client's
# encoding cost (the dominant cost of a commit in redis-py) to one join.
_COMMIT = """
if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('NOTLEADER')
end
local allowed = {HSET=1, ZADD=1, ZREM=1, LREM=1, DEL=1, RPUSH=1, SADD=1, SREM=1, EXPIRE=1,
                 SET=1, HINCRBY=1, HINCRBYFLOAT=1}
local payload = ARGV[2]
local pos = 1
local size = #payload
local function take()
  local colon = string.find(payload, ':', pos, true)
  local length = tonumber(string.sub(payload, pos, colon - 1))
  local item = string.sub(payload, colon + 1, colon + length)
  pos = colon + length + 1
  return item
end
while pos <= size do
  local count = tonumber(take())
  local args = {}
  for j = 1, count do
    args[j] = take()
  end
  local command = args[1]
  if command == 'XADD' then
    -- An entry id at or below the last is refused: the event is already in the log.
    redis.pcall(unpack(args))
  elseif allowed[command] then
    redis.call(unpack(args))
  else
    return redis.error_reply('command not allowed in a commit: ' .. command)
  end
end
return 1
"""

_ACQUIRE = """
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

_LOAD_BATCH = 500


def _bytes(item: Any) -> bytes:
    if isinstance(item, bytes):
        return item
    return str(item).encode()


def _netstring(item: bytes) -> bytes:
    return b"%d:%b" % (len(item), item)


class RedisStore(Store):
    """A `Store` in Redis (see the module docstring)."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "lamps",
        worker_lease_seconds: float = 10.0,
        retention_seconds: float = 86400.0,
    ) -> None:
        self._client: Any = open_redis(url, decode_responses=False)
        self._prefix = prefix
        self._worker_lease_ms = max(int(worker_lease_seconds * 1000), 1)
        self._retention_s = max(int(retention_seconds), 1)
        self._commit = self._client.register_script(_COMMIT)
        self._acquire = self._client.register_script(_ACQUIRE)
        self._release = self._client.register_script(_RELEASE)

    def _key(self, *parts: str) -> str:
        return ":".join((self._prefix, *parts))

    async def _call(self, coroutine: Any) -> Any:
        self.round_trips += 1
        try:
            return await coroutine
        except ResponseError as exc:
            if str(exc).startswith("NOTLEADER"):
                raise NotLeaderError("this replica no longer holds the leader lease") from None
            raise StoreError(f"Redis refused the operation: {exc}") from exc
        except (RedisError, OSError) as exc:
            raise StoreError(f"Redis is unreachable: {exc}") from exc

    async def commit(self, commit: Commit, fence: str | None = None) -> None:
        if not commit:
            return
        parts: list[bytes] = []
        for op in self._ops(commit):
            parts.append(_netstring(str(len(op)).encode()))
            parts.extend(_netstring(_bytes(item)) for item in op)
        payload = b"".join(parts)
        await self._call(self._commit(keys=[self._key("leader")], args=[fence or "", payload]))

    def _ops(self, commit: Commit) -> list[list[Any]]:
        ops: list[list[Any]] = []
        active = self._key("active")
        for request_id, fields in commit.records.items():
            flat = [item for pair in fields.items() for item in pair]
            ops.append(["HSET", self._key("req", request_id), *flat])
            ops.append(["SADD", active, request_id])
        queue, starved = self._key("queue"), self._key("starved")
        for request_id, rank in commit.enqueue.items():
            ops.append(["ZADD", queue, repr(float(rank)), request_id])
        for request_id in commit.dequeue:
            ops.append(["ZREM", queue, request_id])
            ops.append(["LREM", starved, 0, request_id])
        if commit.starved is not None:
            ops.append(["DEL", starved])
            if commit.starved:
                ops.append(["RPUSH", starved, *commit.starved])
        for request_id, (first, events) in commit.events.items():
            stream = self._key("events", request_id)
            for offset, event in enumerate(events, start=first):
                ops.append(["XADD", stream, f"0-{offset + 1}", "e", event])
        for request_id in commit.finished:
            ops.append(["SREM", active, request_id])
            ops.append(["EXPIRE", self._key("req", request_id), self._retention_s])
            ops.append(["EXPIRE", self._key("events", request_id), self._retention_s])
        for key, value in commit.idempotency.items():
            ops.append(["SET", self._key("idem", key), value, "EX", self._retention_s])
        for worker_id, value in commit.workers.items():
            ops.append(["SET", self._key("worker", worker_id), value, "PX", self._worker_lease_ms])
        tools = self._key("tools")
        for tool, seconds in commit.tool_durations:
            ops.append(["HINCRBY", tools, f"{tool}\0count", 1])
            ops.append(["HINCRBYFLOAT", tools, f"{tool}\0sum", repr(float(seconds))])
        if commit.meta:
            flat = [item for pair in commit.meta.items() for item in pair]
            ops.append(["HSET", self._key("meta"), *flat])
        return ops

    async def load(self) -> Snapshot:
        members = await self._call(self._client.smembers(self._key("active")))
        ids = sorted(member.decode() for member in members)
        records: dict[str, dict[str, bytes]] = {}
        for start in range(0, len(ids), _LOAD_BATCH):
            chunk = ids[start : start + _LOAD_BATCH]
            pipe = self._client.pipeline(transaction=False)
            for request_id in chunk:
                pipe.hgetall(self._key("req", request_id))
            found = await self._call(pipe.execute())
            for request_id, fields in zip(chunk, found, strict=True):
                if fields:
                    records[request_id] = {k.decode(): v for k, v in fields.items()}
        pipe = self._client.pipeline(transaction=False)
        pipe.zrange(self._key("queue"), 0, -1, withscores=True)
        pipe.lrange(self._key("starved"), 0, -1)
        pipe.hgetall(self._key("meta"))
        queue, starved, meta = await self._call(pipe.execute())
        return Snapshot(
            records=records,
            queue=[(member.decode(), float(score)) for member, score in queue],
            starved=[member.decode() for member in starved],
            meta={k.decode(): v for k, v in meta.items()},
        )

    async def record(self, request_id: str) -> dict[str, bytes] | None:
        fields = await self._call(self._client.hgetall(self._key("req", request_id)))
        return {k.decode(): v for k, v in fields.items()} if fields else None

    async def events(self, request_id: str, from_offset: int, limit: int) -> list[bytes]:
        entries = await self._call(
            self._client.xrange(
                self._key("events", request_id), min=f"0-{from_offset + 1}", max="+", count=limit
            )
        )
        return [fields[b"e"] for _, fields in entries]

    async def idempotency(self, keys: list[str]) -> dict[str, bytes]:
        if not keys:
            return {}
        values = await self._call(self._client.mget([self._key("idem", key) for key in keys]))
        return {key: value for key, value in zip(keys, values, strict=True) if value is not None}

    async def acquire_leader(self, replica_id: str, lease_seconds: float) -> bool:
        ms = max(int(lease_seconds * 1000), 1)
        return bool(
            await self._call(self._acquire(keys=[self._key("leader")], args=[replica_id, ms]))
        )

    async def release_leader(self, replica_id: str) -> None:
        await self._call(self._release(keys=[self._key("leader")], args=[replica_id]))

    async def leader(self) -> str | None:
        value = await self._call(self._client.get(self._key("leader")))
        return value.decode() if value is not None else None

    async def worker_leases(self) -> dict[str, bytes]:
        pattern = self._key("worker", "*")
        keys = [key async for key in self._client.scan_iter(match=pattern, count=500)]
        self.round_trips += 1
        if not keys:
            return {}
        values = await self._call(self._client.mget(keys))
        cut = len(self._key("worker", ""))
        return {
            key.decode()[cut:]: value
            for key, value in zip(keys, values, strict=True)
            if value is not None
        }

    async def tool_stats(self) -> dict[str, ToolStats]:
        fields = await self._call(self._client.hgetall(self._key("tools")))
        counts: dict[str, int] = {}
        sums: dict[str, float] = {}
        for raw_key, raw_value in fields.items():
            tool, _, kind = raw_key.decode().rpartition("\0")
            if kind == "count":
                counts[tool] = int(raw_value)
            else:
                sums[tool] = float(raw_value)
        return {
            tool: ToolStats(count, sums.get(tool, 0.0) / count)
            for tool, count in counts.items()
            if count > 0
        }

    async def close(self) -> None:
        await self._client.aclose()
