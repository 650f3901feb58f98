"""Between the wire and the engine: `lamps.v1` messages to engine calls and engine events back."""

from __future__ import annotations

from lamps.model.cost import CostModel
from lamps.model.strategy import Strategy
from lamps.v1 import common_pb2, scheduler_pb2
from lamps.worker.engines.base import (
    AdmitSpec,
    Completed,
    EngineEvent,
    Failed,
    FinishReason,
    KvReport,
    Released,
    ReleaseReason,
    ReplaySegment,
    Sampling,
    Started,
    Tokens,
    ToolCalled,
)

STRATEGY_TO_PB = {
    Strategy.PRESERVE: common_pb2.STRATEGY_PRESERVE,
    Strategy.DISCARD: common_pb2.STRATEGY_DISCARD,
    Strategy.SWAP: common_pb2.STRATEGY_SWAP,
}
STRATEGY_FROM_PB = {value: key for key, value in STRATEGY_TO_PB.items()}
_RELEASE_TO_PB = {
    ReleaseReason.DISCARDED: scheduler_pb2.RELEASE_REASON_DISCARDED,
    ReleaseReason.PREEMPTED: scheduler_pb2.RELEASE_REASON_PREEMPTED,
    ReleaseReason.DRAINED: scheduler_pb2.RELEASE_REASON_DRAINED,
}
_FINISH_TO_PB = {
    FinishReason.STOP: common_pb2.FINISH_REASON_STOP,
    FinishReason.LENGTH: common_pb2.FINISH_REASON_LENGTH,
}


_DEFAULT_SAMPLING = Sampling()


class BadInstructionError(ValueError):
    """An instruction that cannot be carried out as written (an unset field, say)."""


def strategy_from_pb(value: int, *, default: Strategy | None = None) -> Strategy:
    """The engine strategy of a wire value; UNSPECIFIED gives `default` or is refused."""
    if value == common_pb2.STRATEGY_UNSPECIFIED and default is not None:
        return default
    try:
        return STRATEGY_FROM_PB[value]  # type: ignore[index]  # an int from the wire
    except KeyError:
        raise BadInstructionError(
            f"strategy {value} is not one of PRESERVE, DISCARD, SWAP"
        ) from None


def admit_spec(admit: scheduler_pb2.Admit) -> AdmitSpec:
    """The engine's view of an `Admit`."""
    if not admit.request_id:
        raise BadInstructionError("Admit without a request_id")
    sampling = admit.sampling
    return AdmitSpec(
        request_id=admit.request_id,
        max_new_tokens=admit.max_new_tokens,
        rank=admit.rank,
        prompt=admit.prompt,
        context_token_ids=tuple(admit.context_token_ids),
        append_text=admit.append_text,
        append_tokens=admit.append_tokens,
        sampling=Sampling(
            max_tokens=sampling.max_tokens or _DEFAULT_SAMPLING.max_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p or 1.0,
            seed=sampling.seed or None,
            stop=tuple(sampling.stop),
        ),
        strategy=strategy_from_pb(admit.strategy, default=Strategy.PRESERVE),
        replay=tuple(
            ReplaySegment(
                output_tokens=s.output_tokens,
                tool=s.tool,
                tool_duration_s=s.tool_duration_seconds,
                tool_output_tokens=s.tool_output_tokens,
            )
            for s in admit.replay.segments
        ),
        generated_tokens=admit.generated_tokens,
    )


def kv_usage(report: KvReport) -> common_pb2.KvUsage:
    return common_pb2.KvUsage(
        block_size=report.block_size,
        total_blocks=report.total_blocks,
        free_blocks=report.free_blocks,
        cpu_total_blocks=report.cpu_total_blocks,
        cpu_free_blocks=report.cpu_free_blocks,
    )


def cost_profile(cost: CostModel, *, can_swap: bool) -> common_pb2.CostProfile:
    return common_pb2.CostProfile(
        name=cost.name,
        kv_bytes_per_token=cost.kv_bytes_per_token,
        ms_per_token=cost.ms_per_token,
        ms_per_context_token=cost.ms_per_context_token,
        ms_per_iteration=cost.ms_per_iteration,
        saturation_tokens=cost.saturation_tokens,
        swap_bytes_per_second=cost.swap_bytes_per_second if can_swap else 0.0,
    )


def request_update(event: EngineEvent) -> scheduler_pb2.RequestUpdate:
    """The wire form of an engine event."""
    update = scheduler_pb2.RequestUpdate(request_id=event.request_id)
    match event:
        case Started():
            update.started.recomputed_tokens = event.recomputed_tokens
        case Tokens():
            update.tokens.token_ids.extend(event.token_ids)
            update.tokens.text = event.text
            update.tokens.start_index = event.start_index
        case ToolCalled():
            update.intercepted.call.call_id = event.call_id
            update.intercepted.call.name = event.name
            update.intercepted.call.arguments_json = event.arguments_json
            update.intercepted.context_tokens = event.context_tokens
            update.intercepted.strategy = STRATEGY_TO_PB[event.strategy]
        case Released():
            update.released.reason = _RELEASE_TO_PB[event.reason]
            update.released.context_token_ids.extend(event.context_token_ids)
            update.released.generated_tokens = event.generated_tokens
        case Completed():
            update.completed.reason = _FINISH_TO_PB[event.reason]
            update.completed.prompt_tokens = event.prompt_tokens
            update.completed.completion_tokens = event.completion_tokens
        case Failed():
            update.failed.message = event.message
    return update


def refused(
    request_id: str, instruction: str, code: int, message: str
) -> scheduler_pb2.RequestUpdate:
    update = scheduler_pb2.RequestUpdate(request_id=request_id)
    update.refused.instruction = instruction
    update.refused.code = code
    update.refused.message = message
    return update
