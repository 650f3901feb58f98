"""The engine model: iterations, memory, preemption and the three strategies' true costs."""

from __future__ import annotations

import pytest

from lamps.model.cost import CostModel, get_profile
from lamps.model.engine import EngineModel, Phase, Sequence
from lamps.model.strategy import Strategy


def phase(seq: Sequence) -> Phase:
    """The phase, read through a call so that mypy does not pin it between engine calls."""
    return seq.phase


def small(kv_tokens: int = 4096) -> CostModel:
    return get_profile("gptj-6b-a100").with_kv_tokens(kv_tokens)


def run_until_stopped(engine: EngineModel, now: float = 0.0) -> tuple[float, list[float]]:
    """Step until something stops; returns the time and each iteration's duration."""
    durations = []
    while True:
        iteration = engine.step(now)
        assert iteration is not None
        durations.append(iteration.duration_s)
        now += iteration.duration_s
        if iteration.stopped:
            return now, durations


def test_prefill_is_chunked_at_the_saturation_point_then_one_token_per_iteration() -> None:
    cost = small()
    engine = EngineModel(cost)
    seq = Sequence("r", context_tokens=1000, remaining_output=5)
    engine.admit(seq, 0.0)
    first = engine.step(0.0)
    assert first is not None
    assert first.tokens == 384
    assert first.duration_s == pytest.approx(cost.iteration_s(384, 0))
    second = engine.step(first.duration_s)
    assert second is not None
    assert second.tokens == 384
    assert second.duration_s == pytest.approx(cost.iteration_s(384, 384))
    third = engine.step(1.0)
    assert third is not None
    assert third.tokens == 232
    assert third.first_tokens == [seq]  # the last prefill chunk samples the first token
    decode_steps = [engine.step(1.0) for _ in range(4)]
    assert [step.tokens for step in decode_steps if step] == [1, 1, 1, 1]
    assert decode_steps[-1] is not None
    assert decode_steps[-1].stopped == [seq]
    assert seq.phase is Phase.STOPPED
    assert seq.context_tokens == 1005
    assert seq.remaining_output == 0
    engine.finish(seq)
    assert engine.used == 0
    assert engine.running_kv == 0
    assert engine.step(2.0) is None


def test_admission_needs_the_whole_context_in_free_blocks() -> None:
    engine = EngineModel(small(1024))
    big = Sequence("big", context_tokens=900, remaining_output=10)
    assert engine.fits(big)
    engine.admit(big, 0.0)
    second = Sequence("second", context_tokens=200, remaining_output=10)
    assert not engine.fits(second)
    with pytest.raises(ValueError, match="without the memory"):
        engine.admit(second, 0.0)


def test_decode_growth_preempts_the_lowest_priority_request() -> None:
    engine = EngineModel(small(512))
    keep = Sequence("keep", context_tokens=200, remaining_output=400, priority=1.0)
    lose = Sequence("lose", context_tokens=200, remaining_output=400, priority=2.0)
    engine.admit(keep, 0.0)
    engine.admit(lose, 0.0)
    now = 0.0
    evicted: list[Sequence] = []
    while not evicted:
        iteration = engine.step(now)
        assert iteration is not None
        now += iteration.duration_s
        assert engine.used <= engine.capacity
        evicted = engine.take_evicted()
    assert evicted == [lose]
    assert lose.phase is Phase.QUEUED
    assert lose.reserved == 0
    assert lose.recompute_pending > 200  # its prompt and what it had generated
    assert keep.phase is Phase.DECODE
    assert engine.preemptions == 1


def test_preserve_keeps_memory_and_resumes_with_only_the_returned_tokens() -> None:
    engine = EngineModel(small())
    seq = Sequence("r", context_tokens=100, remaining_output=3)
    engine.admit(seq, 0.0)
    now, _ = run_until_stopped(engine)
    held = engine.used
    assert engine.pause(seq, Strategy.PRESERVE, now) is Strategy.PRESERVE
    assert engine.used == held
    assert engine.step(now) is None  # nothing runs while the tool does
    assert engine.tool_returned(seq, return_tokens=20, next_output=2, now=now + 2.0)
    assert engine.held_token_seconds == pytest.approx(held * 2.0)
    iteration = engine.step(now + 2.0)
    assert iteration is not None
    assert iteration.tokens == 20
    assert iteration.recompute_tokens == 0


def test_discard_frees_memory_and_recomputes_the_whole_context() -> None:
    engine = EngineModel(small())
    seq = Sequence("r", context_tokens=100, remaining_output=3)
    engine.admit(seq, 0.0)
    now, _ = run_until_stopped(engine)
    assert engine.pause(seq, Strategy.DISCARD, now) is Strategy.DISCARD
    assert engine.used == 0
    assert not engine.tool_returned(seq, return_tokens=20, next_output=2, now=now + 1)
    assert seq.phase is Phase.QUEUED
    engine.admit(seq, now + 1)
    iteration = engine.step(now + 1)
    assert iteration is not None
    assert iteration.tokens == 123  # 100 prompt + 3 generated + 20 returned
    assert iteration.recompute_tokens == 103


def test_swap_moves_kv_over_the_link_at_its_bandwidth() -> None:
    cost = small()
    engine = EngineModel(cost)
    seq = Sequence("r", context_tokens=997, remaining_output=3)
    engine.admit(seq, 0.0)
    now, _ = run_until_stopped(engine)
    assert seq.kv_tokens == 1000
    assert engine.pause(seq, Strategy.SWAP, now) is Strategy.SWAP
    transfer = cost.swap_s(1000)
    assert engine.next_transfer_s() == pytest.approx(now + transfer)
    engine.complete_transfers(now + transfer / 2)
    assert seq.phase is Phase.SWAPPING_OUT
    assert engine.used > 0  # GPU blocks are held until the copy is done
    engine.complete_transfers(now + transfer)
    assert phase(seq) is Phase.SWAPPED
    assert engine.used == 0
    assert engine.cpu_used == 1000
    assert not engine.tool_returned(seq, return_tokens=10, next_output=2, now=now + 5)
    engine.admit(seq, now + 5)
    assert phase(seq) is Phase.SWAPPING_IN
    assert engine.step(now + 5) is None  # not runnable until its KV is back
    engine.complete_transfers(now + 5 + transfer)
    assert engine.cpu_used == 0
    iteration = engine.step(now + 5 + transfer)
    assert iteration is not None
    assert iteration.tokens == 10
    assert iteration.recompute_tokens == 0


def test_swap_falls_back_on_discard_without_cpu_space() -> None:
    cost = small()
    engine = EngineModel(cost)
    engine.cpu_used = cost.cpu_swap_tokens - 10
    seq = Sequence("r", context_tokens=100, remaining_output=1)
    engine.admit(seq, 0.0)
    now, _ = run_until_stopped(engine)
    assert engine.pause(seq, Strategy.SWAP, now) is Strategy.DISCARD
    assert engine.used == 0


def test_a_tool_returning_during_swap_out_keeps_the_gpu_copy() -> None:
    engine = EngineModel(small())
    seq = Sequence("r", context_tokens=1000, remaining_output=1)
    engine.admit(seq, 0.0)
    now, _ = run_until_stopped(engine)
    engine.pause(seq, Strategy.SWAP, now)
    assert engine.tool_returned(seq, return_tokens=5, next_output=1, now=now + 1e-4)
    assert engine.cpu_used == 0
    engine.complete_transfers(now + 10)
    assert phase(seq) is Phase.PREFILL  # the stale transfer changed nothing


def test_abort_releases_everything_the_request_holds() -> None:
    engine = EngineModel(small())
    running = Sequence("a", context_tokens=300, remaining_output=50)
    swapped = Sequence("b", context_tokens=300, remaining_output=1)
    engine.admit(running, 0.0)
    engine.admit(swapped, 0.0)
    now = 0.0
    while swapped.phase is not Phase.STOPPED:
        iteration = engine.step(now)
        assert iteration is not None
        now += iteration.duration_s
    engine.pause(swapped, Strategy.SWAP, now)
    engine.abort(running)
    engine.abort(swapped)
    assert engine.used == 0
    assert engine.cpu_used == 0
    assert engine.running_kv == 0
    assert engine.step(now + 1) is None
