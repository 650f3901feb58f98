"""The `vllm` engine's record of each request it holds, and checks on what it is asked to run."""

from __future__ import annotations

import asyncio
import enum
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from lamps.model.strategy import Strategy
from lamps.worker.engines.base import AdmitSpec, EngineError, ReplaySegment


class State(enum.Enum):
    """Where a held request is."""

    RUNNING = "running"  # in a vLLM session that generates
    PAUSED = "paused"  # in a tool call, its session open (Preserve)
    SWAPPED = "swapped"  # in a tool call, its session closed with its KV offloaded (Swap)


@dataclass(eq=False)
class Session:
    """One vLLM streaming-input request."""

    vllm_id: str
    inputs: asyncio.Queue[Any]  # StreamingInput chunks; None closes the session
    kv_tokens: int
    live: bool = True  # False once the engine has decided its end: later outputs are ignored


@dataclass(eq=False)
class RequestState:
    """A request the engine holds: its token-exact context and where it is in its script."""

    spec: AdmitSpec
    priority: int
    context: list[int]
    generated: int  # all its generated tokens, before this admission too
    strategy: Strategy
    replay: deque[ReplaySegment]
    recompute_base: int  # context tokens computed before this admission (for Started)
    state: State = State.RUNNING
    started: bool = False
    segment_generated: int = 0  # since the last tool call (or this admission)
    segment_start: int = 0  # index in context of the first token generated since then
    calls: int = 0
    text_tail: str = ""  # recent output text, for stop strings
    session: Session | None = None  # None while swapped out (or once ended)

    @property
    def id(self) -> str:
        return self.spec.request_id

    @property
    def limit(self) -> int:
        """Generated tokens at which it ends with LENGTH: `max_new_tokens` are still allowed."""
        return self.spec.generated_tokens + self.spec.max_new_tokens


def is_paused(request: RequestState) -> bool:
    return request.state is not State.RUNNING


async def input_chunks(inputs: asyncio.Queue[Any]) -> AsyncIterator[Any]:
    """A session's input stream: chunks until None."""
    while (chunk := await inputs.get()) is not None:
        yield chunk


def check_admission(spec: AdmitSpec) -> None:
    request_id = spec.request_id
    if not request_id:
        raise EngineError("a request needs an id")
    if not spec.prompt and not spec.context_token_ids:
        raise EngineError(f"request {request_id} has neither a prompt nor context tokens")
    if spec.max_new_tokens < 1:
        raise EngineError(
            f"request {request_id} has no tokens left to generate "
            f"(max_new_tokens {spec.max_new_tokens})"
        )
    if spec.append_tokens < 0 or any(s.output_tokens < 1 for s in spec.replay):
        raise EngineError(
            f"request {request_id}: replay segments need at least one output token "
            "and appended token counts cannot be negative"
        )
