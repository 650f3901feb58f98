"""The `sim` engine: the shared contract, then what is its own (memory pressure, preemption, swap,
rank order, time scale, synthetic tokens)."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import json
from collections.abc import AsyncIterator, Callable

import pytest

from lamps.model.cost import CostModel, get_profile
from lamps.model.strategy import Strategy
from lamps.worker.config import WorkerConfig
from lamps.worker.engines import EngineUnavailableError, create_engine, synthetic
from lamps.worker.engines.base import (
    AdmitSpec,
    Completed,
    EngineError,
    Failed,
    FinishReason,
    Released,
    ReleaseReason,
    ReplaySegment,
    Sampling,
    Started,
    Tokens,
    ToolCalled,
    UnsupportedStrategyError,
)
from lamps.worker.engines.sim import SimEngine
from tests.worker.engines.contract import (
    PROMPT,
    EngineContract,
    EngineHarness,
    call_then,
    new_id,
    token_ids,
)

FAST = 50.0  # times faster than the A100 the profile describes


def cost(kv_tokens: int = 200_000, cpu_swap_bytes: int | None = None) -> CostModel:
    profile = get_profile("gptj-6b-a100").with_kv_tokens(kv_tokens)
    if cpu_swap_bytes is not None:
        profile = dataclasses.replace(profile, cpu_swap_bytes=cpu_swap_bytes)
    return profile


async def started(engine: SimEngine) -> EngineHarness:
    harness = EngineHarness(engine)
    await harness.start()
    return harness


@pytest.fixture(scope="module")
async def engine_harness() -> AsyncIterator[EngineHarness]:
    harness = await started(SimEngine(cost(), time_scale=FAST))
    yield harness
    await harness.close()


class TestSimEngineContract(EngineContract):
    """The sim engine holds to the shared engine contract."""


@pytest.fixture(scope="module")
async def no_swap_harness() -> AsyncIterator[EngineHarness]:
    harness = await started(SimEngine(cost(cpu_swap_bytes=0), time_scale=FAST))
    yield harness
    await harness.close()


class TestSimEngineWithoutSwapContract(EngineContract):
    """And so does one without CPU swap space, which must refuse Swap."""

    @pytest.fixture
    def engine_harness(self, no_swap_harness: EngineHarness) -> EngineHarness:
        return no_swap_harness


@pytest.fixture
async def small() -> AsyncIterator[EngineHarness]:
    """A sim engine with room for 1,000 tokens of KV: memory binds at once."""
    harness = await started(SimEngine(cost(kv_tokens=1000), time_scale=FAST))
    yield harness
    await harness.close()


def replay(tokens: int) -> tuple[ReplaySegment, ...]:
    return (ReplaySegment(tokens),)


def completed(harness: EngineHarness, request_id: str) -> bool:
    events = harness.of(request_id)
    return bool(events) and isinstance(events[-1], Completed)


def words(count: int) -> str:
    return " ".join(f"w{i}" for i in range(count))


# Memory, preemption and rank ----------------------------------------------------------------------


async def test_a_request_that_does_not_fit_waits_until_memory_frees(
    small: EngineHarness,
) -> None:
    first, second = new_id("big"), new_id("waits")
    await small.engine.admit(AdmitSpec(first, 50, prompt=words(600), replay=replay(20)))
    await small.engine.admit(AdmitSpec(second, 50, prompt=words(600), replay=replay(20)))
    events = await small.until_end(second)
    assert isinstance(events[-1], Completed)
    # The second started only after the first had completed and freed its blocks.
    order = [(type(e), e.request_id) for e in small.events if isinstance(e, Started | Completed)]
    assert order.index((Completed, first)) < order.index((Started, second))


async def test_waiting_requests_start_in_rank_order(small: EngineHarness) -> None:
    blocker = new_id("blocker")
    await small.engine.admit(AdmitSpec(blocker, 50, prompt=words(900), replay=replay(10)))
    ranks = {new_id("late"): 3.0, new_id("first"): 1.0, new_id("second"): 2.0}
    for rid, rank in ranks.items():
        await small.engine.admit(AdmitSpec(rid, 5, rank=rank, prompt=words(500), replay=replay(5)))
    await small.wait(lambda: all(completed(small, r) for r in ranks))
    starts = [
        e.request_id for e in small.events if isinstance(e, Started) and e.request_id in ranks
    ]
    assert starts == sorted(ranks, key=ranks.__getitem__)


async def test_memory_pressure_preempts_the_lowest_ranked_running_request(
    small: EngineHarness,
) -> None:
    # Both fit at admission; decoding then outgrows the 1,000 tokens.
    urgent, patient = new_id("urgent"), new_id("patient")
    await small.engine.admit(
        AdmitSpec(patient, 900, rank=5.0, prompt=words(300), replay=replay(900))
    )
    await small.engine.admit(
        AdmitSpec(urgent, 900, rank=1.0, prompt=words(300), replay=replay(900))
    )
    released = await small.until(patient, Released)
    assert isinstance(released, Released)
    assert released.reason is ReleaseReason.PREEMPTED
    generated = token_ids(small.of(patient))
    assert released.generated_tokens == len(generated)
    assert list(released.context_token_ids) == [*synthetic.encode(words(300)), *generated]
    assert urgent in small.engine.held()
    await small.engine.abort(urgent)


async def test_a_context_larger_than_the_cache_fails_at_once(small: EngineHarness) -> None:
    rid = new_id("huge")
    await small.engine.admit(AdmitSpec(rid, 5, prompt=words(5000)))
    failed = await small.until(rid, Failed)
    assert isinstance(failed, Failed)
    assert "does not fit" in failed.message
    assert rid not in small.engine.held()


async def test_an_empty_prompt_fails() -> None:
    harness = await started(SimEngine(cost(), time_scale=FAST))
    try:
        await harness.engine.admit(AdmitSpec("empty", 5, prompt="   "))
        failed = await harness.until("empty", Failed)
        assert isinstance(failed, Failed)
        assert "empty prompt" in failed.message
    finally:
        await harness.close()


async def test_max_running_caps_the_running_set() -> None:
    harness = await started(SimEngine(cost(), time_scale=FAST, max_running=1))
    try:
        ids = [new_id("one"), new_id("two")]
        for rid in ids:
            await harness.engine.admit(AdmitSpec(rid, 10, prompt=PROMPT, replay=replay(10)))
        await harness.wait(lambda: all(completed(harness, r) for r in ids))
        kinds = [
            (type(e), e.request_id) for e in harness.events if isinstance(e, Started | Completed)
        ]
        assert kinds == [
            (Started, ids[0]),
            (Completed, ids[0]),
            (Started, ids[1]),
            (Completed, ids[1]),
        ]
    finally:
        await harness.close()


# Swap ---------------------------------------------------------------------------------------------


async def test_swap_frees_gpu_blocks_during_the_call_and_brings_them_back() -> None:
    harness = await started(SimEngine(cost(), time_scale=FAST))
    engine = harness.engine
    try:
        rid = new_id("swap")
        spec = AdmitSpec(rid, 50, prompt=words(2000), replay=call_then(5), strategy=Strategy.SWAP)
        await engine.admit(spec)
        called = await harness.until(rid, ToolCalled)
        assert isinstance(called, ToolCalled)
        assert called.strategy is Strategy.SWAP
        total = engine.kv().total_blocks
        # Once the copy-out is done, the GPU blocks are free and CPU blocks are taken.
        await _until(lambda: engine.kv().free_blocks == total)
        kv = engine.kv()
        assert kv.cpu_free_blocks < kv.cpu_total_blocks
        await engine.resume(rid, append_tokens=3)
        events = await harness.until_end(rid)
        assert isinstance(events[-1], Completed)
        assert len(token_ids(events)) == 9
        assert engine.kv().cpu_free_blocks == engine.kv().cpu_total_blocks
    finally:
        await harness.close()


async def test_a_swapped_call_can_be_discarded() -> None:
    harness = await started(SimEngine(cost(), time_scale=FAST))
    try:
        rid = new_id("swap-discard")
        spec = AdmitSpec(rid, 50, prompt=words(100), replay=call_then(5), strategy=Strategy.SWAP)
        await harness.engine.admit(spec)
        await harness.until(rid, ToolCalled)
        await harness.engine.pause(rid, Strategy.DISCARD)
        released = await harness.until(rid, Released)
        assert isinstance(released, Released)
        assert released.reason is ReleaseReason.DISCARDED
        kv = harness.engine.kv()
        assert (kv.free_blocks, kv.cpu_free_blocks) == (kv.total_blocks, kv.cpu_total_blocks)
    finally:
        await harness.close()


async def test_swap_falls_back_on_discard_when_cpu_swap_space_is_short() -> None:
    # Room in CPU memory for 100 tokens of KV: the 500-token context does not fit.
    engine = SimEngine(cost(cpu_swap_bytes=458_752 * 100), time_scale=FAST)
    harness = await started(engine)
    try:
        assert Strategy.SWAP in engine.strategies
        spec = AdmitSpec("big", 50, prompt=words(500), replay=call_then(3), strategy=Strategy.SWAP)
        await engine.admit(spec)
        events = await harness.until_end("big")
        called, released = events[-2], events[-1]
        assert isinstance(called, ToolCalled)
        assert called.strategy is Strategy.DISCARD
        assert isinstance(released, Released)
        assert released.reason is ReleaseReason.DISCARDED
    finally:
        await harness.close()


async def test_a_resumed_call_preempts_a_lower_ranked_request_for_room() -> None:
    # 1,000 tokens of KV at the profile's own speed: the filler is far from outgrowing the cache
    # by itself when the call returns, so only the resume can preempt it.
    harness = await started(SimEngine(cost(kv_tokens=1000), time_scale=1.0))
    engine = harness.engine
    try:
        spec = AdmitSpec("resumed", 50, rank=1.0, prompt=words(300), replay=call_then(3))
        await engine.admit(spec)
        await harness.until("resumed", ToolCalled)
        filler = AdmitSpec("filler", 5000, rank=2.0, prompt=words(600), replay=replay(5000))
        await engine.admit(filler)
        await harness.tokens_at_least("filler", 1)
        await engine.resume("resumed", append_tokens=300)
        released = await harness.until("filler", Released)
        assert isinstance(released, Released)
        assert released.reason is ReleaseReason.PREEMPTED
        assert released.generated_tokens < 60  # well before decoding alone would need the room
        events = await harness.until_end("resumed")
        assert isinstance(events[-1], Completed)
        assert len(token_ids(events)) == 7
    finally:
        await harness.close()


async def test_without_swap_space_swap_is_not_offered_and_is_refused() -> None:
    engine = SimEngine(cost(cpu_swap_bytes=0), time_scale=FAST)
    harness = await started(engine)
    try:
        assert Strategy.SWAP not in engine.strategies
        assert engine.kv().cpu_total_blocks == 0
        with pytest.raises(UnsupportedStrategyError, match="swap"):
            await engine.admit(AdmitSpec("s", 5, prompt=PROMPT, strategy=Strategy.SWAP))
        await engine.admit(AdmitSpec("p", 5, prompt=PROMPT, replay=call_then(2)))
        await harness.until("p", ToolCalled)
        with pytest.raises(UnsupportedStrategyError):
            await engine.pause("p", Strategy.SWAP)
        assert engine.held() == ["p"]
        await engine.abort("p")
    finally:
        await harness.close()


async def _until(predicate: Callable[[], bool]) -> None:
    """Poll a state no event announces (a swap's copy finishing)."""
    for _ in range(10_000):
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the state never came")


# Time scale ---------------------------------------------------------------------------------------


async def test_the_time_scale_divides_the_profile_time_of_a_request() -> None:
    """The same request takes its modelled time divided by the scale; a 10x larger scale is
    faster. Compared within one run, so the machine's speed cancels out."""

    async def run(scale: float) -> float:
        harness = await started(SimEngine(cost(), time_scale=scale))
        loop = asyncio.get_running_loop()
        try:
            begin = loop.time()
            await harness.engine.admit(AdmitSpec("t", 200, prompt=PROMPT, replay=replay(60)))
            await harness.until("t", Completed)
            return loop.time() - begin
        finally:
            await harness.close()

    modelled = 60 * get_profile("gptj-6b-a100").iteration_s(1)
    slow = await run(4.0)
    assert slow >= modelled / 4.0  # never faster than the model allows
    fast = await run(40.0)
    assert fast < slow


# Synthetic tokens ---------------------------------------------------------------------------------


async def test_tokens_are_deterministic_and_survive_a_discard() -> None:
    """A request discarded at its call and readmitted continues exactly as if preserved."""
    harness = await started(SimEngine(cost(), time_scale=FAST))
    engine = harness.engine
    try:
        await engine.admit(AdmitSpec("kept", 50, prompt=PROMPT, replay=call_then(6, after=8)))
        await harness.until("kept", ToolCalled)
        await engine.resume("kept", "the answer is four")
        kept = token_ids(await harness.until_end("kept"))

        spec = AdmitSpec(
            "cut", 50, prompt=PROMPT, replay=call_then(6, after=8), strategy=Strategy.DISCARD
        )
        await engine.admit(spec)
        released = await harness.until("cut", Released)
        assert isinstance(released, Released)
        again = AdmitSpec(
            "cut-2",
            44,
            context_token_ids=released.context_token_ids,
            append_text="the answer is four",
            replay=(ReplaySegment(8),),
            generated_tokens=6,
        )
        await engine.admit(again)
        cut = token_ids(harness.of("cut")) + token_ids(await harness.until_end("cut-2"), start=6)
        assert cut == kept
        text = "".join(e.text for e in harness.of("kept") if isinstance(e, Tokens))
        assert text == synthetic.decode(kept)
    finally:
        await harness.close()


async def test_without_a_script_the_synthetic_model_calls_emulated_tools() -> None:
    harness = await started(SimEngine(cost(), time_scale=FAST, seed=7))
    engine = harness.engine
    try:
        await engine.admit(AdmitSpec("free", 4000, prompt=PROMPT, sampling=Sampling(seed=4)))
        called = await harness.until("free", ToolCalled)
        assert isinstance(called, ToolCalled)
        assert called.name.startswith("emulated.")
        arguments = json.loads(called.arguments_json)
        assert arguments["duration_seconds"] > 0
        assert arguments["output_tokens"] > 0
        await engine.abort("free")
    finally:
        await harness.close()


def test_the_synthetic_model_is_a_pure_function_of_seed_and_context() -> None:
    context = synthetic.encode(PROMPT)
    one = synthetic.generate(1, context, 500)
    assert one == synthetic.generate(1, context, 500)
    assert one != synthetic.generate(2, context, 500)
    forced = synthetic.generate(1, context, 500, forced=40)
    assert (len(forced.token_ids), forced.boundary) == (40, synthetic.Boundary.END)
    cut = synthetic.generate(1, context, 10, forced=40)
    assert (len(cut.token_ids), cut.boundary) == (10, synthetic.Boundary.LENGTH)


def test_a_stop_string_ends_the_segment() -> None:
    context = synthetic.encode(PROMPT)
    free = synthetic.generate(1, context, 50, forced=50)
    word = synthetic.decode(free.token_ids[20:21]).strip()
    stopped = synthetic.generate(1, context, 50, stop=(word,))
    assert stopped.boundary is synthetic.Boundary.END
    assert word in synthetic.decode(stopped.token_ids)
    assert len(stopped.token_ids) <= 21


# Building -----------------------------------------------------------------------------------------


def test_create_engine_builds_the_sim_engine_from_the_config() -> None:
    config = WorkerConfig(
        kv_cache_bytes=458_752 * 4096, block_size=32, swap_space_bytes=458_752 * 1024, max_running=7
    )
    engine = create_engine(config)
    assert isinstance(engine, SimEngine)
    kv = engine.kv()
    assert (kv.block_size, kv.total_blocks, kv.cpu_total_blocks) == (32, 128, 32)
    assert engine.max_running == 7
    assert engine.profile.name == "gptj-6b-a100"


def test_create_engine_explains_a_bad_profile() -> None:
    with pytest.raises(EngineUnavailableError, match="unknown cost profile 'nope'"):
        create_engine(WorkerConfig(profile="nope"))


def test_create_engine_explains_a_missing_vllm() -> None:
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    with pytest.raises(EngineUnavailableError, match="lamps-serving\\[vllm\\]"):
        create_engine(WorkerConfig(engine="vllm"))


async def test_a_closed_engine_refuses_work_and_its_events_end() -> None:
    harness = await started(SimEngine(cost(), time_scale=FAST))
    await harness.close()
    with pytest.raises(EngineError, match="not running"):
        await harness.engine.admit(AdmitSpec("late", 5, prompt=PROMPT))


async def test_max_model_len_refuses_longer_prompts_and_stops_generation_there() -> None:
    harness = await started(SimEngine(cost(), time_scale=FAST, max_model_len=100))
    try:
        await harness.engine.admit(AdmitSpec("long", 50, prompt=words(101)))
        failed = await harness.until("long", Failed)
        assert isinstance(failed, Failed)
        assert "at most 100 tokens" in failed.message
        await harness.engine.admit(AdmitSpec("fits", 50, prompt=words(90), replay=replay(50)))
        events = await harness.until_end("fits")
        end = events[-1]
        assert isinstance(end, Completed)
        assert (end.reason, end.completion_tokens) == (FinishReason.LENGTH, 10)
    finally:
        await harness.close()
