"""Where the scheduler's state lives: one store interface, a Redis implementation (live) and an
in-memory one (single process, tests and the simulator), both run through one contract suite."""

from lamps.scheduler.queue.memory import MemoryStore
from lamps.scheduler.queue.redis import RedisStore
from lamps.scheduler.queue.store import (
    Commit,
    NotLeaderError,
    Snapshot,
    Store,
    StoreError,
    ToolStats,
    open_store,
)

__all__ = [
    "Commit",
    "MemoryStore",
    "NotLeaderError",
    "RedisStore",
    "Snapshot",
    "Store",
    "StoreError",
    "ToolStats",
    "open_store",
]
