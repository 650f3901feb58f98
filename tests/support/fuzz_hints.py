"""Valid values for the fields the fuzzer sets, so that part of its inputs get past validation
and exercise what runs after it (a request accepted and scheduled, a worker registered).

Hints are keyed by the field's full name; request ids come from those the run has seen accepted,
so Watch, Cancel and GetRequest also reach real requests.
"""

from __future__ import annotations

from collections.abc import Sequence

from tests.support.fuzz_wire import Chooser, Hint, chance, pick

TOOLS = ("calculator", "emulated.math", "emulated.qa")


def _ids(known: Sequence[str]) -> Hint:
    def hint(chooser: Chooser) -> object:
        if known and chance(chooser, 70):
            return pick(chooser, known)
        return pick(chooser, ("0" * 32, "no-such-request", "f" * 128))

    return hint


def _const(*options: object) -> Hint:
    return lambda chooser: pick(chooser, options)


def _int(low: int, high: int) -> Hint:
    return lambda chooser: chooser.integer(low, high)


def scheduler_hints(known: Sequence[str]) -> dict[str, Hint]:
    """Generations short enough to end within the run, and ids of real requests."""
    v1 = "lamps.v1."
    return {
        v1 + "GenerateRequest.prompt": _const("What is 2+3?", "hello", "weather in Lyon?"),
        v1 + "GenerateRequest.tools": _const([], ["calculator"], ["emulated.math", "emulated.qa"]),
        v1 + "GenerateRequest.model": _const("", "sim"),
        v1 + "SamplingParams.max_tokens": _int(1, 24),
        v1 + "SamplingParams.temperature": _const(0.0, 0.7, 1.0),
        v1 + "SamplingParams.top_p": _const(0.0, 0.9, 1.0),
        v1 + "SamplingParams.seed": _int(0, 1000),
        v1 + "SamplingParams.stop": _const([], ["\n"], ["END"]),
        v1 + "ReplaySegment.output_tokens": _int(0, 8),
        v1 + "ReplaySegment.tool": _const("", "emulated.math"),
        v1 + "ReplaySegment.tool_duration_seconds": _const(0.0, 0.01),
        v1 + "ReplaySegment.tool_output_tokens": _int(0, 8),
        v1 + "SubmitRequest.idempotency_key": lambda c: pick(c, ("", f"key-{c.integer(0, 5)}")),
        v1 + "WatchRequest.request_id": _ids(known),
        v1 + "WatchRequest.from_offset": _int(0, 6),
        v1 + "CancelRequest.request_id": _ids(known),
        v1 + "GetRequestRequest.request_id": _ids(known),
    }


def worker_hints(known: Sequence[str]) -> dict[str, Hint]:
    """A worker that registers (under an id of its own) and reports about real request ids."""
    v1 = "lamps.v1."
    return {
        v1 + "Register.worker_id": lambda c: f"fuzz-worker-{c.integer(0, 9)}",
        v1 + "Register.model": _const("fuzz-model", "sim"),
        v1 + "Register.engine": _const("sim"),
        v1 + "Register.max_running": _int(1, 4),
        v1 + "Register.strategies": _const([1, 2], [1, 2, 3], [2]),
        v1 + "Register.held_request_ids": lambda c: list(known[: c.integer(0, 3)]),
        v1 + "KvUsage.block_size": _const(16),
        v1 + "KvUsage.total_blocks": _int(1, 1000),
        v1 + "KvUsage.free_blocks": _int(0, 1),
        v1 + "KvUsage.cpu_total_blocks": _const(0),
        v1 + "KvUsage.cpu_free_blocks": _const(0),
        v1 + "RequestUpdate.request_id": _ids(known),
        v1 + "TokenDelta.token_ids": lambda c: [c.integer(0, 50_000) for _ in range(3)],
        v1 + "TokenDelta.start_index": _int(0, 3),
    }


def predictor_hints() -> dict[str, Hint]:
    v1 = "lamps.v1."
    return {
        v1 + "PredictionInput.request_id": _const("r1", "r2"),
        v1 + "PredictionInput.prompt": _const("please calculate the sum", "hello"),
        v1 + "PredictionInput.tools": _const([], ["math"], ["qa", "math"]),
        v1 + "Outcome.request_id": _const("r1"),
        v1 + "Outcome.tool": _const("", "math", "qa"),
        v1 + "Outcome.call_duration_seconds": _const(0.1, 1.5),
        v1 + "Outcome.pre_call_tokens": _int(0, 100),
        v1 + "Outcome.post_call_tokens": _int(0, 100),
    }


def tool_runner_hints() -> dict[str, Hint]:
    v1 = "lamps.v1."
    return {
        v1 + "ToolCall.call_id": _const("call-1"),
        v1 + "ToolCall.name": _const(*TOOLS, "no-such-tool"),
        v1 + "ToolCall.arguments_json": _const(
            '{"expression": "2+3*4"}', '{"expression": "9**9**9"}', "{}", "[1]", "{"
        ),
        v1 + "ExecuteRequest.request_id": _const("r1"),
        v1 + "ExecuteRequest.timeout_seconds": _const(0.0, 0.5, 2.0),
    }


def hints_for(service: str, known: Sequence[str]) -> dict[str, Hint]:
    """The hints for a service's messages, by its full name."""
    if service.endswith("SchedulerService"):
        return scheduler_hints(known)
    if service.endswith("WorkerGatewayService"):
        return worker_hints(known)
    if service.endswith("PredictorService"):
        return predictor_hints()
    if service.endswith("ToolRunnerService"):
        return tool_runner_hints()
    return {}
