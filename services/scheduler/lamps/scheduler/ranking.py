"""What the policy is told about a job: its estimate from the prediction, the binned length of its
replay (as the paper's experiments and `lamps simulate` predict), or the truth of its replay (for
oracle policies). Pure functions over a job's fields."""

from __future__ import annotations

import enum
from collections.abc import Mapping

from lamps.model.tools import MEAN_TOOL_OUTPUT_TOKENS
from lamps.scheduler.clients import (
    DEFAULT_POST_CALL_TOKENS,
    expected_duration,
    tool_kind,
)
from lamps.scheduler.jobs import Job
from lamps.scheduler.policy import CallEstimate, RequestEstimate
from lamps.scheduler.queue import ToolStats
from lamps.v1 import common_pb2 as cpb
from lamps.v1 import scheduler_pb2 as pb

# The predictor's length classes: 10-token bins, the last holding everything from 490 up.
LENGTH_BIN_TOKENS = 10
LENGTH_BINS = 50


class ReplayPredictions(enum.StrEnum):
    """How replayed requests (benchmarks) are predicted."""

    # The length bin of the replay's own segment, the call's type, its mean duration observed so
    # far: a predictor that classifies lengths exactly, the setting of the paper's experiments and
    # of `lamps simulate`, so live runs and simulations rank alike.
    BINNED = "binned"
    # Ask the predictor service, as for any other request.
    PREDICTOR = "predictor"


def length_bin(tokens: int) -> int:
    return min(max(tokens // LENGTH_BIN_TOKENS, 0), LENGTH_BINS - 1)


def bin_centre(index: int) -> int:
    return index * LENGTH_BIN_TOKENS + LENGTH_BIN_TOKENS // 2


def binned_prediction(
    request: pb.GenerateRequest, stats: Mapping[str, ToolStats]
) -> cpb.Prediction:
    """What a replayed request is predicted to do before it runs (`ReplayPredictions.BINNED`)."""
    segments = request.replay.segments
    first = segments[0]
    tool = first.tool if len(segments) > 1 else ""
    index = length_bin(first.output_tokens)
    return cpb.Prediction(
        pre_call_tokens=bin_centre(index),
        pre_call_bin=index,
        tool=tool,
        tool_probability=1.0 if tool else 0.0,
        call_duration_seconds=expected_duration(tool, stats) if tool else 0.0,
        post_call_tokens=DEFAULT_POST_CALL_TOKENS if tool else 0,
    )


def binned_estimate(job: Job, stats: Mapping[str, ToolStats]) -> RequestEstimate:
    """The rest of a replayed `job` as the binned predictor sees it: its current segment's length
    bin and call type, typical tool output and post-call lengths."""
    segments = job.request.replay.segments
    current = segments[min(job.segment, len(segments) - 1)]
    call = None
    post = 0
    if current.tool and job.segment + 1 < len(segments):
        call = CallEstimate(
            tool_kind(current.tool),
            expected_duration(current.tool, stats),
            MEAN_TOOL_OUTPUT_TOKENS,
        )
        post = DEFAULT_POST_CALL_TOKENS
    pre = bin_centre(length_bin(current.output_tokens))
    return RequestEstimate(
        context_tokens=job.context_tokens,
        pre_call_tokens=max(pre - job.segment_tokens, 1),
        call=call,
        post_call_tokens=post,
    )


def estimate(job: Job) -> RequestEstimate:
    """The predicted rest of `job`: before its first call the prediction as made; after a call
    the predictor's post-call length, with no further call known."""
    prediction = job.prediction
    if job.tool_calls == 0:
        call = None
        if prediction.tool:
            call = CallEstimate(
                tool_kind(prediction.tool),
                prediction.call_duration_seconds,
                MEAN_TOOL_OUTPUT_TOKENS,
            )
        pre, post = prediction.pre_call_tokens, prediction.post_call_tokens
    else:
        call, pre, post = None, prediction.post_call_tokens or prediction.pre_call_tokens, 0
    return RequestEstimate(
        context_tokens=job.context_tokens,
        pre_call_tokens=max(pre - job.segment_tokens, 1),
        call=call,
        post_call_tokens=post,
    )


def replay_truth(job: Job) -> RequestEstimate:
    """The rest of `job` as its replay script says: what an oracle knows."""
    segments = job.replay_segments()
    current = segments[0]
    call = None
    post = 0
    if current.tool and len(segments) > 1:
        call = CallEstimate(
            tool_kind(current.tool), current.tool_duration_seconds, current.tool_output_tokens
        )
        post = segments[1].output_tokens
    return RequestEstimate(
        context_tokens=job.context_tokens,
        pre_call_tokens=current.output_tokens,
        call=call,
        post_call_tokens=post,
    )
