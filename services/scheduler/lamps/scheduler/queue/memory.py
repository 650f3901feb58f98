"""The queue store in this process's memory: no durability, same semantics as Redis."""

from __future__ import annotations

import time
from collections.abc import Callable

from lamps.scheduler.queue.store import Commit, NotLeaderError, Snapshot, Store, ToolStats


class MemoryStore(Store):
    """A `Store` in dictionaries; leases expire by `clock` (monotonic seconds)."""

    def __init__(
        self,
        *,
        worker_lease_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._worker_lease_s = worker_lease_seconds
        self._records: dict[str, dict[str, bytes]] = {}
        self._active: set[str] = set()
        self._queue: dict[str, float] = {}
        self._order: dict[str, int] = {}
        self._starved: list[str] = []
        self._events: dict[str, list[bytes]] = {}
        self._idempotency: dict[str, bytes] = {}
        self._workers: dict[str, tuple[bytes, float]] = {}
        self._tools: dict[str, tuple[int, float]] = {}
        self._meta: dict[str, bytes] = {}
        self._leader: tuple[str, float] | None = None
        self._sequence = 0

    async def commit(self, commit: Commit, fence: str | None = None) -> None:
        self.round_trips += 1
        if fence is not None and self._holder() != fence:
            raise NotLeaderError(f"replica {fence!r} does not hold the leader lease")
        for request_id, fields in commit.records.items():
            self._records.setdefault(request_id, {}).update(fields)
            self._active.add(request_id)
        for request_id, rank in commit.enqueue.items():
            if request_id not in self._queue:
                self._sequence += 1
                self._order[request_id] = self._sequence
            self._queue[request_id] = rank
        for request_id in commit.dequeue:
            self._queue.pop(request_id, None)
            self._order.pop(request_id, None)
            if request_id in self._starved:
                self._starved.remove(request_id)
        if commit.starved is not None:
            self._starved = list(commit.starved)
        for request_id, (first, events) in commit.events.items():
            log = self._events.setdefault(request_id, [])
            for offset, event in enumerate(events, start=first):
                if offset == len(log):
                    log.append(event)
        self._active -= commit.finished
        self._idempotency.update(commit.idempotency)
        expires = self._clock() + self._worker_lease_s
        for worker_id, value in commit.workers.items():
            self._workers[worker_id] = (value, expires)
        for tool, seconds in commit.tool_durations:
            count, mean = self._tools.get(tool, (0, 0.0))
            self._tools[tool] = (count + 1, mean + (seconds - mean) / (count + 1))
        self._meta.update(commit.meta)

    async def load(self) -> Snapshot:
        self.round_trips += 1
        queue = sorted(self._queue.items(), key=lambda item: (item[1], self._order[item[0]]))
        return Snapshot(
            records={rid: dict(self._records[rid]) for rid in self._active},
            queue=queue,
            starved=list(self._starved),
            meta=dict(self._meta),
        )

    async def record(self, request_id: str) -> dict[str, bytes] | None:
        self.round_trips += 1
        found = self._records.get(request_id)
        return dict(found) if found is not None else None

    async def events(self, request_id: str, from_offset: int, limit: int) -> list[bytes]:
        self.round_trips += 1
        return list(self._events.get(request_id, [])[from_offset : from_offset + limit])

    async def idempotency(self, keys: list[str]) -> dict[str, bytes]:
        self.round_trips += 1
        return {key: self._idempotency[key] for key in keys if key in self._idempotency}

    def _holder(self) -> str | None:
        if self._leader is None or self._leader[1] <= self._clock():
            return None
        return self._leader[0]

    async def acquire_leader(self, replica_id: str, lease_seconds: float) -> bool:
        self.round_trips += 1
        holder = self._holder()
        if holder not in (None, replica_id):
            return False
        self._leader = (replica_id, self._clock() + lease_seconds)
        return True

    async def release_leader(self, replica_id: str) -> None:
        self.round_trips += 1
        if self._holder() == replica_id:
            self._leader = None

    async def leader(self) -> str | None:
        self.round_trips += 1
        return self._holder()

    async def worker_leases(self) -> dict[str, bytes]:
        self.round_trips += 1
        now = self._clock()
        return {wid: value for wid, (value, until) in self._workers.items() if until > now}

    async def tool_stats(self) -> dict[str, ToolStats]:
        self.round_trips += 1
        return {tool: ToolStats(count, mean) for tool, (count, mean) in self._tools.items()}

    async def close(self) -> None:
        return None
