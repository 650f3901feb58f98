"""The committed stubs match the protos, and the contract covers the request lifecycle."""

from __future__ import annotations

import subprocess
import sys

from lamps.v1 import common_pb2, scheduler_pb2
from tests.support.processes import REPO_ROOT


def test_generated_stubs_are_not_stale() -> None:
    result = subprocess.run(
        [sys.executable, "scripts/generate_protos.py", "--check"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_event_log_round_trips_through_the_wire_format() -> None:
    events = [
        common_pb2.RequestEvent(offset=0, accepted=common_pb2.Accepted(request_id="r1")),
        common_pb2.RequestEvent(
            offset=1, tokens=common_pb2.TokenDelta(token_ids=[5, 6], text="hi")
        ),
        common_pb2.RequestEvent(
            offset=2,
            tool_call_started=common_pb2.ToolCallStarted(
                call=common_pb2.ToolCall(call_id="c1", name="calculator", arguments_json="{}"),
                strategy=common_pb2.STRATEGY_SWAP,
            ),
        ),
        common_pb2.RequestEvent(
            offset=3,
            finished=common_pb2.Finished(
                state=common_pb2.REQUEST_STATE_FINISHED, reason=common_pb2.FINISH_REASON_STOP
            ),
        ),
    ]
    decoded = [
        scheduler_pb2.WatchResponse.FromString(
            scheduler_pb2.WatchResponse(event=e).SerializeToString()
        ).event
        for e in events
    ]
    assert [e.WhichOneof("kind") for e in decoded] == [
        "accepted",
        "tokens",
        "tool_call_started",
        "finished",
    ]
    assert decoded == events
