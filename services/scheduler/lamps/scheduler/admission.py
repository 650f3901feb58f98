"""The admission limit: how many accepted requests may wait for a worker before new ones are
shed with RESOURCE_EXHAUSTED and a hint of when to retry.

What counts is what a newcomer would wait behind: the ranked queue and the starved lane (requests
queued again after a Discard or a lost worker included), plus submissions still being predicted.
The limit only ever refuses new submissions; nothing already accepted is dropped or held back.
The count is read from the leader's in-memory queue, which a new leader rebuilds from the store,
so it is right after a restart or failover and costs O(1) per call.
"""

from __future__ import annotations

import math
import time
from collections import deque

import grpc

from lamps.scheduler import metrics
from lamps.scheduler.validation import RequestError

# Admissions older than this say little about how fast the queue drains now.
RATE_WINDOW_S = 30.0
RATE_SAMPLES = 1024
MIN_RETRY_S = 1
MAX_RETRY_S = 60


class AdmissionGate:
    """Sheds submissions while `max_waiting` requests wait (0: never), and estimates how long a
    shed client should wait from the recent rate of admissions to workers."""

    def __init__(self, max_waiting: int) -> None:
        self.max_waiting = max_waiting
        self._admissions: deque[float] = deque(maxlen=RATE_SAMPLES)

    def admitted(self) -> None:
        """A request went to a worker: one waiting place freed."""
        self._admissions.append(time.monotonic())

    def check(self, waiting: int) -> None:
        """RequestError(RESOURCE_EXHAUSTED) with a retry hint if `waiting` is at the limit."""
        if not self.max_waiting or waiting < self.max_waiting:
            return
        retry_s = self.retry_after_s(waiting)
        metrics.SHED.inc()
        raise RequestError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"the scheduler is full: {waiting} requests waiting for a worker (limit "
            f"{self.max_waiting}); retry in {retry_s} s",
            retry_after_s=retry_s,
        )

    def retry_after_s(self, waiting: int) -> int:
        """Seconds until the queue is likely half as full as the limit, at the recent rate of
        admissions; the longest hint when nothing was admitted lately (no worker ready)."""
        now = time.monotonic()
        samples = self._admissions
        while samples and samples[0] < now - RATE_WINDOW_S:
            samples.popleft()
        if not samples:
            return MAX_RETRY_S
        rate = len(samples) / max(now - samples[0], 1.0)
        excess = waiting - self.max_waiting // 2
        return min(max(math.ceil(excess / rate), MIN_RETRY_S), MAX_RETRY_S)
