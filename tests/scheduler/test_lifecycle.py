"""The request lifecycle end to end: client, scheduler, Redis, tool runner and protocol workers."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from prometheus_client import REGISTRY

from lamps.scheduler.queue import open_store
from lamps.v1 import common_pb2 as cpb
from lamps.v1 import scheduler_pb2 as pb
from tests.scheduler.conftest import RunningScheduler, StartScheduler, make_request

QUEUED = cpb.REQUEST_STATE_QUEUED
RUNNING = cpb.REQUEST_STATE_RUNNING
IN_TOOL = cpb.REQUEST_STATE_IN_TOOL
FINISHED = cpb.REQUEST_STATE_FINISHED


def kinds(events: list[cpb.RequestEvent]) -> list[str]:
    return [str(event.WhichOneof("kind")) for event in events]


def states(events: list[cpb.RequestEvent]) -> list[int]:
    return [e.state_changed.state for e in events if e.HasField("state_changed")]


async def test_a_plain_request_runs_to_the_end(scheduler: RunningScheduler) -> None:
    await scheduler.worker()
    request_id = await scheduler.submit(make_request())
    events = await scheduler.events(request_id)
    assert kinds(events) == ["accepted", "state_changed", "state_changed", "tokens", "finished"]
    assert [event.offset for event in events] == list(range(len(events)))
    assert states(events) == [cpb.REQUEST_STATE_QUEUED, cpb.REQUEST_STATE_RUNNING]
    finished = events[-1].finished
    assert finished.state == cpb.REQUEST_STATE_FINISHED
    assert finished.usage.completion_tokens == 3
    record = await scheduler.record(request_id)
    assert record.state == cpb.REQUEST_STATE_FINISHED
    assert record.next_offset == len(events)


async def test_preserve_keeps_the_request_on_its_worker_and_resumes_it_there(
    start_scheduler: StartScheduler,
) -> None:
    # InferCept decides at the intercept from the time the call has run (none): Preserve. A worker
    # that can only preserve keeps it so (with Swap on offer InferCept soon moves a call there).
    scheduler = await start_scheduler(policy="infercept")
    worker = await scheduler.worker(strategies=(cpb.STRATEGY_PRESERVE,))
    request = make_request(segments=[(4, "emulated.qa", 0.05, 6), (2, "", 0.0, 0)])
    request_id = await scheduler.submit(request)
    events = await scheduler.events(request_id)
    assert kinds(events) == [
        "accepted",
        "state_changed",
        "state_changed",
        "tokens",
        "tool_call_started",
        "state_changed",
        "tool_call_finished",
        "state_changed",
        "tokens",
        "finished",
    ]
    started = events[4].tool_call_started
    assert started.call.name == "emulated.qa"
    assert started.strategy == cpb.STRATEGY_PRESERVE
    assert not events[6].tool_call_finished.result.HasField("error")
    assert states(events) == [QUEUED, RUNNING, IN_TOOL, RUNNING]
    resume = (await worker.expect("resume")).resume
    assert resume.request_id == request_id
    assert resume.append_tokens == 6
    assert len(worker.of_kind("admit")) == 1
    assert not worker.of_kind("pause")
    usage = events[-1].finished.usage
    assert (usage.completion_tokens, usage.tool_output_tokens, usage.tool_calls) == (6, 6, 1)
    assert events[-1].finished.timings.tool_seconds > 0


async def test_discard_frees_the_worker_and_requeues_with_the_longer_context(
    start_scheduler: StartScheduler,
) -> None:
    scheduler = await start_scheduler(policy="fcfs")
    worker = await scheduler.worker()
    request = make_request(
        segments=[(4, "emulated.math", 0.01, 5), (3, "emulated.qa", 0.01, 2), (2, "", 0.0, 0)]
    )
    request_id = await scheduler.submit(request)
    events = await scheduler.events(request_id)
    assert events[-1].finished.state == cpb.REQUEST_STATE_FINISHED
    # Each call: IN_TOOL on the worker, IN_TOOL without it once discarded, queued on return.
    each_call = [IN_TOOL, IN_TOOL, QUEUED, RUNNING]
    assert states(events) == [QUEUED, RUNNING, *each_call, *each_call]
    admits = [message.admit for message in worker.of_kind("admit")]
    assert len(admits) == 3
    first, second, third = admits
    assert first.prompt
    assert not first.context_token_ids
    assert first.strategy == cpb.STRATEGY_DISCARD
    assert [s.output_tokens for s in first.replay.segments] == [4, 3, 2]
    # The second admission continues from the context the worker handed back, plus the tool's.
    assert second.append_tokens == 5
    assert second.generated_tokens == 4
    assert len(second.context_token_ids) == len(first.prompt) // 4 + 1 + 4
    assert [s.output_tokens for s in second.replay.segments] == [3, 2]
    assert third.append_tokens == 2
    assert [s.output_tokens for s in third.replay.segments] == [2]
    usage = events[-1].finished.usage
    assert (usage.completion_tokens, usage.tool_output_tokens, usage.tool_calls) == (9, 7, 2)


async def test_swap_is_used_when_it_is_all_a_worker_offers(
    start_scheduler: StartScheduler,
) -> None:
    scheduler = await start_scheduler(policy="lamps")
    worker = await scheduler.worker(strategies=(cpb.STRATEGY_SWAP,))
    request_id = await scheduler.submit(
        make_request(segments=[(2, "emulated.qa", 0.02, 3), (1, "", 0.0, 0)])
    )
    events = await scheduler.events(request_id)
    assert events[-1].finished.state == cpb.REQUEST_STATE_FINISHED
    started = [e.tool_call_started for e in events if e.HasField("tool_call_started")]
    assert [s.strategy for s in started] == [cpb.STRATEGY_SWAP]
    assert worker.of_kind("admit")[0].admit.strategy == cpb.STRATEGY_SWAP
    assert len(worker.of_kind("resume")) == 1


async def test_a_worker_is_never_asked_for_a_strategy_it_did_not_advertise(
    start_scheduler: StartScheduler,
) -> None:
    scheduler = await start_scheduler(policy="lamps")
    worker = await scheduler.worker(strategies=(cpb.STRATEGY_PRESERVE, cpb.STRATEGY_DISCARD))
    ids = [
        await scheduler.submit(
            make_request(segments=[(n, "emulated.image_generation", 0.01, 2), (1, "", 0.0, 0)])
        )
        for n in (1, 50, 400)
    ]
    for request_id in ids:
        assert (await scheduler.events(request_id))[-1].finished.state == FINISHED
    asked = [m.admit.strategy for m in worker.of_kind("admit")]
    asked += [m.pause.strategy for m in worker.of_kind("pause")]
    assert asked
    assert cpb.STRATEGY_SWAP not in asked


async def test_requests_wait_for_kv_and_are_placed_by_best_fit(
    start_scheduler: StartScheduler,
) -> None:
    scheduler = await start_scheduler(policy="fcfs")
    small = await scheduler.worker("small", total_blocks=8, auto=False)
    large = await scheduler.worker("large", total_blocks=64, auto=False)
    # 17 prompt tokens need 2 blocks with the first generated token: both fit; best fit picks
    # the worker with fewer free blocks.
    first = await scheduler.submit(make_request(prompt_token_ids=[1] * 17, prompt=""))
    admit = await small.expect("admit")
    assert admit.admit.request_id == first
    # 200 tokens need 13 blocks: only the large worker has them.
    second = await scheduler.submit(make_request(prompt_token_ids=[1] * 200, prompt=""))
    assert (await large.expect("admit")).admit.request_id == second
    # 900 tokens fit nowhere now (the large worker is partly used): the request waits.
    third = await scheduler.submit(make_request(prompt_token_ids=[1] * 900, prompt=""))
    status = await scheduler.stub.ClusterStatus(pb.ClusterStatusRequest(), timeout=5)
    assert status.queued == 1
    assert (await scheduler.record(third)).state == QUEUED
    assert {w.worker_id for w in status.workers} == {"small", "large"}
    # 2000 tokens would not fit even an empty worker: it fails at once and says why.
    never = await scheduler.submit(make_request(prompt_token_ids=[1] * 2000, prompt=""))
    end = (await scheduler.events(never))[-1].finished
    assert end.state == cpb.REQUEST_STATE_FAILED
    assert "the largest worker holds 1024" in end.error_message


async def test_cancel_while_queued_running_and_in_a_tool(scheduler: RunningScheduler) -> None:
    queued = await scheduler.submit(make_request())
    assert await cancel(scheduler, queued) == cpb.REQUEST_STATE_CANCELLED

    worker = await scheduler.worker(auto=False)
    running = await scheduler.submit(make_request())
    await worker.expect("admit")
    assert await cancel(scheduler, running) == cpb.REQUEST_STATE_CANCELLED
    assert (await worker.expect("abort")).abort.request_id == running

    in_tool = await scheduler.submit(
        make_request(segments=[(1, "emulated.chatbot", 60, 1), (1, "", 0, 0)])
    )
    admit = await worker.expect("admit", start=len(worker.received) - 1)
    assert admit.admit.request_id == in_tool
    await worker.report(
        pb.RequestUpdate(request_id=in_tool, started=pb.Started()),
        pb.RequestUpdate(
            request_id=in_tool,
            intercepted=pb.Intercepted(
                call=cpb.ToolCall(call_id="c1", name="emulated.chatbot", arguments_json="{}"),
                strategy=cpb.STRATEGY_PRESERVE,
            ),
        ),
    )
    await wait_for_state(scheduler, in_tool, IN_TOOL)
    assert await cancel(scheduler, in_tool) == cpb.REQUEST_STATE_CANCELLED

    for request_id in (queued, running, in_tool):
        events = await scheduler.events(request_id)
        finished = events[-1].finished
        assert (finished.state, finished.reason) == (
            cpb.REQUEST_STATE_CANCELLED,
            cpb.FINISH_REASON_CANCELLED,
        )
        assert sum(e.HasField("finished") for e in events) == 1
        # Cancelling an ended request answers its final state and changes nothing.
        assert await cancel(scheduler, request_id) == cpb.REQUEST_STATE_CANCELLED
    # Late updates from the worker about a request it was told to abort are ignored quietly.
    await worker.report(pb.RequestUpdate(request_id=running, completed=pb.Completed()))
    follow_up = await scheduler.submit(make_request())
    await worker.expect("admit", start=len(worker.received) - 1)
    assert not worker.of_kind("rejected")
    assert (await scheduler.record(follow_up)).state == RUNNING


async def test_a_tool_runner_that_is_down_gives_a_readable_tool_error(
    start_scheduler: StartScheduler, free_port: int
) -> None:
    scheduler = await start_scheduler(tool_runner_address=f"127.0.0.1:{free_port}")
    await scheduler.worker()
    request_id = await scheduler.submit(
        make_request(segments=[(2, "emulated.qa", 0.01, 3), (1, "", 0.0, 0)])
    )
    events = await scheduler.events(request_id)
    result = next(e for e in events if e.HasField("tool_call_finished")).tool_call_finished.result
    assert result.error.code == cpb.TOOL_ERROR_CODE_UNAVAILABLE
    assert "tool runner could not be reached" in result.error.message
    assert events[-1].finished.state == FINISHED


async def test_a_predictor_that_is_down_leaves_default_predictions(
    start_scheduler: StartScheduler, free_port: int
) -> None:
    scheduler = await start_scheduler(
        predictor_address=f"127.0.0.1:{free_port}", predictor_timeout_seconds=0.5
    )
    before = fallbacks("unavailable")
    await scheduler.worker()
    request_id = await scheduler.submit(make_request(tools=["emulated.qa"]))
    events = await scheduler.events(request_id)
    prediction = events[0].accepted.prediction
    assert not prediction.from_model
    assert prediction.tool == "emulated.qa"
    assert prediction.call_duration_seconds > 0
    assert events[-1].finished.state == FINISHED
    assert fallbacks("unavailable") == before + 1


async def test_a_real_predictor_ranks_requests_and_learns_outcomes(
    start_scheduler: StartScheduler, predictor: str
) -> None:
    scheduler = await start_scheduler(predictor_address=predictor, replay_predictions="predictor")
    await scheduler.worker()
    before = outcomes("qa")
    request = make_request(
        tools=["emulated.qa"], segments=[(3, "emulated.qa", 0.01, 2), (1, "", 0, 0)]
    )
    request_id = await scheduler.submit(request)
    events = await scheduler.events(request_id)
    prediction = events[0].accepted.prediction
    # The predictor runs without a model here: the call's type and duration come from it (it
    # knows tools by type), the lengths are the scheduler's defaults.
    assert prediction.tool == "qa"
    assert prediction.call_duration_seconds > 0
    assert prediction.pre_call_tokens > 0
    assert events[-1].finished.state == FINISHED
    # The call's outcome reaches the predictor in the next batch of outcomes.
    for _ in range(200):
        if outcomes("qa") > before:
            break
        await asyncio.sleep(0.02)
    assert outcomes("qa") == before + 1


async def test_a_silent_worker_loses_its_requests_to_another(
    start_scheduler: StartScheduler,
) -> None:
    scheduler = await start_scheduler(worker_lease_seconds=0.5, report_interval_seconds=0.1)
    silent = await scheduler.worker("silent", auto=False, heartbeat=False)
    request_id = await scheduler.submit(make_request())
    await silent.expect("admit")
    live = await scheduler.worker("live", total_blocks=16)
    events = await scheduler.events(request_id)
    assert events[-1].finished.state == FINISHED
    assert states(events) == [QUEUED, RUNNING, QUEUED, RUNNING]
    assert [e.state_changed.worker_id for e in events if e.HasField("state_changed")][-1] == (
        "live"
    )
    assert live.of_kind("admit")[0].admit.request_id == request_id
    # The silent worker comes back: it is told to drop what it held.
    await silent.close()
    registered = await silent.connect(held=[request_id])
    assert list(registered.drop_request_ids) == [request_id]


async def cancel(scheduler: RunningScheduler, request_id: str) -> int:
    response = await scheduler.stub.Cancel(pb.CancelRequest(request_id=request_id), timeout=5)
    return response.state


async def wait_for_state(scheduler: RunningScheduler, request_id: str, state: int) -> None:
    for _ in range(200):
        if (await scheduler.record(request_id)).state == state:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{request_id} never reached state {state}")


def outcomes(tool: str) -> float:
    value = REGISTRY.get_sample_value("lamps_predictor_outcomes_total", {"tool": tool})
    return value or 0.0


def fallbacks(reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "lamps_scheduler_prediction_fallbacks_total", {"reason": reason}
    )
    return value or 0.0


async def test_a_request_passed_over_moves_to_the_starved_lane(
    start_scheduler: StartScheduler,
) -> None:
    # The oracle ranks by true memory x time: the long request would wait behind every short.
    scheduler = await start_scheduler(policy="oracle-lamps", starvation_threshold=2)
    long = await scheduler.submit(make_request("long", segments=[(400, "", 0.0, 0)]))
    shorts = [
        await scheduler.submit(make_request(f"short {i}", segments=[(5, "", 0.0, 0)]))
        for i in range(3)
    ]
    worker = await scheduler.worker(auto=False, max_running=1)
    order = []
    for index in range(4):
        for _ in range(500):
            admitted = worker.of_kind("admit")
            if len(admitted) > index:
                break
            await asyncio.sleep(0.01)
        request_id = admitted[index].admit.request_id
        order.append(request_id)
        await worker.report(pb.RequestUpdate(request_id=request_id, completed=pb.Completed()))
    # Two admissions passed the long one over: it moved to the lane, ahead of the last short.
    assert order == [shorts[0], shorts[1], long, shorts[2]]


async def test_a_lost_request_continues_elsewhere_from_everything_recorded(
    start_scheduler: StartScheduler,
) -> None:
    scheduler = await start_scheduler(
        policy="infercept", worker_lease_seconds=0.5, report_interval_seconds=0.1
    )
    lost = await scheduler.worker("lost", auto=False, heartbeat=False)
    request_id = await scheduler.submit(make_request("Question:"))
    await lost.expect("admit")
    arguments = '{"duration_seconds": 0.01, "output_tokens": 2}'
    await lost.report(
        pb.RequestUpdate(
            request_id=request_id, tokens=cpb.TokenDelta(token_ids=[1, 2], text=" ab")
        ),
        pb.RequestUpdate(
            request_id=request_id,
            intercepted=pb.Intercepted(
                call=cpb.ToolCall(call_id="c1", name="emulated.qa", arguments_json=arguments),
                strategy=cpb.STRATEGY_PRESERVE,
            ),
        ),
    )
    resume = (await lost.expect("resume")).resume
    assert resume.append_text
    await lost.report(
        pb.RequestUpdate(
            request_id=request_id,
            tokens=cpb.TokenDelta(token_ids=[3], text=" c", start_index=2),
        )
    )
    # The worker falls silent; another takes the request over from what the scheduler recorded.
    other = await scheduler.worker("other", auto=False)
    admit = (await other.expect("admit", within=20)).admit
    assert admit.request_id == request_id
    assert admit.prompt == "Question:"
    assert admit.append_text == " ab" + resume.append_text + " c"
    assert admit.generated_tokens == 3
    assert not admit.context_token_ids


async def test_a_replayed_request_is_predicted_by_the_length_bin_of_its_script(
    start_scheduler: StartScheduler, predictor: str
) -> None:
    # Binned replay predictions (the default) are what `lamps simulate` assumes: the predictor
    # service is not asked, the first segment's 10-token bin and its call's type are known.
    scheduler = await start_scheduler(predictor_address=predictor)
    await scheduler.worker()
    request = make_request(segments=[(37, "emulated.qa", 0.01, 2), (3, "", 0, 0)])
    events = await scheduler.events(await scheduler.submit(request))
    prediction = events[0].accepted.prediction
    assert (prediction.pre_call_tokens, prediction.pre_call_bin) == (35, 3)
    assert prediction.tool == "emulated.qa"
    assert prediction.call_duration_seconds > 0
    assert not prediction.from_model
    assert events[-1].finished.state == FINISHED


async def test_a_sped_up_scheduler_learns_tool_durations_in_engine_seconds(
    start_scheduler: StartScheduler, redis_server: str
) -> None:
    # Workers 10x faster than real time: a call that took 0.05 s of wall time took 0.5 s of the
    # engines' time, the unit every prediction and policy works in.
    prefix = f"scale-{uuid.uuid4().hex[:8]}"
    scheduler = await start_scheduler(time_scale=10.0, redis_prefix=prefix)
    await scheduler.worker()
    status = await scheduler.stub.ClusterStatus(pb.ClusterStatusRequest(), timeout=10)
    assert status.time_scale == 10.0
    request = make_request(segments=[(2, "emulated.math", 0.05, 1), (1, "", 0, 0)])
    events = await scheduler.events(await scheduler.submit(request))
    wall = events[-1].finished.timings.tool_seconds
    assert wall >= 0.05
    store = open_store(redis_server, prefix=prefix)
    try:
        learned = (await store.tool_stats())["emulated.math"]
    finally:
        await store.close()
    assert learned.count == 1
    assert learned.mean_seconds == pytest.approx(wall * 10.0, rel=0.05)


async def test_a_call_moved_to_another_strategy_tells_the_client(
    start_scheduler: StartScheduler,
) -> None:
    # InferCept preserves at the intercept, then moves a call that runs past the point where
    # swapping wastes less to Swap: the client's log says so.
    scheduler = await start_scheduler(policy="infercept")
    await scheduler.worker()
    request = make_request(segments=[(4, "emulated.chatbot", 0.5, 6), (2, "", 0.0, 0)])
    events = await scheduler.events(await scheduler.submit(request))
    in_tool = [
        e.state_changed.strategy
        for e in events
        if e.HasField("state_changed") and e.state_changed.state == IN_TOOL
    ]
    assert in_tool[0] == cpb.STRATEGY_PRESERVE
    assert in_tool[-1] == cpb.STRATEGY_SWAP
    record = await scheduler.record(events[0].request_id)
    assert record.strategy == cpb.STRATEGY_SWAP
