"""What the harness saw of each request, and the per-fault counts made from it.

A request is *lost* when it was accepted and never reached an end by the drain deadline, or when
the scheduler no longer knows it. It is *duplicated* when one idempotency key got two ids, when
its event stream repeated or skipped an offset or a token index, when it ended twice, or when a
finished replay did not generate exactly the tokens its script asked for.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

TERMINAL = ("FINISHED", "FAILED", "CANCELLED")


@dataclass
class RequestLog:
    """One request as the client saw it, from its first Submit to the cross-check."""

    key: str
    expected_tokens: int
    sent_s: float = 0.0
    request_ids: set[str] = field(default_factory=set)
    # RESOURCE_EXHAUSTED answers, and the retry hints they carried (None: no hint).
    shed_answers: int = 0
    retry_hints: list[float | None] = field(default_factory=list)
    # Set when the harness stopped trying to submit: the last error.
    refused: str = ""
    accepted_s: float | None = None
    next_offset: int = 0
    tokens: int = 0
    terminal_events: int = 0
    state: str = ""
    error: str = ""
    completion_tokens: int = 0
    # Stream anomalies: offsets or token indexes repeated or skipped, events after the end.
    anomalies: list[str] = field(default_factory=list)
    # What GetRequest said once the run drained ("" before the cross-check).
    recorded_state: str = ""
    resumes: int = 0
    # Tool calls that ended in an error the model read (a tool runner that hung: a timeout).
    tool_errors: list[str] = field(default_factory=list)

    @property
    def accepted(self) -> bool:
        return self.accepted_s is not None

    @property
    def shed(self) -> bool:
        """Refused for load and never accepted."""
        return not self.accepted and self.shed_answers > 0

    @property
    def ended(self) -> bool:
        return self.terminal_events > 0

    @property
    def finished(self) -> bool:
        return self.state == "FINISHED"

    @property
    def failed(self) -> bool:
        return self.ended and not self.finished

    @property
    def lost(self) -> bool:
        if not self.accepted:
            return False
        return not self.ended or self.recorded_state not in TERMINAL

    def duplications(self) -> list[str]:
        """Why this request counts as duplicated (empty: it does not)."""
        reasons = list(self.anomalies)
        if len(self.request_ids) > 1:
            reasons.append(f"one key, {len(self.request_ids)} ids")
        if self.terminal_events > 1:
            reasons.append(f"{self.terminal_events} terminal events")
        if self.finished and self.tokens != self.expected_tokens:
            reasons.append(f"streamed {self.tokens} tokens of {self.expected_tokens}")
        if self.finished and self.completion_tokens != self.expected_tokens:
            reasons.append(f"usage says {self.completion_tokens} of {self.expected_tokens}")
        if self.ended and self.recorded_state and self.recorded_state != self.state:
            reasons.append(f"ended {self.state}, recorded {self.recorded_state}")
        return reasons

    @property
    def duplicated(self) -> bool:
        return bool(self.duplications())


@dataclass(frozen=True)
class Tally:
    """The counts of one run (a fault, or a load phase)."""

    offered: int
    accepted: int
    finished: int
    failed: int
    lost: int
    duplicated: int
    shed: int
    errors: dict[str, int]
    # Examples of what went wrong, for the report and test failures.
    lost_examples: list[str]
    duplicated_examples: list[str]
    shed_with_hint: int
    unaccepted: int
    tool_errors: dict[str, int]

    @property
    def consistent(self) -> bool:
        """Every accepted request ended exactly once, finished or failed."""
        return self.finished + self.failed == self.accepted and self.lost == 0

    def row(self, name: str) -> dict[str, Any]:
        """The JSON row of `benchmarks/reliability.py --json`."""
        return {
            "fault": name,
            "accepted": self.accepted,
            "finished": self.finished,
            "failed": self.failed,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "shed": self.shed,
            "errors": self.errors,
            "tool_errors": sum(self.tool_errors.values()),
            "tool_error_messages": self.tool_errors,
        }


def tally(logs: list[RequestLog], examples: int = 3) -> Tally:
    """Count `logs`; errors are the failed requests' messages, by message."""
    lost = [log for log in logs if log.lost]
    duplicated = [log for log in logs if log.duplicated]
    shed = [log for log in logs if log.shed]
    return Tally(
        offered=len(logs),
        accepted=sum(log.accepted for log in logs),
        finished=sum(log.finished for log in logs),
        failed=sum(log.failed for log in logs),
        lost=len(lost),
        duplicated=len(duplicated),
        shed=len(shed),
        errors=dict(Counter(log.error or log.state for log in logs if log.failed)),
        lost_examples=[_describe_lost(log) for log in lost[:examples]],
        duplicated_examples=[
            f"{log.key}: {'; '.join(log.duplications())}" for log in duplicated[:examples]
        ],
        shed_with_hint=sum(
            1 for log in shed if log.retry_hints and log.retry_hints[-1] is not None
        ),
        unaccepted=sum(1 for log in logs if not log.accepted and not log.shed),
        tool_errors=dict(Counter(error for log in logs for error in log.tool_errors)),
    )


def _describe_lost(log: RequestLog) -> str:
    ids = ",".join(sorted(log.request_ids))
    return (
        f"{log.key} ({ids}): {log.terminal_events} terminal events, offset {log.next_offset}, "
        f"recorded {log.recorded_state or 'nothing'}"
    )
