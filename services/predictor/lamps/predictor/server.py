"""The predictor's gRPC server: batched `Predict` and `ReportOutcome` (DESIGN.md section 8).

Without a model file the service still starts and answers every `Predict` with `from_model=false`:
no length or tool guess, but the expected call duration of the request's tool when it names
exactly one. That is the degradation the scheduler is built for (it ranks with its defaults), and
it keeps a cluster serving while a model is being trained. A model file that is given but missing
or corrupt is different: the service refuses to start, since someone asked for a model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import grpc
from grpc import aio
from redis.exceptions import RedisError

from lamps.common.server import ServerStartError, Service, serve
from lamps.common.text import shorten
from lamps.model.tools import ToolKind
from lamps.predictor import metrics
from lamps.predictor.batching import BatchRecord, MicroBatcher
from lamps.predictor.config import PredictorConfig
from lamps.predictor.durations import (
    DurationStore,
    DurationTable,
    MemoryDurationStore,
    RedisDurationStore,
)
from lamps.predictor.labels import NO_TOOL
from lamps.v1 import common_pb2
from lamps.v1 import predictor_pb2 as pb
from lamps.v1 import predictor_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from lamps.predictor.inference import ModelOutput, PredictorModel

log = logging.getLogger(__name__)

NO_MODEL_VERSION = "none"
MAX_REQUEST_ID_CHARS = 128
MAX_TOOLS_PER_INPUT = 64
MAX_TOOL_NAME_CHARS = 128
# A day: longer than any tool timeout; a larger "duration" would only skew the statistics.
MAX_CALL_SECONDS = 86_400.0


class Predictor:
    """The service's state: the model (if any), the batcher and the duration statistics."""

    def __init__(self, config: PredictorConfig) -> None:
        self.config = config
        self.model: PredictorModel | None = None
        self.durations = DurationTable(MemoryDurationStore(), ())
        self._batcher: MicroBatcher[str, ModelOutput] | None = None

    @property
    def version(self) -> str:
        return self.model.version if self.model is not None else NO_MODEL_VERSION

    @property
    def known_tools(self) -> tuple[str, ...]:
        """Tools outcomes may name: the six tool types and the model's vocabulary."""
        return self.durations.tools

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Load the model, connect the statistics store, start batching; undo it all after."""
        self.model = await asyncio.to_thread(_open_model, self.config)
        tools = {kind.value for kind in ToolKind}
        if self.model is not None:
            tools |= set(self.model.tools) - {NO_TOOL}
        self.durations = await _open_durations(self.config, tools)
        metrics.publish_durations(self.durations)
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(self.durations.close)
            if self.config.redis_url is not None:
                refresher = asyncio.create_task(self._refresh_durations())
                stack.callback(refresher.cancel)
            if self.model is not None:
                # One thread: forward passes run one at a time, each using torch's own threads.
                executor = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="forward"))
                self._batcher = self._make_batcher(self.model, executor)
                self._batcher.start()
                stack.push_async_callback(self._batcher.stop)
            yield

    def _make_batcher(
        self, model: PredictorModel, executor: ThreadPoolExecutor
    ) -> MicroBatcher[str, ModelOutput]:
        def record(batch: BatchRecord) -> None:
            metrics.observe_batch(batch)
            log.debug("batch", extra={"batch_size": batch.items, "batch_calls": batch.calls})

        return MicroBatcher(
            model.predict,
            window_seconds=self.config.batch_window_ms / 1000,
            max_batch=self.config.max_batch,
            executor=executor,
            on_batch=record,
        )

    async def _refresh_durations(self) -> None:
        while True:
            await asyncio.sleep(self.config.duration_refresh_seconds)
            try:
                await self.durations.refresh()
                metrics.publish_durations(self.durations)
            except (RedisError, OSError):
                log.exception("cannot refresh duration statistics from Redis; keeping the last")

    async def predict(self, inputs: Sequence[pb.PredictionInput]) -> list[common_pb2.Prediction]:
        if self._batcher is None or self.model is None:
            return [self._without_model(list(i.tools)) for i in inputs]
        outputs = await self._batcher.submit([i.prompt for i in inputs])
        return [
            self._from_model(out, list(i.tools), self.model)
            for i, out in zip(inputs, outputs, strict=True)
        ]

    async def record(self, outcomes: Sequence[pb.Outcome]) -> None:
        """Fold validated outcomes into the duration statistics."""
        for outcome in outcomes:
            if outcome.tool:
                await self.durations.observe(outcome.tool, outcome.call_duration_seconds)
            metrics.OUTCOMES.labels(tool=outcome.tool or NO_TOOL).inc()
        metrics.publish_durations(self.durations)

    def _without_model(self, allowed: list[str]) -> common_pb2.Prediction:
        tool = allowed[0] if len(allowed) == 1 else ""
        return common_pb2.Prediction(
            tool=tool,
            tool_probability=1.0 if tool else 0.0,
            call_duration_seconds=self.durations.expected_seconds(tool) if tool else 0.0,
            from_model=False,
        )

    def _from_model(
        self, out: ModelOutput, allowed: list[str], model: PredictorModel
    ) -> common_pb2.Prediction:
        tool, probability = choose_tool(out.tool_probabilities, allowed)
        called = tool != NO_TOOL
        return common_pb2.Prediction(
            pre_call_tokens=model.bins.centre(out.pre_call_bin),
            pre_call_bin=out.pre_call_bin,
            tool=tool if called else "",
            tool_probability=probability,
            call_duration_seconds=self.durations.expected_seconds(tool) if called else 0.0,
            post_call_tokens=model.bins.centre(out.post_call_bin) if called else 0,
            from_model=True,
        )


def choose_tool(probabilities: dict[str, float], allowed: Sequence[str]) -> tuple[str, float]:
    """The most likely tool among those the request may call (all when `allowed` is empty),
    or NO_TOOL; with its probability renormalised over the candidates."""
    candidates = {
        tool: p
        for tool, p in probabilities.items()
        if tool == NO_TOOL or not allowed or tool in allowed
    }
    total = sum(candidates.values())
    tool = max(candidates, key=lambda t: candidates[t])
    return tool, candidates[tool] / total if total > 0 else 0.0


def _open_model(config: PredictorConfig) -> PredictorModel | None:
    if config.model is None:
        log.warning(
            "no --model: answering with call durations only (from_model=false); "
            "train one with `lamps predictor train`"
        )
        return None
    from transformers.utils import logging as transformers_logging

    from lamps.predictor.backbone import BackboneError
    from lamps.predictor.inference import open_model
    from lamps.predictor.model_file import ModelFileError

    # Progress bars would break the one-JSON-object-per-line log.
    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        model = open_model(config.model, config.backbone, config.device, config.max_batch)
    except (ModelFileError, BackboneError) as exc:
        raise ServerStartError(str(exc)) from exc
    log.info(
        "model loaded",
        extra={
            "model": str(config.model),
            "model_version": model.version,
            "backbone": model.backbone.name,
            "tools": list(model.tools),
        },
    )
    return model


async def _open_durations(config: PredictorConfig, tools: set[str]) -> DurationTable:
    store: DurationStore = (
        RedisDurationStore(config.redis_url) if config.redis_url else MemoryDurationStore()
    )
    table = DurationTable(store, tools, config.duration_seed_weight, config.duration_max_weight)
    try:
        await table.refresh()
    except (RedisError, OSError) as exc:
        await table.close()
        raise ServerStartError(f"cannot read duration statistics from Redis: {exc}") from exc
    return table


class PredictorServicer(pb_grpc.PredictorServiceServicer):
    """Validates at the edge, then hands to `Predictor`."""

    def __init__(self, predictor: Predictor) -> None:
        self._predictor = predictor

    async def Predict(
        self, request: pb.PredictRequest, context: aio.ServicerContext[object, object]
    ) -> pb.PredictResponse:
        problem = self._check_inputs(request.inputs)
        if problem:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        try:
            with metrics.PREDICT_SECONDS.time():
                predictions = await self._predictor.predict(request.inputs)
        except RuntimeError as exc:  # torch reports failed passes (out of memory...) this way
            await context.abort(grpc.StatusCode.INTERNAL, f"the forward pass failed: {exc}")
        from_model = str(bool(predictions and predictions[0].from_model)).lower()
        metrics.PREDICTIONS.labels(from_model=from_model).inc(len(predictions))
        return pb.PredictResponse(predictions=predictions, model_version=self._predictor.version)

    def _check_inputs(self, inputs: Sequence[pb.PredictionInput]) -> str | None:
        config = self._predictor.config
        if not inputs:
            return "inputs is empty: send at least one PredictionInput"
        if len(inputs) > config.max_inputs:
            return (
                f"{len(inputs)} inputs in one call; at most {config.max_inputs} "
                "(split the batch, or raise --max-inputs)"
            )
        for index, item in enumerate(inputs):
            problem = _check_input(item)
            if problem:
                return f"inputs[{index}]: {problem}"
            if len(item.prompt) > config.max_prompt_chars:
                return (
                    f"inputs[{index}] (request {item.request_id!r}): prompt of "
                    f"{len(item.prompt)} characters exceeds --max-prompt-chars="
                    f"{config.max_prompt_chars}; send its end (the model reads only its last "
                    "tokens anyway)"
                )
        return None

    async def ReportOutcome(
        self, request: pb.ReportOutcomeRequest, context: aio.ServicerContext[object, object]
    ) -> pb.ReportOutcomeResponse:
        problem = self._check_outcomes(request.outcomes)
        if problem:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        try:
            await self._predictor.record(request.outcomes)
        except (RedisError, OSError) as exc:
            log.exception("cannot store call durations")
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"the duration statistics store is unreachable ({exc}); retry later",
            )
        return pb.ReportOutcomeResponse(accepted=len(request.outcomes))

    def _check_outcomes(self, outcomes: Sequence[pb.Outcome]) -> str | None:
        """The first problem in the batch; none is folded in unless all are valid."""
        if not outcomes:
            return "outcomes is empty: send at least one Outcome"
        limit = self._predictor.config.max_outcomes
        if len(outcomes) > limit:
            return (
                f"{len(outcomes)} outcomes in one call; at most {limit} (split the batch, or "
                "raise --max-outcomes)"
            )
        known = self._predictor.known_tools
        for index, outcome in enumerate(outcomes):
            where = f"outcomes[{index}] (request {shorten(outcome.request_id)!r})"
            if outcome.tool and outcome.tool not in known:
                return (
                    f"{where}: unknown tool {shorten(outcome.tool)!r}; known tools: "
                    f"{', '.join(known)} (leave tool empty for a request that finished without "
                    "a call)"
                )
            seconds = outcome.call_duration_seconds
            if outcome.tool and not (math.isfinite(seconds) and 0 <= seconds <= MAX_CALL_SECONDS):
                return (
                    f"{where}: call_duration_seconds must be a finite number from 0 to "
                    f"{MAX_CALL_SECONDS:g}, not {seconds}"
                )
        return None


def _check_input(item: pb.PredictionInput) -> str | None:
    """What is wrong with one input beyond its prompt's length; None if nothing."""
    if len(item.request_id) > MAX_REQUEST_ID_CHARS:
        return f"request_id has {len(item.request_id)} characters; at most {MAX_REQUEST_ID_CHARS}"
    if len(item.tools) > MAX_TOOLS_PER_INPUT:
        return f"{len(item.tools)} tools listed; at most {MAX_TOOLS_PER_INPUT}"
    if any(len(tool) > MAX_TOOL_NAME_CHARS for tool in item.tools):
        return f"tool names have at most {MAX_TOOL_NAME_CHARS} characters"
    return None


def services(config: PredictorConfig, predictor: Predictor) -> list[Service]:
    return [
        Service.of(
            pb.DESCRIPTOR.services_by_name["PredictorService"],
            pb_grpc.add_PredictorServiceServicer_to_server,
            PredictorServicer(predictor),
            config.client_tokens(),
        )
    ]


def main(config: PredictorConfig) -> int:
    predictor = Predictor(config)
    return serve("predictor", config, services(config, predictor), lifespan=predictor.running)
