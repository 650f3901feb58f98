"""Sends a workload's requests at their arrival times and records what the client saw of each.

Times are wall-clock on the client; the results module turns them into the engines' time with the
system's time scale. Every request is a `Generate` stream of its own, so a slow request never holds
up the sending of the next; a request not ended within its deadline is cancelled and counted failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from lamps.bench.workload import request_arguments
from lamps.client import AsyncClient, Finished, LampsError, RequestState, Tokens
from lamps.model.workload import Arrival

log = logging.getLogger(__name__)

# Called with (requests sent, requests ended, requests in all).
Progress = Callable[[int, int, int], None]


@dataclass(frozen=True, slots=True)
class Outcome:
    """One request as the client saw it; times in wall seconds from the start of the replay."""

    arrival: Arrival
    sent_s: float
    ended_s: float
    first_token_s: float | None
    request_id: str
    state: RequestState | None
    error: str
    recomputed_tokens: int = 0

    @property
    def finished(self) -> bool:
        return self.state is RequestState.FINISHED and not self.error


@dataclass(frozen=True, slots=True)
class Replay:
    """How to replay: `time_scale` engine seconds per wall second; a request still running
    `deadline_s` wall seconds after it was sent fails."""

    time_scale: float
    deadline_s: float


async def replay(
    client: AsyncClient,
    arrivals: Sequence[Arrival],
    settings: Replay,
    progress: Progress | None = None,
) -> tuple[list[Outcome], float]:
    """Replay `arrivals`; returns every request's outcome, in arrival order, and the largest lag
    (wall seconds) of a send behind its scheduled time."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    counts = _Counts(total=len(arrivals))
    tasks: list[asyncio.Task[Outcome]] = []
    reporter = loop.create_task(_report(counts, progress)) if progress is not None else None
    lag = 0.0
    try:
        for arrival in arrivals:
            due = start + arrival.time_s / settings.time_scale
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            lag = max(lag, loop.time() - due)
            tasks.append(
                loop.create_task(_one(client, arrival, start, settings.deadline_s, counts))
            )
            counts.sent += 1
        outcomes = list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
        if reporter is not None:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
    if progress is not None:
        progress(counts.sent, counts.ended, counts.total)
    return outcomes, lag


@dataclass(slots=True)
class _Counts:
    total: int
    sent: int = 0
    ended: int = 0


async def _report(counts: _Counts, progress: Progress) -> None:
    while True:
        progress(counts.sent, counts.ended, counts.total)
        await asyncio.sleep(0.5)


async def _one(
    client: AsyncClient, arrival: Arrival, start: float, deadline_s: float, counts: _Counts
) -> Outcome:
    loop = asyncio.get_running_loop()
    sent = loop.time() - start
    first: float | None = None
    finished: Finished | None = None
    request_id, error = "", ""
    try:
        async with asyncio.timeout(deadline_s):
            async for event in client.generate(**request_arguments(arrival)):
                request_id = request_id or event.request_id
                if isinstance(event, Tokens) and first is None:
                    first = loop.time() - start
                elif isinstance(event, Finished):
                    finished = event
    except LampsError as exc:
        error = str(exc)
    except TimeoutError:
        error = f"not finished within {deadline_s:g} s"
        await _cancel(client, request_id)
    counts.ended += 1
    if finished is not None and finished.state is not RequestState.FINISHED and not error:
        error = finished.error_message or f"ended {finished.state.value}"
    return Outcome(
        arrival=arrival,
        sent_s=sent,
        ended_s=loop.time() - start,
        first_token_s=first,
        request_id=request_id,
        state=finished.state if finished is not None else None,
        error=error,
        recomputed_tokens=finished.usage.recomputed_tokens if finished is not None else 0,
    )


async def _cancel(client: AsyncClient, request_id: str) -> None:
    if not request_id:
        return
    try:
        await client.cancel(request_id)
    except LampsError as exc:
        log.warning("could not cancel %s after its deadline: %s", request_id, exc)
