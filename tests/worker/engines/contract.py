"""The engine contract (lamps.worker.engines.base), as tests any engine must pass.

To hold an engine to it, subclass `EngineContract` in a test module and give the class an
`engine_harness` fixture returning an `EngineHarness` around a started engine; the fixture may be
session-scoped (one engine for every test: each test uses its own request ids and leaves nothing
held). The tests use replay scripts for exact lengths and make no assumption about speed.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable

import pytest

from lamps.model.strategy import Strategy
from lamps.worker.engines.base import (
    AdmitSpec,
    Completed,
    DuplicateRequestError,
    Engine,
    EngineError,
    EngineEvent,
    FinishReason,
    Released,
    ReleaseReason,
    ReplaySegment,
    Started,
    Tokens,
    ToolCalled,
    UnknownRequestError,
    UnsupportedStrategyError,
)

PROMPT = "Tell me what the weather is like in Paris today and then compute two plus two"
TOOL = "emulated.math"
WAIT_S = 60.0  # only a bound for a broken engine; passing tests never come near it
_ENDS = (Completed, Released)


class EngineHarness:
    """A started engine and the one consumer of its events, recording them."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.events: list[EngineEvent] = []
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.engine.start()
        self._task = asyncio.create_task(self._consume())

    async def close(self) -> None:
        await self.engine.close()
        if self._task is not None:
            await asyncio.wait_for(self._task, WAIT_S)

    async def _consume(self) -> None:
        async for event in self.engine.events():
            self.events.append(event)
            self._changed.set()

    def of(self, request_id: str) -> list[EngineEvent]:
        return [e for e in self.events if e.request_id == request_id]

    async def wait(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(WAIT_S):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    async def until(self, request_id: str, kind: type[EngineEvent]) -> EngineEvent:
        """Wait for the request's first event of `kind` and return it."""
        await self.wait(lambda: any(isinstance(e, kind) for e in self.of(request_id)))
        return next(e for e in self.of(request_id) if isinstance(e, kind))

    async def until_end(self, request_id: str) -> list[EngineEvent]:
        """Wait until the engine lets the request go; its events, in order."""
        await self.wait(lambda: any(isinstance(e, _ENDS) for e in self.of(request_id)))
        return self.of(request_id)

    async def tokens_at_least(self, request_id: str, count: int) -> None:
        await self.wait(lambda: generated(self.of(request_id)) >= count)


def generated(events: list[EngineEvent]) -> int:
    return sum(len(e.token_ids) for e in events if isinstance(e, Tokens))


def token_ids(events: list[EngineEvent], start: int = 0) -> list[int]:
    """The generated tokens, checking the deltas are contiguous from `start`."""
    ids: list[int] = []
    for event in events:
        if isinstance(event, Tokens):
            assert event.start_index == start + len(ids), "token deltas must be contiguous"
            ids.extend(event.token_ids)
    return ids


def new_id(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}"


def call_then(
    output_tokens: int, tool_tokens: int = 3, after: int = 4
) -> tuple[ReplaySegment, ...]:
    return (
        ReplaySegment(output_tokens, TOOL, tool_duration_s=0.25, tool_output_tokens=tool_tokens),
        ReplaySegment(after),
    )


class EngineContract:
    """What every engine does (see the module docstring)."""

    # Streaming ------------------------------------------------------------------------------------

    async def test_a_request_starts_streams_contiguous_tokens_and_completes(
        self, engine_harness: EngineHarness
    ) -> None:
        h, rid = engine_harness, new_id("stream")
        await h.engine.admit(AdmitSpec(rid, 64, prompt=PROMPT, replay=(ReplaySegment(12),)))
        events = await h.until_end(rid)
        assert isinstance(events[0], Started)
        assert len(token_ids(events)) == 12
        end = events[-1]
        assert isinstance(end, Completed)
        assert (end.reason, end.completion_tokens) == (FinishReason.STOP, 12)
        assert end.prompt_tokens > 0
        assert rid not in h.engine.held()

    async def test_max_new_tokens_ends_a_request_with_length(
        self, engine_harness: EngineHarness
    ) -> None:
        h, rid = engine_harness, new_id("length")
        await h.engine.admit(AdmitSpec(rid, 5, prompt=PROMPT, replay=(ReplaySegment(40),)))
        events = await h.until_end(rid)
        assert len(token_ids(events)) == 5
        end = events[-1]
        assert isinstance(end, Completed)
        assert (end.reason, end.completion_tokens) == (FinishReason.LENGTH, 5)

    async def test_a_call_exactly_at_the_token_limit_ends_the_request_instead(
        self, engine_harness: EngineHarness
    ) -> None:
        h, rid = engine_harness, new_id("edge")
        await h.engine.admit(AdmitSpec(rid, 6, prompt=PROMPT, replay=call_then(6)))
        events = await h.until_end(rid)
        assert not [e for e in events if isinstance(e, ToolCalled)]
        end = events[-1]
        assert isinstance(end, Completed)
        assert (end.reason, end.completion_tokens) == (FinishReason.LENGTH, 6)

    async def test_a_request_admitted_from_token_ids_continues_after_them(
        self, engine_harness: EngineHarness
    ) -> None:
        h, first = engine_harness, new_id("ids")
        await h.engine.admit(AdmitSpec(first, 8, prompt=PROMPT, replay=(ReplaySegment(8),)))
        done = await h.until_end(first)
        context = (*range(1, 20), *token_ids(done))
        second = new_id("ids")
        spec = AdmitSpec(
            second, 6, context_token_ids=context, replay=(ReplaySegment(6),), generated_tokens=8
        )
        await h.engine.admit(spec)
        events = await h.until_end(second)
        assert len(token_ids(events, start=8)) == 6
        end = events[-1]
        assert isinstance(end, Completed)
        assert end.completion_tokens == 14  # counted over the whole request

    # Tool calls -----------------------------------------------------------------------------------

    async def test_preserve_keeps_the_request_and_its_kv_until_resumed(
        self, engine_harness: EngineHarness
    ) -> None:
        h, rid = engine_harness, new_id("preserve")
        await h.engine.admit(AdmitSpec(rid, 64, prompt=PROMPT, replay=call_then(5)))
        called = await h.until(rid, ToolCalled)
        assert isinstance(called, ToolCalled)
        assert (called.name, called.strategy) == (TOOL, Strategy.PRESERVE)
        assert json.loads(called.arguments_json) == {"duration_seconds": 0.25, "output_tokens": 3}
        assert called.call_id
        assert rid in h.engine.held()
        kv = h.engine.kv()
        assert kv.free_blocks < kv.total_blocks  # its KV stays while the tool runs
        assert generated(h.of(rid)) == 5
        await h.engine.resume(rid, append_tokens=3)
        events = await h.until_end(rid)
        assert len(token_ids(events)) == 9
        end = events[-1]
        assert isinstance(end, Completed)
        assert end.completion_tokens == 9
        assert sum(isinstance(e, Started) for e in events) == 1

    async def test_discard_hands_back_the_token_exact_context_and_readmission_continues(
        self, engine_harness: EngineHarness
    ) -> None:
        h, rid = engine_harness, new_id("discard")
        spec = AdmitSpec(rid, 64, prompt=PROMPT, replay=call_then(5), strategy=Strategy.DISCARD)
        await h.engine.admit(spec)
        events = await h.until_end(rid)
        called, released = events[-2], events[-1]
        assert isinstance(called, ToolCalled)
        assert called.strategy is Strategy.DISCARD
        assert isinstance(released, Released)
        assert released.reason is ReleaseReason.DISCARDED
        assert released.generated_tokens == 5
        assert list(released.context_token_ids[-5:]) == token_ids(events)
        assert called.context_tokens == len(released.context_token_ids)
        assert rid not in h.engine.held()

        again = AdmitSpec(
            rid,
            59,
            context_token_ids=released.context_token_ids,
            append_tokens=3,
            replay=(ReplaySegment(4),),
            generated_tokens=5,
        )
        seen = len(h.of(rid))
        await h.engine.admit(again)
        await h.wait(lambda: isinstance(h.of(rid)[-1], Completed))
        resumed = h.of(rid)[seen:]
        assert isinstance(resumed[0], Started)
        assert len(token_ids(resumed, start=5)) == 4
        end = resumed[-1]
        assert isinstance(end, Completed)
        assert end.completion_tokens == 9

    async def test_pause_turns_a_preserved_call_into_a_discard(
        self, engine_harness: EngineHarness
    ) -> None:
        h, rid = engine_harness, new_id("pause")
        await h.engine.admit(AdmitSpec(rid, 64, prompt=PROMPT, replay=call_then(4)))
        await h.until(rid, ToolCalled)
        await h.engine.pause(rid, Strategy.DISCARD)
        released = await h.until(rid, Released)
        assert isinstance(released, Released)
        assert (released.reason, released.generated_tokens) == (ReleaseReason.DISCARDED, 4)
        assert rid not in h.engine.held()

    async def test_pause_of_a_running_request_sets_the_strategy_of_its_next_call(
        self, engine_harness: EngineHarness
    ) -> None:
        h, rid = engine_harness, new_id("next-call")
        await h.engine.admit(AdmitSpec(rid, 300, prompt=PROMPT, replay=call_then(200)))
        await h.engine.pause(rid, Strategy.DISCARD)
        events = await h.until_end(rid)
        called = next(e for e in events if isinstance(e, ToolCalled))
        assert isinstance(called, ToolCalled)
        assert called.strategy is Strategy.DISCARD

    # Preempt and abort ---------------------------------------------------------------------------

    async def test_preempt_hands_back_everything_generated_so_far(
        self, engine_harness: EngineHarness
    ) -> None:
        h, rid = engine_harness, new_id("preempt")
        await h.engine.admit(
            AdmitSpec(rid, 100_000, prompt=PROMPT, replay=(ReplaySegment(100_000),))
        )
        await h.tokens_at_least(rid, 3)
        await h.engine.preempt(rid)
        events = await h.until_end(rid)
        released = events[-1]
        assert isinstance(released, Released)
        assert released.reason is ReleaseReason.PREEMPTED
        ids = token_ids(events)
        assert released.generated_tokens == len(ids)
        assert list(released.context_token_ids[len(released.context_token_ids) - len(ids) :]) == ids
        assert rid not in h.engine.held()

    async def test_preempt_of_a_request_in_a_tool_call_hands_it_back(
        self, engine_harness: EngineHarness
    ) -> None:
        h, rid = engine_harness, new_id("preempt-tool")
        await h.engine.admit(AdmitSpec(rid, 64, prompt=PROMPT, replay=call_then(3)))
        await h.until(rid, ToolCalled)
        await h.engine.preempt(rid, ReleaseReason.DRAINED)
        released = await h.until(rid, Released)
        assert isinstance(released, Released)
        assert (released.reason, released.generated_tokens) == (ReleaseReason.DRAINED, 3)

    async def test_abort_drops_a_request_silently_and_spares_the_others(
        self, engine_harness: EngineHarness
    ) -> None:
        h = engine_harness
        doomed, other = new_id("abort"), new_id("spared")
        await h.engine.admit(
            AdmitSpec(doomed, 100_000, prompt=PROMPT, replay=(ReplaySegment(100_000),))
        )
        await h.engine.admit(AdmitSpec(other, 64, prompt=PROMPT, replay=(ReplaySegment(20),)))
        await h.tokens_at_least(doomed, 2)
        await h.engine.abort(doomed)
        assert doomed not in h.engine.held()
        count = len(h.of(doomed))
        events = await h.until_end(other)
        assert isinstance(events[-1], Completed)
        assert len(h.of(doomed)) == count
        assert not any(isinstance(e, _ENDS) for e in h.of(doomed))

    # Refusals -------------------------------------------------------------------------------------

    async def test_unknown_request_ids_are_refused(self, engine_harness: EngineHarness) -> None:
        engine, rid = engine_harness.engine, new_id("unknown")
        with pytest.raises(UnknownRequestError, match=rid):
            await engine.resume(rid, "text")
        with pytest.raises(UnknownRequestError):
            await engine.pause(rid, Strategy.DISCARD)
        with pytest.raises(UnknownRequestError):
            await engine.preempt(rid)
        with pytest.raises(UnknownRequestError):
            await engine.abort(rid)

    async def test_a_duplicate_admission_is_refused_and_the_first_runs_on(
        self, engine_harness: EngineHarness
    ) -> None:
        h, rid = engine_harness, new_id("dup")
        await h.engine.admit(AdmitSpec(rid, 64, prompt=PROMPT, replay=(ReplaySegment(30),)))
        with pytest.raises(DuplicateRequestError, match=rid):
            await h.engine.admit(AdmitSpec(rid, 64, prompt="another", replay=(ReplaySegment(2),)))
        events = await h.until_end(rid)
        assert len(token_ids(events)) == 30
        assert sum(isinstance(e, Started) for e in events) == 1

    async def test_it_takes_exactly_the_strategies_it_lists(
        self, engine_harness: EngineHarness
    ) -> None:
        h = engine_harness
        for strategy in Strategy:
            rid = new_id(f"strategy-{strategy.value}")
            spec = AdmitSpec(rid, 2, prompt=PROMPT, replay=(ReplaySegment(2),), strategy=strategy)
            if strategy in h.engine.strategies:
                await h.engine.admit(spec)
                assert isinstance((await h.until_end(rid))[-1], Completed)
            else:
                with pytest.raises(UnsupportedStrategyError):
                    await h.engine.admit(spec)
                assert rid not in h.engine.held()
                assert not h.of(rid)

    async def test_resume_of_a_running_request_is_refused_without_disturbing_it(
        self, engine_harness: EngineHarness
    ) -> None:
        h, rid = engine_harness, new_id("not-paused")
        await h.engine.admit(AdmitSpec(rid, 64, prompt=PROMPT, replay=(ReplaySegment(20),)))
        with pytest.raises(EngineError) as caught:
            await h.engine.resume(rid, "text")
        assert not isinstance(caught.value, UnknownRequestError)
        events = await h.until_end(rid)
        assert len(token_ids(events)) == 20

    # Capacity -------------------------------------------------------------------------------------

    async def test_kv_report_is_consistent_and_strategies_include_preserve_and_discard(
        self, engine_harness: EngineHarness
    ) -> None:
        engine = engine_harness.engine
        kv = engine.kv()
        assert kv.block_size > 0
        assert 0 <= kv.free_blocks <= kv.total_blocks
        assert 0 <= kv.cpu_free_blocks <= kv.cpu_total_blocks
        assert {Strategy.PRESERVE, Strategy.DISCARD} <= engine.strategies
        assert (Strategy.SWAP in engine.strategies) == (kv.cpu_total_blocks > 0)
        assert engine.max_running >= 1
        assert engine.model
