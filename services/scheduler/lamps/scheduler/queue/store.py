"""The queue store interface: what the scheduler persists and how it reads it back.

The scheduler keeps its working state in memory and writes each scheduling round's changes as one
`Commit`, applied atomically (one Lua script on Redis). A restarted or newly elected scheduler
rebuilds from `load()`. Every write of a commit is fenced by the leader lease: a replica that lost
its lease cannot overwrite its successor's state.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field


class StoreError(RuntimeError):
    """The store could not be reached or refused an operation."""


class NotLeaderError(StoreError):
    """A fenced commit from a replica that no longer holds the leader lease."""


@dataclass(slots=True)
class Commit:
    """Writes that move together; empty fields write nothing."""

    # Record fields to set, per request id (the first write of a request makes it active).
    records: dict[str, dict[str, bytes]] = field(default_factory=dict)
    # Requests entering (or re-ranked in) the ranked queue, with their rank.
    enqueue: dict[str, float] = field(default_factory=dict)
    # Requests leaving the ranked queue and the starved lane.
    dequeue: set[str] = field(default_factory=set)
    # The starved lane, head first, when it changed (None leaves it as it is).
    starved: list[str] | None = None
    # Events appended to request logs: (offset of the first, the events). An event at an offset
    # the log already holds is skipped, so a repeated append is harmless.
    events: dict[str, tuple[int, list[bytes]]] = field(default_factory=dict)
    # Requests that ended: they leave the active set and expire after the retention.
    finished: set[str] = field(default_factory=set)
    # Idempotency keys and the value to keep for them (the request id and a body digest).
    idempotency: dict[str, bytes] = field(default_factory=dict)
    # Worker leases renewed, with what to keep about each worker.
    workers: dict[str, bytes] = field(default_factory=dict)
    # Observed tool-call durations, in seconds.
    tool_durations: list[tuple[str, float]] = field(default_factory=list)
    # Scheduler-wide values (counters that must survive a restart).
    meta: dict[str, bytes] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(
            self.records
            or self.enqueue
            or self.dequeue
            or self.starved is not None
            or self.events
            or self.finished
            or self.idempotency
            or self.workers
            or self.tool_durations
            or self.meta
        )

    def append_events(self, request_id: str, first_offset: int, events: list[bytes]) -> None:
        """Add events to the commit; they must continue any already added for the request."""
        if request_id in self.events:
            start, pending = self.events[request_id]
            if start + len(pending) != first_offset:
                raise ValueError(f"events of {request_id} are not contiguous in the commit")
            pending.extend(events)
        else:
            self.events[request_id] = (first_offset, list(events))


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything a scheduler needs to take over: active records, the queue and the lane."""

    records: dict[str, dict[str, bytes]]
    # The ranked queue, best (lowest rank) first.
    queue: list[tuple[str, float]]
    starved: list[str]
    meta: dict[str, bytes]


@dataclass(frozen=True, slots=True)
class ToolStats:
    """Calls seen of one tool and their mean duration."""

    count: int
    mean_seconds: float


class Store(ABC):
    """The scheduler's durable state (see the module docstring). Implementations count their
    round trips in `round_trips`, so benchmarks can report them."""

    round_trips: int = 0

    @abstractmethod
    async def commit(self, commit: Commit, fence: str | None = None) -> None:
        """Apply `commit` atomically; with `fence`, only while that replica holds the leader lease
        (NotLeaderError otherwise, and nothing is written)."""

    @abstractmethod
    async def load(self) -> Snapshot:
        """The active requests, the queue and the lane."""

    @abstractmethod
    async def record(self, request_id: str) -> dict[str, bytes] | None:
        """One request's record, active or retained after it ended; None if unknown."""

    @abstractmethod
    async def events(self, request_id: str, from_offset: int, limit: int) -> list[bytes]:
        """Up to `limit` events of a request's log from `from_offset` on."""

    @abstractmethod
    async def idempotency(self, keys: list[str]) -> dict[str, bytes]:
        """The stored values of those of `keys` that are known."""

    @abstractmethod
    async def acquire_leader(self, replica_id: str, lease_seconds: float) -> bool:
        """Take the leader lease if free, or renew it if `replica_id` holds it; False otherwise."""

    @abstractmethod
    async def release_leader(self, replica_id: str) -> None:
        """Give the lease up if `replica_id` holds it, so a standby need not wait for expiry."""

    @abstractmethod
    async def leader(self) -> str | None:
        """Who holds the leader lease, if anyone."""

    @abstractmethod
    async def worker_leases(self) -> dict[str, bytes]:
        """Workers whose lease has not expired, and what was kept about each."""

    @abstractmethod
    async def tool_stats(self) -> dict[str, ToolStats]:
        """Per-tool call-duration statistics."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections."""


def open_store(
    url: str,
    *,
    prefix: str = "lamps",
    worker_lease_seconds: float = 10.0,
    retention_seconds: float = 86400.0,
) -> Store:
    """A store for `url`: `memory://` for the in-memory store, `redis://` or `rediss://` (or
    `unix://`) for Redis."""
    from lamps.scheduler.queue.memory import MemoryStore
    from lamps.scheduler.queue.redis import RedisStore

    if url == "memory://":
        return MemoryStore(worker_lease_seconds=worker_lease_seconds)
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore(
            url,
            prefix=prefix,
            worker_lease_seconds=worker_lease_seconds,
            retention_seconds=retention_seconds,
        )
    raise ValueError(
        f"unsupported store URL {url!r}: use redis://host:port/db, rediss://..., unix://path "
        "or memory://"
    )
