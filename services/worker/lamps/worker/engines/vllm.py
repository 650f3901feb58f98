"""The `vllm` engine: vLLM's v1 `AsyncLLM` in this process (DESIGN.md section 7).

Every request runs as a vLLM *streaming-input session*: its first chunk is the prompt, and a chunk
ends at a tool call (the `</tool_call>` stop token, see `tool_calls`), at the end of a replay
segment (`max_tokens`), or at the end of the generation. Between chunks vLLM keeps the session's KV
blocks (`WAITING_FOR_STREAMING_REQ`) and never preempts it, which is Preserve; the tool's output is
the next chunk. Discard closes the session (its blocks go to the prefix cache) and hands back the
token-exact context, which a later `admit` continues from as a `TokensPrompt`, reusing whatever
blocks survived. Swap (CUDA only) closes the session under vLLM's CPU KV offloading, which copies
the blocks to host memory, and resumes with the full context, which loads them back.

vLLM drops a chunk's last sampled token from the session (it was never computed), so each next
chunk starts with that token: the session's tokens stay exactly the request's context.

Sessions refuse stop strings, so `Sampling.stop` is matched here on the streamed text: the request
ends after the token that completes a stop string (that token's text is streamed too).

The engine core runs in one child process (AsyncLLM's design; `VLLM_ENABLE_V1_MULTIPROCESSING=0`
with the "uni" executor keeps the model in that same process instead of a further worker). So
model steps never block this event loop; start-up and shutdown run in a thread. A program that
starts this engine needs an `if __name__ == "__main__":` guard: the child is spawned.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from lamps.model.strategy import Strategy
from lamps.worker.engines import tool_calls
from lamps.worker.engines.base import (
    AdmitSpec,
    Completed,
    DuplicateRequestError,
    Engine,
    EngineError,
    EngineEvent,
    Failed,
    FinishReason,
    KvReport,
    Released,
    ReleaseReason,
    Started,
    Tokens,
    ToolCalled,
    UnknownRequestError,
)
from lamps.worker.engines.vllm_config import (
    VllmOptions,
    VllmSettings,
    block_bytes,
    can_offload_kv,
    engine_args,
    rank_priority,
)
from lamps.worker.engines.vllm_requests import (
    RequestState,
    Session,
    State,
    check_admission,
    input_chunks,
    is_paused,
)
from lamps.worker.engines.vllm_stats import KvGauge, stat_logger_factory

if TYPE_CHECKING:
    from vllm.outputs import RequestOutput
    from vllm.v1.engine.async_llm import AsyncLLM

log = logging.getLogger(__name__)


class VllmEngine(Engine):
    """A vLLM replica in this process; see the module docstring."""

    name = "vllm"

    def __init__(self, options: VllmOptions) -> None:
        if options.max_running < 1:
            raise ValueError(f"max_running must be at least 1, got {options.max_running}")
        self.options = options
        self._swap = options.swap_space_bytes > 0 and can_offload_kv()
        if options.swap_space_bytes > 0 and not self._swap:
            log.warning("swap space ignored: vLLM offloads KV to CPU memory only on CUDA or XPU")
        self._llm: AsyncLLM | None = None
        self._tokenizer: Any = None
        self._markers: tool_calls.Markers | None = None
        self._filler = 0
        self._max_model_len = 0
        self._vocab_size = 0
        self._gauge: KvGauge | None = None
        self._cpu_blocks = 0
        self._requests: dict[str, RequestState] = {}
        self._admitting: set[str] = set()
        self._events: asyncio.Queue[EngineEvent | None] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._sessions = 0
        self._closed = False

    @classmethod
    def from_config(cls, config: VllmSettings) -> VllmEngine:
        """The engine `lamps worker serve --engine vllm` runs, from its WorkerConfig."""
        return cls(VllmOptions.of(config))

    # -- what the agent reads ------------------------------------------------------------------

    @property
    def model(self) -> str:
        return self.options.model

    @property
    def strategies(self) -> frozenset[Strategy]:
        found = {Strategy.PRESERVE, Strategy.DISCARD}
        return frozenset(found | {Strategy.SWAP} if self._swap else found)

    @property
    def max_running(self) -> int:
        return self.options.max_running

    @property
    def llm(self) -> AsyncLLM:
        """The AsyncLLM itself (for benchmarks that call it directly)."""
        if self._llm is None:
            raise EngineError("the vllm engine has not been started")
        return self._llm

    @property
    def tool_call_markers(self) -> tool_calls.Markers | None:
        """The `<tool_call>` marker ids when the model's tokenizer has them, else None."""
        return self._markers

    def kv(self) -> KvReport:
        if self._gauge is None:
            raise EngineError("the vllm engine has not been started")
        swapped = sum(
            -(-len(r.context) // self._gauge.block_size)
            for r in self._requests.values()
            if r.state is State.SWAPPED
        )
        return self._gauge.report(self._cpu_blocks, swapped)

    def prefix_cache(self) -> tuple[int, int]:
        """Prefix-cache (queried, hit) tokens since start, from vLLM's scheduler stats."""
        gauge = self._gauge
        return (gauge.prefix_queries, gauge.prefix_hits) if gauge else (0, 0)

    def queue_counts(self) -> tuple[int, int]:
        """(running, waiting) requests in vLLM's scheduler at its last step."""
        gauge = self._gauge
        return (gauge.running, gauge.waiting) if gauge else (0, 0)

    def held(self) -> list[str]:
        return list(self._requests)

    async def events(self) -> AsyncIterator[EngineEvent]:
        while (event := await self._events.get()) is not None:
            yield event

    # -- life ------------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._llm is not None:
            raise EngineError("the vllm engine is already started")
        # Read by vLLM when it builds the engine: keep the model in the engine-core process.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        llm = await asyncio.to_thread(self._build)
        self._llm = llm
        tokenizer = await asyncio.to_thread(llm.get_tokenizer)
        vocab = await asyncio.to_thread(tokenizer.get_vocab)
        self._tokenizer = tokenizer
        self._markers = tool_calls.find_markers(vocab)
        self._filler = (await asyncio.to_thread(tokenizer.encode, " x", add_special_tokens=False))[
            -1
        ]
        config = llm.vllm_config
        self._max_model_len = int(config.model_config.max_model_len)
        self._vocab_size = int(config.model_config.get_vocab_size())
        block_size = int(config.cache_config.block_size)
        # vLLM's usage counts against num_gpu_blocks - 1: block 0 is its null block.
        self._gauge = KvGauge(int(config.cache_config.num_gpu_blocks) - 1, block_size)
        if self._swap:
            self._cpu_blocks = self.options.swap_space_bytes // block_bytes(config)
        log.info(
            "vllm engine ready",
            extra={
                "model": self.options.model,
                "kv_blocks": self._gauge.total_blocks,
                "block_size": block_size,
                "max_model_len": self._max_model_len,
                "tool_calls": self._markers is not None,
                "strategies": sorted(self.strategies),
            },
        )

    def _build(self) -> AsyncLLM:
        from vllm.v1.engine.async_llm import AsyncLLM

        args = engine_args(self.options, swap=self._swap)
        logger = stat_logger_factory(lambda: self._gauge)
        return AsyncLLM.from_engine_args(args, stat_loggers=[logger])

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        llm = self._llm
        for request in list(self._requests.values()):
            await self._drop(request)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if llm is not None:
            # Stop reading outputs before the engine process goes, or the reader logs its death.
            handler = llm.output_handler
            if handler is not None:
                handler.cancel()
                await asyncio.gather(handler, return_exceptions=True)
                llm.output_handler = None
            await asyncio.to_thread(llm.shutdown)
        self._events.put_nowait(None)

    # -- the agent's calls -----------------------------------------------------------------------

    async def admit(self, spec: AdmitSpec) -> None:
        self._check_started()
        request_id = spec.request_id
        if request_id in self._requests or request_id in self._admitting:
            raise DuplicateRequestError(f"request {request_id} is already held by this engine")
        self._check_strategy(spec.strategy)
        check_admission(spec)
        self._admitting.add(request_id)
        try:
            ids = await self._context_of(spec)
        finally:
            self._admitting.discard(request_id)
        self._check_started()  # closed while it tokenized
        if any(not 0 <= i < self._vocab_size for i in spec.context_token_ids):
            raise EngineError(
                f"request {request_id} has context token ids outside this model's vocabulary "
                f"(0 to {self._vocab_size - 1})"
            )
        if len(ids) >= self._max_model_len:
            raise EngineError(
                f"request {request_id} has {len(ids)} context tokens; this model takes at most "
                f"{self._max_model_len - 1} (max_model_len {self._max_model_len})"
            )
        request = RequestState(
            spec=spec,
            priority=rank_priority(spec.rank),
            context=ids,
            generated=spec.generated_tokens,
            strategy=spec.strategy,
            replay=deque(spec.replay),
            recompute_base=len(spec.context_token_ids),
            segment_start=len(ids),
        )
        from vllm.exceptions import VLLMClientError

        try:
            self._chunk_params(request)  # vLLM validates the sampling parameters here
        except (ValueError, VLLMClientError) as exc:
            raise EngineError(f"request {request_id}: {exc}") from exc
        self._requests[request_id] = request
        self._open_session(request, ids)

    async def resume(self, request_id: str, append_text: str = "", append_tokens: int = 0) -> None:
        request = self._get(request_id)
        if request.state is State.RUNNING:
            raise EngineError(f"request {request_id} is not paused in a tool call")
        appended = await self._encode_appended(append_text, append_tokens)
        if self._requests.get(request_id) is not request or not is_paused(request):
            raise UnknownRequestError(request_id)  # dropped or resumed while we tokenized
        last = request.context[-1]
        request.context.extend(appended)
        request.segment_start = len(request.context)
        if request.state is State.PAUSED and request.session is not None:
            request.state = State.RUNNING
            self._send_chunk(request, request.session, [last, *appended])
        else:
            request.state = State.RUNNING
            self._open_session(request, list(request.context))

    async def pause(self, request_id: str, strategy: Strategy) -> None:
        self._check_strategy(strategy)
        request = self._get(request_id)
        previous, request.strategy = request.strategy, strategy
        if request.state is State.RUNNING or strategy is previous:
            return
        if strategy is Strategy.DISCARD:
            await self._release(request, ReleaseReason.DISCARDED)
        elif strategy is Strategy.SWAP and request.state is State.PAUSED:
            self._end_session(request)
            request.state = State.SWAPPED
        # SWAPPED -> PRESERVE: the KV comes back from CPU memory when the request resumes.

    async def preempt(
        self, request_id: str, reason: ReleaseReason = ReleaseReason.PREEMPTED
    ) -> None:
        await self._release(self._get(request_id), reason)

    async def abort(self, request_id: str) -> None:
        await self._drop(self._get(request_id))

    # -- sessions --------------------------------------------------------------------------------

    def _open_session(self, request: RequestState, prompt: list[int]) -> None:
        self._sessions += 1
        session = Session(f"{request.id}#{self._sessions}", asyncio.Queue(), len(prompt))
        request.session = session
        self._send_chunk(request, session, prompt)
        task = asyncio.create_task(self._run(request, session), name=session.vllm_id)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _send_chunk(self, request: RequestState, session: Session, token_ids: list[int]) -> None:
        from vllm.engine.protocol import StreamingInput
        from vllm.inputs import TokensPrompt

        # A copy: vLLM's output processor extends a session's prompt list in place.
        prompt = TokensPrompt(prompt_token_ids=list(token_ids))
        session.inputs.put_nowait(StreamingInput(prompt, self._chunk_params(request)))

    def _chunk_params(self, request: RequestState) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        sampling = request.spec.sampling
        max_tokens = request.limit - request.generated
        stop_ids: list[int] = []
        if request.replay:  # forced lengths: exactly the segment's tokens, EOS or not
            left = request.replay[0].output_tokens - request.segment_generated
            max_tokens = min(max_tokens, left)
        elif self._markers is not None:
            stop_ids = [self._markers.close_id]
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            seed=sampling.seed,
            stop_token_ids=stop_ids,
            ignore_eos=bool(request.replay),
            include_stop_str_in_output=True,  # the text shows the call's closing marker
            output_kind=RequestOutputKind.DELTA,
        )

    async def _run(self, request: RequestState, session: Session) -> None:
        """Streams one session's outputs into events until the session ends."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        llm = self.llm
        last: RequestOutput | None = None
        try:
            stream = llm.generate(
                input_chunks(session.inputs),
                # Each chunk carries its own parameters; these set how outputs queue up
                # (deltas merge while this task is busy: none is lost).
                SamplingParams(max_tokens=1, output_kind=RequestOutputKind.DELTA),
                session.vllm_id,
                priority=request.priority,
            )
            async for out in stream:
                last = out
                if session.live:
                    self._on_output(request, session, out)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # vLLM refused or failed the request: it alone fails
            log.exception("vllm request failed", extra={"request_id": request.id})
            if session.live:
                self._finish(request, Failed(request.id, f"vLLM failed the request: {exc!r}"))
        finally:
            if self._gauge is not None:
                self._gauge.ended(session.kv_tokens)
        if session.live:  # vLLM ended the session on its own
            reason = last.outputs[0].finish_reason if last and last.outputs else None
            if reason == "length":  # the model's context is full
                self._complete(request, FinishReason.LENGTH)
            else:
                self._finish(request, Failed(request.id, f"vLLM ended the request ({reason})"))

    def _on_output(self, request: RequestState, session: Session, out: RequestOutput) -> None:
        output = out.outputs[0]
        if not request.started:
            request.started = True
            cached = out.num_cached_tokens or 0
            self._emit(Started(request.id, max(0, request.recompute_base - cached)))
        new = list(output.token_ids)
        if new:
            start = request.generated
            request.context.extend(new)
            request.generated += len(new)
            request.segment_generated += len(new)
            session.kv_tokens = len(request.context)
            self._emit(Tokens(request.id, tuple(new), output.text, start))
            if self._hit_stop_string(request, output.text):
                self._abort_session(session)
                self._complete(request, FinishReason.STOP)
                return
        if output.finish_reason is None or out.finished:
            return  # more to come, or vLLM ended it (handled when the stream ends)
        self._chunk_ended(request, session)

    def _chunk_ended(self, request: RequestState, session: Session) -> None:
        """The session waits for its next chunk: a tool call, the end, or more to generate."""
        if request.generated >= request.limit:
            self._complete(request, FinishReason.LENGTH)
        elif request.replay:
            segment = request.replay[0]
            if request.segment_generated < segment.output_tokens:
                self._send_chunk(request, session, [request.context[-1]])
            elif segment.tool:
                request.replay.popleft()
                self._tool_call(request, tool_calls.ToolCall(segment.tool, segment.arguments_json))
            else:
                self._complete(request, FinishReason.STOP)  # the end of the script
        # The last token says why, not stop_reason: vLLM keeps a session's first stop_reason.
        elif self._markers is not None and request.context[-1] == self._markers.close_id:
            call = self._parse_call(request)
            if call is None:  # a malformed call is text: go on generating
                self._send_chunk(request, session, [request.context[-1]])
            else:
                self._tool_call(request, call)
        else:
            self._complete(request, FinishReason.STOP)  # end of sequence

    def _parse_call(self, request: RequestState) -> tool_calls.ToolCall | None:
        assert self._markers is not None
        generated = request.context[request.segment_start :]
        span = tool_calls.call_span(generated, self._markers)
        if span is None:
            return None
        body = self._tokenizer.decode(generated[span[0] : span[1]], skip_special_tokens=False)
        return tool_calls.parse_call(body)

    def _tool_call(self, request: RequestState, call: tool_calls.ToolCall) -> None:
        request.calls += 1
        request.segment_generated = 0
        request.state = State.PAUSED
        self._emit(
            ToolCalled(
                request_id=request.id,
                call_id=f"{request.id}/call-{request.calls}",
                name=call.name,
                arguments_json=call.arguments_json,
                context_tokens=len(request.context),
                strategy=request.strategy,
            )
        )
        if request.strategy is Strategy.DISCARD:
            self._end_session(request)
            self._hand_back(request, ReleaseReason.DISCARDED)
        elif request.strategy is Strategy.SWAP:
            self._end_session(request)
            request.state = State.SWAPPED

    # -- ending ----------------------------------------------------------------------------------

    def _end_session(self, request: RequestState) -> None:
        """Closes a session waiting for input: vLLM frees (or offloads) its blocks."""
        session, request.session = request.session, None
        if session is not None and session.live:
            session.live = False
            session.inputs.put_nowait(None)

    def _abort_session(self, session: Session) -> None:
        """Stops a session mid-generation; vLLM frees its blocks."""
        if not session.live:
            return
        session.live = False
        task = asyncio.create_task(self.llm.abort(session.vllm_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _stop(self, request: RequestState) -> None:
        if request.session is None:
            return
        if request.state is State.PAUSED:
            self._end_session(request)
        else:
            session, request.session = request.session, None
            self._abort_session(session)

    async def _release(self, request: RequestState, reason: ReleaseReason) -> None:
        self._stop(request)
        self._hand_back(request, reason)

    async def _drop(self, request: RequestState) -> None:
        self._requests.pop(request.id, None)
        self._stop(request)

    def _hand_back(self, request: RequestState, reason: ReleaseReason) -> None:
        self._finish(
            request,
            Released(request.id, reason, tuple(request.context), request.generated),
        )

    def _complete(self, request: RequestState, reason: FinishReason) -> None:
        self._end_session(request)
        completion = request.generated
        self._finish(
            request,
            Completed(request.id, reason, len(request.context) - completion, completion),
        )

    def _finish(self, request: RequestState, event: EngineEvent) -> None:
        """The request's last event: the engine no longer holds it."""
        if self._requests.get(request.id) is request:
            del self._requests[request.id]
            if request.session is not None:
                request.session.live = False
            self._emit(event)

    def _emit(self, event: EngineEvent) -> None:
        if not self._closed:
            self._events.put_nowait(event)

    # -- helpers ---------------------------------------------------------------------------------

    def _check_started(self) -> None:
        if self._llm is None or self._closed:
            raise EngineError("the vllm engine is not running (call start() first)")

    def _check_strategy(self, strategy: Strategy) -> None:
        swap = strategy is Strategy.SWAP
        why = " on this platform (CPU KV offloading needs CUDA)" if swap else ""
        self.require_strategy(strategy, why)

    def _get(self, request_id: str) -> RequestState:
        request = self._requests.get(request_id)
        if request is None:
            raise UnknownRequestError(f"request {request_id} is not held by this engine")
        return request

    def _hit_stop_string(self, request: RequestState, text: str) -> bool:
        stops = request.spec.sampling.stop
        if not stops:
            return False
        request.text_tail = (request.text_tail + text)[-4 * max(map(len, stops)) :]
        return any(stop in request.text_tail for stop in stops)

    async def _context_of(self, spec: AdmitSpec) -> list[int]:
        if spec.context_token_ids:
            ids = list(spec.context_token_ids)
        else:
            ids = await asyncio.to_thread(self._tokenizer.encode, spec.prompt)
        return ids + await self._encode_appended(spec.append_text, spec.append_tokens)

    async def _encode_appended(self, text: str, tokens: int) -> list[int]:
        if text:
            ids: list[int] = await asyncio.to_thread(
                self._tokenizer.encode, text, add_special_tokens=False
            )
            return ids
        return [self._filler] * tokens


__all__ = ["VllmEngine", "VllmOptions", "VllmSettings", "rank_priority"]
