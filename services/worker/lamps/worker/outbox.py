"""What the scheduler must hear from a worker: updates waiting for the next report, and a journal
per request kept for re-sending after a reconnect (delivery is at least once; see agent.py)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from lamps.v1 import scheduler_pb2 as pb

# Updates that go out at once rather than with the next heartbeat.
URGENT = frozenset({"started", "intercepted", "released", "completed", "failed", "refused"})
ENDS = frozenset({"released", "completed", "failed"})


def _merge(last: pb.RequestUpdate, update: pb.RequestUpdate) -> bool:
    """Merge a token delta into the previous one when they are contiguous."""
    if update.WhichOneof("update") != "tokens" or last.WhichOneof("update") != "tokens":
        return False
    if last.tokens.start_index + len(last.tokens.token_ids) != update.tokens.start_index:
        return False
    last.tokens.token_ids.extend(update.tokens.token_ids)
    last.tokens.text += update.tokens.text
    return True


def _copy(update: pb.RequestUpdate) -> pb.RequestUpdate:
    copy = pb.RequestUpdate()
    copy.CopyFrom(update)
    return copy


@dataclass
class _Journal:
    """Everything reported about one request since this worker took it."""

    updates: list[pb.RequestUpdate] = field(default_factory=list)
    ended_at: float | None = None


class Outbox:
    """Pending updates (token deltas merged per request) and the journals behind them."""

    def __init__(self) -> None:
        self._journals: dict[str, _Journal] = {}
        self._pending: list[pb.RequestUpdate] = []
        self._last: dict[str, pb.RequestUpdate] = {}  # a request's latest pending entry

    def __len__(self) -> int:
        """Updates waiting to be sent."""
        return len(self._pending)

    @property
    def retained(self) -> int:
        """Requests whose journals are kept."""
        return len(self._journals)

    def open(self, request_id: str) -> None:
        """A fresh journal: the request is (re)admitted here."""
        self._journals[request_id] = _Journal()

    def forget(self, request_id: str) -> None:
        """Drop the request's journal: the scheduler no longer wants to hear of it."""
        self._journals.pop(request_id, None)

    def journaled(self) -> list[str]:
        """Requests with a journal: held, or ended with news the scheduler may not have."""
        return list(self._journals)

    def has(self, request_id: str) -> bool:
        return request_id in self._journals

    def record(self, update: pb.RequestUpdate, now: float) -> bool:
        """Journal and queue an engine's update; True if it should go out at once. An update
        about a request already forgotten (aborted, dropped) was queued by the engine before it
        let go: the scheduler does not want it, and it must not bring a journal back."""
        journal = self._journals.get(update.request_id)
        if journal is None:
            return False
        if not (journal.updates and _merge(journal.updates[-1], update)):
            journal.updates.append(_copy(update))
        if update.WhichOneof("update") in ENDS:
            journal.ended_at = now
        return self.queue(update)

    def queue(self, update: pb.RequestUpdate) -> bool:
        """Queue an update without journaling it (a refusal); True if urgent."""
        last = self._last.get(update.request_id)
        if last is None or not _merge(last, update):
            entry = _copy(update)
            self._pending.append(entry)
            self._last[update.request_id] = entry
        return update.WhichOneof("update") in URGENT

    def take(self) -> list[pb.RequestUpdate]:
        """Everything pending, for one report."""
        updates, self._pending, self._last = self._pending, [], {}
        return updates

    def put_back(self, updates: list[pb.RequestUpdate]) -> None:
        """A report that could not be written: its updates go first next time."""
        self._pending[:0] = updates

    def prune(self, now: float, lease_s: float) -> None:
        """Forget requests that ended more than a lease ago: by then the scheduler has either
        heard of their end or re-queued them."""
        for request_id, journal in list(self._journals.items()):
            if journal.ended_at is not None and now - journal.ended_at > lease_s:
                del self._journals[request_id]

    def resend(self, now: float) -> None:
        """After a (re)registration: every journal replaces what was waiting to be sent.

        Nothing is pruned here, and the lease of an ended request's journal starts again: the
        Register just claimed every journaled request, and a scheduler that was down (or a
        standby that took over) for longer than a lease has not heard of ends that happened
        meanwhile. Pruning them now would leave the new leader waiting forever on a request
        this worker no longer holds."""
        self._pending, self._last = [], {}
        for journal in self._journals.values():
            if journal.ended_at is not None:
                journal.ended_at = now
            for update in journal.updates:
                self.queue(update)

    def settled(self, held: Iterable[str]) -> bool:
        """Whether every request the engine no longer holds has its end journaled."""
        holding = set(held)
        return all(j.ended_at is not None or r in holding for r, j in self._journals.items())
