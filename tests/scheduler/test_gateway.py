"""The WorkerGateway protocol, spoken by a protocol-level worker: registration, reports and every
refusal, none of which disturbs anything else."""

from __future__ import annotations

import grpc
import pytest
from grpc import aio

from lamps.common.channel import open_channel
from lamps.scheduler import metrics
from lamps.v1 import common_pb2 as cpb
from lamps.v1 import scheduler_pb2 as pb
from lamps.v1 import scheduler_pb2_grpc as pb_grpc
from tests.scheduler.conftest import RunningScheduler, StartScheduler, make_request
from tests.support.protocol_worker import ProtocolWorker


async def test_registration_answers_with_the_intervals(start_scheduler: StartScheduler) -> None:
    scheduler = await start_scheduler(worker_lease_seconds=3.0, report_interval_seconds=0.2)
    worker = await scheduler.worker("pod-1")
    assert worker.registered is not None
    assert worker.registered.worker_id == "pod-1"
    assert worker.registered.lease_seconds == 3.0
    assert worker.registered.report_interval_seconds == pytest.approx(0.2)
    assert list(worker.registered.drop_request_ids) == []


async def test_a_stream_must_begin_with_register(scheduler: RunningScheduler) -> None:
    async with open_channel(scheduler.target) as channel:
        call = pb_grpc.WorkerGatewayServiceStub(channel).Connect()  # type: ignore[call-arg]
        await call.write(pb.ConnectRequest(report=pb.Report()))
        with pytest.raises(aio.AioRpcError) as caught:
            await call.read()
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "must be a Register" in (caught.value.details() or "")


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"worker_id": ""}, "worker_id must be"),
        ({"block_size": 0}, "block_size"),
        ({"total_blocks": 0}, "total_blocks"),
        ({"max_running": 0}, "max_running"),
        ({"strategies": (cpb.STRATEGY_UNSPECIFIED,)}, "STRATEGY_UNSPECIFIED"),
    ],
)
async def test_an_invalid_registration_is_refused(
    scheduler: RunningScheduler, options: dict[str, object], words: str
) -> None:
    worker_id = str(options.pop("worker_id", "bad"))
    worker = ProtocolWorker(scheduler.target, worker_id, **options)  # type: ignore[arg-type]
    with pytest.raises(aio.AioRpcError) as caught:
        await worker.connect()
    await worker.close()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in (caught.value.details() or "")


async def test_a_worker_id_already_connected_is_refused(scheduler: RunningScheduler) -> None:
    first = await scheduler.worker("twin")
    second = ProtocolWorker(scheduler.target, "twin")
    with pytest.raises(aio.AioRpcError) as caught:
        await second.connect()
    await second.close()
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "already connected" in (caught.value.details() or "")
    # The first connection is undisturbed.
    request_id = await scheduler.submit(make_request())
    assert (await scheduler.events(request_id))[-1].finished.state == cpb.REQUEST_STATE_FINISHED
    assert first.of_kind("admit")


async def test_updates_about_requests_a_worker_does_not_hold_are_rejected(
    scheduler: RunningScheduler,
) -> None:
    worker = await scheduler.worker(auto=False)
    request_id = await scheduler.submit(make_request())
    await worker.expect("admit")
    other = await scheduler.worker("other", auto=False)
    await other.report(
        pb.RequestUpdate(request_id=request_id, completed=pb.Completed()),
        pb.RequestUpdate(request_id="made-up", tokens=cpb.TokenDelta(token_ids=[1])),
    )
    first = other.received.index(await other.expect("rejected"))
    await other.expect("rejected", start=first + 1)
    rejected = [m.rejected for m in other.of_kind("rejected")]
    assert [r.request_id for r in rejected] == [request_id, "made-up"]
    assert {r.code for r in rejected} == {grpc.StatusCode.FAILED_PRECONDITION.value[0]}
    assert "does not hold request" in rejected[0].message
    # Nothing else moved: the request still runs on its worker, which can finish it.
    assert (await scheduler.record(request_id)).state == cpb.REQUEST_STATE_RUNNING
    await worker.report(pb.RequestUpdate(request_id=request_id, completed=pb.Completed()))
    assert (await scheduler.events(request_id))[-1].finished.state == cpb.REQUEST_STATE_FINISHED


async def test_a_second_register_on_a_stream_is_rejected(scheduler: RunningScheduler) -> None:
    worker = await scheduler.worker()
    await worker.send(pb.ConnectRequest(register=pb.Register(worker_id="w1")))
    rejected = (await worker.expect("rejected")).rejected
    assert "already registered" in rejected.message
    request_id = await scheduler.submit(make_request())
    assert (await scheduler.events(request_id))[-1].finished.state == cpb.REQUEST_STATE_FINISHED


async def test_tokens_resent_after_a_reconnect_are_not_duplicated(
    scheduler: RunningScheduler,
) -> None:
    worker = await scheduler.worker(auto=False)
    request_id = await scheduler.submit(make_request())
    await worker.expect("admit")
    delta = cpb.TokenDelta(token_ids=[1, 2], text="ab", start_index=0)
    await worker.report(pb.RequestUpdate(request_id=request_id, tokens=delta))
    await worker.close()
    registered = await worker.connect(held=[request_id])
    assert list(registered.drop_request_ids) == []
    overlap = cpb.TokenDelta(token_ids=[2, 3], text="", start_index=1)
    await worker.report(
        pb.RequestUpdate(request_id=request_id, tokens=delta),
        pb.RequestUpdate(request_id=request_id, tokens=overlap),
        pb.RequestUpdate(request_id=request_id, completed=pb.Completed()),
    )
    events = await scheduler.events(request_id)
    tokens = [list(e.tokens.token_ids) for e in events if e.HasField("tokens")]
    assert tokens == [[1, 2], [3]]
    assert events[-1].finished.usage.completion_tokens == 3


async def test_a_reconnecting_worker_keeps_what_it_holds_and_drops_the_rest(
    scheduler: RunningScheduler,
) -> None:
    worker = await scheduler.worker(auto=False, max_running=2)
    kept = await scheduler.submit(make_request("kept"))
    lost = await scheduler.submit(make_request("lost"))
    await worker.expect("admit")
    await worker.expect("admit", start=len(worker.received) - 1)
    cancelled = kept  # cancelled while the worker is away: it must drop it
    await worker.close()
    await scheduler.stub.Cancel(pb.CancelRequest(request_id=cancelled))
    registered = await worker.connect(held=[kept, "never-heard-of"])
    assert sorted(registered.drop_request_ids) == sorted([kept, "never-heard-of"])
    # The one it no longer holds went back to the queue and runs again (on this worker).
    readmit = await worker.expect("admit", start=len(worker.received))
    assert readmit.admit.request_id == lost


async def test_updates_resent_after_a_reconnect_are_applied_once(
    scheduler: RunningScheduler,
) -> None:
    worker = await scheduler.worker(auto=False)
    request_id = await scheduler.submit(
        make_request(segments=[(2, "emulated.chatbot", 30, 1), (1, "", 0, 0)])
    )
    await worker.expect("admit")
    updates = [
        pb.RequestUpdate(request_id=request_id, started=pb.Started()),
        pb.RequestUpdate(request_id=request_id, tokens=cpb.TokenDelta(token_ids=[1, 2])),
        pb.RequestUpdate(
            request_id=request_id,
            intercepted=pb.Intercepted(
                call=cpb.ToolCall(call_id="c1", name="emulated.chatbot", arguments_json="{}"),
                strategy=cpb.STRATEGY_PRESERVE,
            ),
        ),
    ]
    await worker.report(*updates)
    await worker.close()
    await worker.connect(held=[request_id])
    await worker.report(*updates)
    await worker.report()
    record = await scheduler.record(request_id)
    assert record.state == cpb.REQUEST_STATE_IN_TOOL
    assert record.usage.completion_tokens == 2
    assert record.usage.tool_calls == 1
    assert not worker.of_kind("rejected")
    status = await scheduler.stub.ClusterStatus(pb.ClusterStatusRequest())
    assert [w.worker_id for w in status.workers] == ["w1"]


async def test_a_preempted_request_is_queued_again_and_runs_elsewhere(
    scheduler: RunningScheduler,
) -> None:
    first = await scheduler.worker("first", auto=False)
    request_id = await scheduler.submit(make_request())
    await first.expect("admit")
    # The worker drains: it takes nothing new and hands the request back.
    await first.report(
        pb.RequestUpdate(request_id=request_id, tokens=cpb.TokenDelta(token_ids=[1, 2])),
        pb.RequestUpdate(
            request_id=request_id,
            released=pb.Released(
                reason=pb.RELEASE_REASON_DRAINED, context_token_ids=[9] * 12, generated_tokens=2
            ),
        ),
        draining=True,
    )
    second = await scheduler.worker("second", auto=False)
    readmit = (await second.expect("admit")).admit
    assert readmit.request_id == request_id
    assert list(readmit.context_token_ids) == [9] * 12
    assert readmit.generated_tokens == 2
    assert len(first.of_kind("admit")) == 1
    status = await scheduler.stub.ClusterStatus(pb.ClusterStatusRequest())
    states = {w.worker_id: w.state for w in status.workers}
    assert states == {"first": pb.WORKER_STATE_DRAINING, "second": pb.WORKER_STATE_READY}


async def test_an_empty_update_is_refused_and_news_of_ended_requests_ignored(
    scheduler: RunningScheduler,
) -> None:
    worker = await scheduler.worker(auto=False)
    request_id = await scheduler.submit(make_request())
    await worker.expect("admit")
    await worker.report(pb.RequestUpdate(request_id=request_id))
    rejected = (await worker.expect("rejected")).rejected
    assert "the update is empty" in rejected.message
    done = pb.RequestUpdate(request_id=request_id, completed=pb.Completed())
    await worker.report(done)
    assert (await scheduler.events(request_id))[-1].finished.state == cpb.REQUEST_STATE_FINISHED
    # The same end re-sent (as after a reconnect) changes nothing and draws no refusal; an
    # update about an unknown id after it does, and marks when the scheduler has read both.
    await worker.report(done, pb.RequestUpdate(request_id="unknown", started=pb.Started()))
    first = worker.received.index(await worker.expect("rejected"))
    marker = (await worker.expect("rejected", start=first + 1)).rejected
    assert marker.request_id == "unknown"
    assert len(worker.of_kind("rejected")) == 2
    events = await scheduler.events(request_id)
    assert sum(e.HasField("finished") for e in events) == 1


def refused(request_id: str, instruction: str, code: grpc.StatusCode) -> pb.RequestUpdate:
    return pb.RequestUpdate(
        request_id=request_id,
        refused=pb.Refused(instruction=instruction, code=code.value[0], message="no"),
    )


async def test_an_admission_refused_by_a_draining_worker_runs_elsewhere(
    scheduler: RunningScheduler,
) -> None:
    first = await scheduler.worker("first", auto=False)
    request_id = await scheduler.submit(make_request())
    await first.expect("admit")
    await first.report(refused(request_id, "admit", grpc.StatusCode.UNAVAILABLE), draining=True)
    second = await scheduler.worker("second", auto=False)
    assert (await second.expect("admit")).admit.request_id == request_id
    assert len(first.of_kind("admit")) == 1


async def test_an_admission_the_worker_cannot_run_fails_with_its_reason(
    scheduler: RunningScheduler,
) -> None:
    worker = await scheduler.worker(auto=False)
    request_id = await scheduler.submit(make_request())
    await worker.expect("admit")
    await worker.report(refused(request_id, "admit", grpc.StatusCode.INVALID_ARGUMENT))
    end = (await scheduler.events(request_id))[-1].finished
    assert end.state == cpb.REQUEST_STATE_FAILED
    assert "cannot run the request: no" in end.error_message
    # A duplicate admission refused changes nothing: the request the worker holds runs on.
    other = await scheduler.submit(make_request())
    await worker.expect("admit", start=len(worker.received) - 1)
    await worker.report(refused(other, "admit", grpc.StatusCode.ALREADY_EXISTS))
    await worker.report(pb.RequestUpdate(request_id=other, completed=pb.Completed()))
    assert (await scheduler.events(other))[-1].finished.state == cpb.REQUEST_STATE_FINISHED


async def test_a_resume_refused_for_a_request_the_worker_lost_queues_it_again(
    scheduler: RunningScheduler,
) -> None:
    worker = await scheduler.worker(auto=False)
    request_id = await scheduler.submit(make_request())
    await worker.expect("admit")
    await worker.report(refused(request_id, "resume", grpc.StatusCode.NOT_FOUND))
    again = await worker.expect(
        "admit", start=worker.received.index(worker.of_kind("admit")[0]) + 1
    )
    assert again.admit.request_id == request_id


async def test_a_request_no_worker_can_serve_fails_and_does_not_block_the_queue(
    scheduler: RunningScheduler,
) -> None:
    worker = await scheduler.worker(auto=False)
    stuck = await scheduler.submit(make_request(model="no-such-model"))
    end = (await scheduler.events(stuck))[-1].finished
    assert end.state == cpb.REQUEST_STATE_FAILED
    assert "no worker serves model 'no-such-model'" in end.error_message
    behind = await scheduler.submit(make_request())
    assert (await worker.expect("admit")).admit.request_id == behind


@pytest.mark.parametrize(
    ("register", "words"),
    [
        (pb.Register(model="m" * 1_000_000), "model and engine have at most 256"),
        (pb.Register(held_request_ids=["r" * 1_000]), "held_request_ids lists at most"),
    ],
    ids=["huge-model", "huge-held-id"],
)
async def test_a_registration_with_oversized_fields_is_refused(
    scheduler: RunningScheduler, register: pb.Register, words: str
) -> None:
    # Found by fuzzing: these were accepted and echoed into status and error messages.
    register.worker_id = "pod-x"
    register.kv.block_size, register.kv.total_blocks = 16, 64
    register.max_running = 1
    async with open_channel(scheduler.target) as channel:
        call = pb_grpc.WorkerGatewayServiceStub(channel).Connect(
            iter([pb.ConnectRequest(register=register)])
        )
        with pytest.raises(aio.AioRpcError) as caught:
            await call.read()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in (caught.value.details() or "")


async def test_a_workers_strings_and_numbers_never_become_metric_labels_or_odd_reasons(
    scheduler: RunningScheduler,
) -> None:
    # Found by fuzzing a worker: a refusal's free-form instruction and code became label values
    # (a series per message), and a Completed with reason 99 was recorded as is.
    worker = await scheduler.worker(auto=False)
    request_id = await scheduler.submit(make_request())
    await worker.expect("admit")
    bogus = pb.Refused(instruction="x" * 10_000, code=12345, message="y" * 10_000)
    await worker.report(pb.RequestUpdate(request_id=request_id, refused=bogus))
    await worker.report(
        pb.RequestUpdate(request_id=request_id, completed=pb.Completed(reason=99))  # type: ignore[arg-type]
    )
    end = (await scheduler.events(request_id))[-1].finished
    assert (end.state, end.reason) == (cpb.REQUEST_STATE_FINISHED, cpb.FINISH_REASON_STOP)
    labels = {
        tuple(sorted(sample.labels.values()))
        for family in metrics.REFUSED_INSTRUCTIONS.collect()
        for sample in family.samples
    }
    assert ("UNKNOWN_CODE", "other") in labels
    assert all(len(value) < 32 for pair in labels for value in pair)
