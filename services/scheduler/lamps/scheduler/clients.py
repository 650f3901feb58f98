"""The scheduler's calls out: batched predictions and outcomes (Predictor) and tool calls
(ToolRunner). Both degrade instead of stalling the queue: without a predictor the scheduler ranks
with default predictions; without a tool runner a call ends in a tool error the model can read."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import grpc
from grpc import aio

from lamps.common.channel import ClientTls, open_channel
from lamps.model.tools import TOOL_STATS, ToolKind
from lamps.scheduler import metrics
from lamps.scheduler.jobs import Outcome
from lamps.scheduler.queue import ToolStats
from lamps.v1 import common_pb2 as cpb
from lamps.v1 import predictor_pb2 as ppb
from lamps.v1 import predictor_pb2_grpc as ppb_grpc
from lamps.v1 import tool_runner_pb2 as tpb
from lamps.v1 import tool_runner_pb2_grpc as tpb_grpc

log = logging.getLogger(__name__)
# How long a tool call waits for an unreachable tool runner before failing with a readable error.
TOOL_CONNECT_TIMEOUT_S = 3.0
# How much longer than the tool timeout an Execute may take (at most; and at most the timeout).
EXECUTE_SLACK_S = 5.0

# Defaults when no model predicts: the traces' typical decode segment (PAPER.md section 3).
DEFAULT_PRE_CALL_TOKENS = 95
DEFAULT_POST_CALL_TOKENS = 100
EMULATED_PREFIX = "emulated."
MAX_PREDICT_BATCH = 1024
# The predictor's default --max-prompt-chars.
PREDICTOR_PROMPT_CHARS = 100_000
OUTCOME_FLUSH_SECONDS = 0.5
# Outcomes per ReportOutcome call: below the predictor's --max-outcomes default (4096).
MAX_OUTCOMES_PER_CALL = 1024
TOOL_LIST_REFRESH_SECONDS = 30.0


def tool_kind(name: str) -> ToolKind | None:
    """The tool type a tool name stands for (`emulated.qa` and `qa` are both QA), if any."""
    base = name.removeprefix(EMULATED_PREFIX)
    try:
        return ToolKind(base)
    except ValueError:
        return None


def predictor_tool(name: str) -> str:
    """The name the predictor knows a tool by: its type for the six types (`emulated.qa` is
    `qa`), the name itself otherwise."""
    kind = tool_kind(name)
    return kind.value if kind is not None else name


def expected_duration(tool: str, stats: Mapping[str, ToolStats]) -> float:
    """Mean call duration of `tool`: what was observed, else its type's published mean."""
    seen = stats.get(tool)
    if seen is not None and seen.count > 0:
        return seen.mean_seconds
    kind = tool_kind(tool)
    return TOOL_STATS[kind].duration_mean_s if kind is not None else 0.0


def default_prediction(tools: Sequence[str], stats: Mapping[str, ToolStats]) -> cpb.Prediction:
    """What the scheduler assumes without a model: typical lengths; the tool if only one may be
    called, with its mean duration."""
    tool = tools[0] if len(tools) == 1 else ""
    return cpb.Prediction(
        pre_call_tokens=DEFAULT_PRE_CALL_TOKENS,
        pre_call_bin=DEFAULT_PRE_CALL_TOKENS // 10,
        tool=tool,
        tool_probability=1.0 if tool else 0.0,
        call_duration_seconds=expected_duration(tool, stats) if tool else 0.0,
        post_call_tokens=DEFAULT_POST_CALL_TOKENS if tool else 0,
        from_model=False,
    )


@dataclass(frozen=True, slots=True)
class PredictionInput:
    request_id: str
    prompt: str
    tools: tuple[str, ...]


class PredictorClient:
    """Batched `Predict` with a deadline, defaults on any failure, and buffered outcomes."""

    def __init__(
        self, address: str, *, token: str | None, tls: ClientTls | None, timeout_s: float
    ) -> None:
        self.address = address
        self._channel = open_channel(address, token=token, tls=tls) if address else None
        self._stub = ppb_grpc.PredictorServiceStub(self._channel) if self._channel else None
        self._timeout_s = timeout_s
        self._down = False
        self._outcomes: list[ppb.Outcome] = []
        self._flusher: asyncio.Task[None] | None = None
        self.stats: Mapping[str, ToolStats] = {}

    async def predict(self, inputs: Sequence[PredictionInput]) -> list[cpb.Prediction]:
        """One prediction per input, in order; defaults where the predictor cannot help."""
        answers = [default_prediction(i.tools, self.stats) for i in inputs]
        asked = [index for index, i in enumerate(inputs) if i.prompt]
        if self._stub is None or not asked:
            metrics.PREDICTION_FALLBACKS.labels(reason="no_predictor").inc(len(inputs))
            return answers
        for start in range(0, len(asked), MAX_PREDICT_BATCH):
            chunk = asked[start : start + MAX_PREDICT_BATCH]
            request = ppb.PredictRequest(
                inputs=[
                    ppb.PredictionInput(
                        request_id=inputs[i].request_id,
                        # The model reads a prompt's end; the predictor refuses very long ones.
                        prompt=inputs[i].prompt[-PREDICTOR_PROMPT_CHARS:],
                        tools=[predictor_tool(tool) for tool in inputs[i].tools],
                    )
                    for i in chunk
                ]
            )
            try:
                response = await self._stub.Predict(request, timeout=self._timeout_s)
            except aio.AioRpcError as exc:
                self._failed(exc, len(chunk))
                continue
            self._recovered()
            for index, prediction in zip(chunk, response.predictions, strict=False):
                answers[index] = self._complete(prediction, answers[index])
        return answers

    @staticmethod
    def _complete(prediction: cpb.Prediction, default: cpb.Prediction) -> cpb.Prediction:
        """A model-less predictor answers durations only: fill the lengths with the defaults."""
        if prediction.from_model:
            return prediction
        merged = cpb.Prediction()
        merged.CopyFrom(default)
        if prediction.tool:
            merged.tool = prediction.tool
            merged.tool_probability = prediction.tool_probability
            merged.call_duration_seconds = prediction.call_duration_seconds
        return merged

    def _failed(self, exc: aio.AioRpcError, count: int) -> None:
        metrics.PREDICTION_FALLBACKS.labels(reason="unavailable").inc(count)
        metrics.PREDICTOR_UP.set(0)
        if not self._down:
            self._down = True
            log.warning(
                "predictor unavailable; ranking with default predictions until it answers",
                extra={"predictor": self.address, "code": exc.code().name, "error": exc.details()},
            )

    def _recovered(self) -> None:
        metrics.PREDICTOR_UP.set(1)
        if self._down:
            self._down = False
            log.info("predictor answers again", extra={"predictor": self.address})

    def report(self, request_id: str, outcomes: Sequence[Outcome]) -> None:
        """Queue a finished request's call outcomes; they are sent in batches."""
        if self._stub is None:
            return
        for outcome in outcomes:
            self._outcomes.append(
                ppb.Outcome(
                    request_id=request_id,
                    tool=predictor_tool(outcome.tool) if outcome.tool else "",
                    call_duration_seconds=outcome.duration_s,
                    pre_call_tokens=outcome.pre_call_tokens,
                    post_call_tokens=outcome.post_call_tokens,
                )
            )
        if self._outcomes and self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_later())

    async def _flush_later(self) -> None:
        try:
            await asyncio.sleep(OUTCOME_FLUSH_SECONDS)
            await self.flush()
        finally:
            self._flusher = None

    async def flush(self) -> None:
        pending, self._outcomes = self._outcomes, []
        for start in range(0, len(pending), MAX_OUTCOMES_PER_CALL):
            await self._send(pending[start : start + MAX_OUTCOMES_PER_CALL])

    async def _send(self, batch: list[ppb.Outcome]) -> None:
        if self._stub is None:
            return
        try:
            await self._stub.ReportOutcome(
                ppb.ReportOutcomeRequest(outcomes=batch), timeout=self._timeout_s
            )
        except aio.AioRpcError as exc:
            metrics.OUTCOMES_DROPPED.inc(len(batch))
            log.warning(
                "cannot report outcomes to the predictor; dropped",
                extra={"outcomes": len(batch), "code": exc.code().name},
            )

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        await self.flush()
        if self._channel is not None:
            await self._channel.close(None)


class ToolClient:
    """`Execute` on the tool runner; any failure becomes a ToolResult error."""

    def __init__(
        self, address: str, *, token: str | None, tls: ClientTls | None, timeout_s: float
    ) -> None:
        self.address = address
        self._channel = open_channel(address, token=token, tls=tls) if address else None
        self._stub = tpb_grpc.ToolRunnerServiceStub(self._channel) if self._channel else None
        self._timeout_s = timeout_s
        self.known: frozenset[str] | None = None
        self._refresher: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._stub is not None:
            self._refresher = asyncio.create_task(self._refresh_forever())

    async def refresh(self) -> None:
        """Learn the registered tools; unknown (None) while the runner cannot be reached."""
        if self._stub is None:
            return
        try:
            response = await self._stub.ListTools(tpb.ListToolsRequest(), timeout=5.0)
        except aio.AioRpcError as exc:
            if self.known is not None:
                log.warning("tool runner unreachable", extra={"code": exc.code().name})
            self.known = None
            return
        self.known = frozenset(tool.name for tool in response.tools)

    async def _refresh_forever(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(TOOL_LIST_REFRESH_SECONDS if self.known is not None else 2.0)

    async def execute(self, call: cpb.ToolCall, request_id: str) -> cpb.ToolResult:
        started = time.monotonic()
        if self._stub is None:
            return _tool_error(
                call,
                cpb.TOOL_ERROR_CODE_UNAVAILABLE,
                f"tool {call.name!r} cannot run: no tool runner is configured "
                "(--tool-runner-address)",
                0.0,
            )
        request = tpb.ExecuteRequest(
            call=call, request_id=request_id, timeout_seconds=self._timeout_s
        )
        try:
            # A channel that failed to connect (the tool runner starting, or restarting) fails
            # calls at once until its reconnect backoff ends: wait a little for it instead.
            await asyncio.wait_for(self._channel_ready(), TOOL_CONNECT_TIMEOUT_S)
        except TimeoutError:
            metrics.TOOL_ERRORS.labels(code="TOOL_ERROR_CODE_UNAVAILABLE").inc()
            return _tool_error(
                call,
                cpb.TOOL_ERROR_CODE_UNAVAILABLE,
                f"tool {call.name!r} failed: the tool runner could not be reached (no "
                f"connection within {TOOL_CONNECT_TIMEOUT_S:g} s)",
                time.monotonic() - started,
            )
        try:
            # The runner's own timeout answers first, saying which tool ran too long; this
            # deadline ends a call to a runner that hangs, a bounded time after that.
            deadline = self._timeout_s + min(EXECUTE_SLACK_S, self._timeout_s)
            response = await self._stub.Execute(request, timeout=deadline)
        except aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                code = cpb.TOOL_ERROR_CODE_TIMEOUT
                why = f"the tool runner did not answer within {deadline:g} s"
            else:
                code = cpb.TOOL_ERROR_CODE_UNAVAILABLE
                why = f"the tool runner could not be reached ({exc.code().name}: {exc.details()})"
            metrics.TOOL_ERRORS.labels(code=cpb.ToolErrorCode.Name(code)).inc()
            return _tool_error(
                call, code, f"tool {call.name!r} failed: {why}", time.monotonic() - started
            )
        result = response.result
        if result.HasField("error") and result.error.code:
            metrics.TOOL_ERRORS.labels(code=cpb.ToolErrorCode.Name(result.error.code)).inc()
        return result

    async def _channel_ready(self) -> None:
        if self._channel is not None:
            await self._channel.channel_ready()

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        if self._channel is not None:
            await self._channel.close(None)


def _tool_error(call: cpb.ToolCall, code: int, message: str, seconds: float) -> cpb.ToolResult:
    return cpb.ToolResult(
        call_id=call.call_id,
        duration_seconds=seconds,
        error=cpb.ToolError(code=code, message=message),  # type: ignore[arg-type]
    )
