"""The blocking `Client` against a live scheduler, tool runner and sim workers."""

from __future__ import annotations

import uuid

import grpc
import pytest

from lamps.client import (
    Accepted,
    Client,
    Finished,
    FinishReason,
    InvalidRequest,
    NotFound,
    ReplaySegment,
    RequestState,
    StateChanged,
    Strategy,
    Tokens,
    ToolCallFinished,
    ToolCallStarted,
    Unauthenticated,
    Unavailable,
    WorkerState,
)
from lamps.scheduler.embedded import free_port
from tests.support.system import LocalSystem

SCRIPT = (
    ReplaySegment(20, "emulated.math", 1.0, 5),
    ReplaySegment(30, "emulated.qa", 2.0, 12),
    ReplaySegment(15),
)


def test_generate_streams_the_replayed_tokens_and_tool_calls_in_order(client: Client) -> None:
    events = list(client.generate("what is 2+3?", replay=SCRIPT))
    assert isinstance(events[0], Accepted)
    assert isinstance(events[-1], Finished)
    assert [e.offset for e in events] == list(range(len(events)))
    assert {e.request_id for e in events} == {events[0].request_id}
    tokens = [t for e in events if isinstance(e, Tokens) for t in e.token_ids]
    assert len(tokens) == 65
    started = [e for e in events if isinstance(e, ToolCallStarted)]
    assert [e.call.name for e in started] == ["emulated.math", "emulated.qa"]
    assert all(e.strategy is not Strategy.UNSPECIFIED for e in started)
    finished = [e for e in events if isinstance(e, ToolCallFinished)]
    assert [e.result.call_id for e in finished] == [e.call.call_id for e in started]
    assert all(e.result.error is None and e.result.output for e in finished)
    states = [e.state for e in events if isinstance(e, StateChanged)]
    assert RequestState.RUNNING in states
    assert RequestState.IN_TOOL in states
    end = events[-1]
    assert end.state is RequestState.FINISHED
    assert (end.usage.completion_tokens, end.usage.tool_calls) == (65, 2)
    assert end.usage.tool_output_tokens == 17


def test_complete_gathers_text_tool_calls_and_usage(client: Client) -> None:
    result = client.complete("plan a trip", replay=SCRIPT, labels={"run": "sdk"})
    assert result.state is RequestState.FINISHED
    assert result.finish_reason is FinishReason.LENGTH or result.finish_reason is FinishReason.STOP
    assert len(result.token_ids) == result.usage.completion_tokens == 65
    assert result.text == "".join(e.text for e in result.events if isinstance(e, Tokens))
    assert [c.call.name for c in result.tool_calls] == ["emulated.math", "emulated.qa"]
    assert all(c.result is not None and c.result.duration_s > 0 for c in result.tool_calls)
    assert 0 < result.timings.ttft_s <= result.timings.total_s
    assert result.timings.tool_s > 0
    record = client.get_request(result.request_id)
    assert record.state is RequestState.FINISHED
    assert record.usage == result.usage
    assert record.labels == {"run": "sdk"}
    assert record.finished_at is not None
    assert record.finished_at >= record.created_at
    assert record.next_offset == len(result.events)


def test_submit_with_the_same_idempotency_key_returns_the_first_id(client: Client) -> None:
    key = f"job-{uuid.uuid4().hex}"
    first = client.submit("once", idempotency_key=key, replay=[ReplaySegment(5)])
    again = client.submit("once", idempotency_key=key, replay=[ReplaySegment(5)])
    assert first.created
    assert not again.created
    assert again.request_id == first.request_id
    end = list(client.watch(first.request_id))[-1]
    assert isinstance(end, Finished)
    assert end.state is RequestState.FINISHED


def test_watch_from_an_offset_replays_the_log_from_there(client: Client) -> None:
    submitted = client.submit(
        "watch me", replay=[ReplaySegment(10, "emulated.math", 0.5, 3), ReplaySegment(4)]
    )
    whole = list(client.watch(submitted.request_id))
    tail = list(client.watch(submitted.request_id, from_offset=3))
    assert tail == whole[3:]
    # From the end of a finished log: nothing more, and no waiting for it.
    assert list(client.watch(submitted.request_id, from_offset=len(whole))) == []


def test_cancel_reaches_a_request_in_its_tool_call(client: Client) -> None:
    # A 200 s call (10 s at the tool runner's time scale), cancelled while it runs.
    script = [ReplaySegment(5, "emulated.qa", 200.0, 4), ReplaySegment(5)]
    submitted = client.submit("a long call", replay=script)
    events = client.watch(submitted.request_id)
    for event in events:
        if isinstance(event, ToolCallStarted):
            break
    assert client.cancel(submitted.request_id) is RequestState.CANCELLED
    end = [e for e in events if isinstance(e, Finished)]
    assert [(e.state, e.reason) for e in end] == [(RequestState.CANCELLED, FinishReason.CANCELLED)]
    assert client.get_request(submitted.request_id).state is RequestState.CANCELLED


def test_cluster_status_lists_the_workers_and_their_kv(client: Client) -> None:
    status = client.cluster_status()
    assert status.policy == "lamps"
    assert status.leader_id
    assert sorted(w.worker_id for w in status.workers) == ["w1", "w2"]
    for worker in status.workers:
        assert (worker.engine, worker.state) == ("sim", WorkerState.READY)
        assert worker.kv_total_blocks > 0
        assert worker.kv_block_size > 0
        assert 0 <= worker.kv_used_blocks <= worker.kv_total_blocks
        assert Strategy.PRESERVE in worker.strategies
        assert worker.last_report_at is not None


def test_an_empty_prompt_is_refused_with_the_servers_message(client: Client) -> None:
    with pytest.raises(InvalidRequest) as caught:
        list(client.generate(""))
    assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert "prompt" in caught.value.message
    assert str(caught.value) == f"INVALID_ARGUMENT: {caught.value.message}"
    with pytest.raises(InvalidRequest):
        client.submit(None)


def test_an_unknown_request_id_is_not_found(client: Client) -> None:
    with pytest.raises(NotFound):
        client.get_request("no-such-request")
    with pytest.raises(NotFound):
        client.cancel("no-such-request")
    with pytest.raises(NotFound):
        list(client.watch("no-such-request"))


@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_a_missing_or_wrong_token_is_unauthenticated(
    system: LocalSystem, token: str | None
) -> None:
    with Client(system.target, token=token) as client:
        with pytest.raises(Unauthenticated):
            client.cluster_status()
        with pytest.raises(Unauthenticated):
            list(client.generate("hello"))


def test_an_address_where_nothing_listens_is_unavailable() -> None:
    with Client(f"127.0.0.1:{free_port()}", timeout_s=5) as client:
        with pytest.raises(Unavailable):
            client.cluster_status()
        with pytest.raises(Unavailable):
            list(client.generate("hello"))
