"""The waiting queue's order: a ranked set plus LAMPS' starvation lane, in memory.

A request passed over `threshold` times (others admitted while it waited) moves to a FIFO lane that
is served before the ranked set. The paper counts iterations; counting passes instead keeps a
request that waits only because memory is full, while nobody is admitted, out of the lane, so the
guard catches starvation by the ranking and not queueing that every policy would see.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


@dataclass(order=True, slots=True)
class _Entry(Generic[K]):
    rank: float
    tiebreak: float
    sequence: int
    key: K = field(compare=False)
    passes_at_push: int = field(compare=False, default=0)
    live: bool = field(compare=False, default=True)


class RankedQueue(Generic[K]):
    """Keys by (rank, tiebreak, insertion); starved keys first, in the order they starved."""

    def __init__(self, starvation_threshold: int | None = None) -> None:
        if starvation_threshold is not None and starvation_threshold < 1:
            raise ValueError("the starvation threshold must be at least 1")
        self._threshold = starvation_threshold
        self._heap: list[_Entry[K]] = []
        self._entries: dict[K, _Entry[K]] = {}
        self._arrivals: deque[_Entry[K]] = deque()
        self._starved: deque[_Entry[K]] = deque()
        self._passes = 0
        self._counter = itertools.count()
        self.starved_total = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def push(self, key: K, rank: float, tiebreak: float = 0.0, passed_over: int = 0) -> None:
        """Queue `key`; `passed_over` carries a starvation count over from before (a restored
        queue), so a request that had waited long keeps its place on the way to the lane."""
        if key in self._entries:
            raise KeyError(f"{key!r} is already queued")
        if passed_over < 0:
            raise ValueError("passed_over must not be negative")
        entry = _Entry(rank, tiebreak, next(self._counter), key, self._passes - passed_over)
        self._entries[key] = entry
        heapq.heappush(self._heap, entry)
        if self._threshold is not None:
            self._arrivals.append(entry)

    def remove(self, key: K) -> bool:
        entry = self._entries.pop(key, None)
        if entry is None:
            return False
        entry.live = False
        return True

    def passed_over(self, key: K) -> int:
        """How many requests were admitted ahead of `key` since it was queued."""
        entry = self._entries[key]
        return self._passes - entry.passes_at_push

    def peek(self) -> K | None:
        entry = self._head()
        return None if entry is None else entry.key

    def pop(self) -> K:
        entry = self._head()
        if entry is None:
            raise IndexError("pop from an empty queue")
        if self._starved and self._starved[0] is entry:
            self._starved.popleft()
        else:
            heapq.heappop(self._heap)
        entry.live = False
        del self._entries[entry.key]
        self._passes += 1
        return entry.key

    def starved(self) -> list[K]:
        """Keys in the starvation lane, head first."""
        self._promote()
        return [entry.key for entry in self._starved if entry.live]

    def ranked(self) -> list[K]:
        """Every queued key in the order it would be served."""
        self._promote()
        lane = [entry.key for entry in self._starved if entry.live]
        rest = sorted(entry for entry in self._heap if entry.live)
        return lane + [entry.key for entry in rest]

    def _head(self) -> _Entry[K] | None:
        self._promote()
        while self._starved and not self._starved[0].live:
            self._starved.popleft()
        if self._starved:
            return self._starved[0]
        while self._heap and not self._heap[0].live:
            heapq.heappop(self._heap)
        return self._heap[0] if self._heap else None

    def _promote(self) -> None:
        if self._threshold is None:
            return
        while self._arrivals:
            entry = self._arrivals[0]
            if entry.live and self._passes - entry.passes_at_push < self._threshold:
                return
            self._arrivals.popleft()
            if entry.live:
                # The heap keeps the old entry, dead, so the ranked set skips it.
                starved = _Entry(
                    entry.rank, entry.tiebreak, entry.sequence, entry.key, entry.passes_at_push
                )
                entry.live = False
                self._entries[entry.key] = starved
                self._starved.append(starved)
                self.starved_total += 1
