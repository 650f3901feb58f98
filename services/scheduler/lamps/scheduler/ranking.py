"""What the policy is told about a job: its estimate from the prediction, or the truth of its replay
(for oracle policies). Pure functions over a job's fields."""

from __future__ import annotations

from lamps.model.tools import MEAN_TOOL_OUTPUT_TOKENS
from lamps.scheduler.clients import tool_kind
from lamps.scheduler.jobs import Job
from lamps.scheduler.policy import CallEstimate, RequestEstimate


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
