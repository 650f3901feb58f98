"""The engine interface: what the worker agent drives, whatever runs the model.

An engine holds requests (running, or paused in a tool call) and reports what happens to them as a
single stream of events, in the order they happened. The agent turns the scheduler's `Admit`,
`Resume`, `Pause`, `Preempt` and `Abort` into calls here and the events into `RequestUpdate`s; it
never looks inside an engine.

Contract (the shared engine suite in tests/worker/ holds every engine to it):
- `admit` starts a request; its first event is `Started` once prefill is done, then `Tokens`.
- At a tool call (a real one the model made, or the end of a replay segment) the engine emits
  `ToolCalled` and pauses the request under its current strategy. Under Preserve it keeps the KV;
  under Swap it moves it to CPU memory (only engines that list Swap in `strategies`); under
  Discard it frees it and emits `Released(DISCARDED)` with the token-exact context, and no
  longer holds it.
- `resume` continues a request it still holds (Preserve or Swap) with the tool's output appended.
- `pause` changes the strategy of a request paused in a tool call (Preserve -> Discard emits
  `Released(DISCARDED)`).
- `preempt` stops a request and hands it back: `Released(PREEMPTED)`. The engine may also preempt on
  its own under memory pressure; it reports that the same way.
- `abort` drops a request for good and emits nothing more for it.
- `Completed` or `Failed` ends a request; the engine then no longer holds it.
Unknown request ids raise `UnknownRequestError`; a duplicate admission raises
`DuplicateRequestError`; a strategy the engine cannot carry out raises `UnsupportedStrategyError`.
None of them disturbs other requests.
"""

from __future__ import annotations

import abc
import enum
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

from lamps.model.cost import CostModel
from lamps.model.strategy import Strategy


class EngineError(Exception):
    """A call the engine refused; other requests are not affected."""


class UnknownRequestError(EngineError, KeyError):
    """The engine does not hold this request."""

    def __str__(self) -> str:  # KeyError quotes its argument; say it plainly
        return str(self.args[0]) if self.args else "unknown request"


class DuplicateRequestError(EngineError):
    """The engine already holds a request with this id."""


class UnsupportedStrategyError(EngineError):
    """The engine cannot carry out this strategy (a CPU vLLM cannot Swap)."""


class FinishReason(enum.StrEnum):
    STOP = "stop"  # end of sequence, a stop string, or the end of a replay script
    LENGTH = "length"  # max_new_tokens reached


class ReleaseReason(enum.StrEnum):
    DISCARDED = "discarded"
    PREEMPTED = "preempted"
    DRAINED = "drained"


@dataclass(frozen=True, slots=True)
class Sampling:
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ReplaySegment:
    """Trace replay: generate exactly `output_tokens`, then call `tool` (none after the last)."""

    output_tokens: int
    tool: str = ""
    tool_duration_s: float = 0.0
    tool_output_tokens: int = 0

    @property
    def arguments_json(self) -> str:
        """The call's arguments, as the tool runner's emulated tools take them."""
        arguments = {
            "duration_seconds": self.tool_duration_s,
            "output_tokens": self.tool_output_tokens,
        }
        return json.dumps(arguments)


@dataclass(frozen=True, slots=True)
class AdmitSpec:
    """A request to run, from the scheduler's `Admit`."""

    request_id: str
    max_new_tokens: int  # still allowed in this admission
    rank: float = 0.0
    prompt: str = ""  # first admission: the prompt text (the engine tokenizes it) ...
    context_token_ids: tuple[int, ...] = ()  # ... or the token-exact context to continue from
    append_text: str = ""  # a tool's output to append after the context (after a Discard)
    append_tokens: int = 0  # replay: tokens a tool returned, appended instead of text
    sampling: Sampling = Sampling()
    strategy: Strategy = Strategy.PRESERVE  # at the next tool call, until told otherwise
    # The remaining script, empty for real generation. Its first segment counts only the tokens
    # still to generate before its call (after a preemption mid-segment, fewer than the trace's).
    replay: tuple[ReplaySegment, ...] = ()
    generated_tokens: int = 0  # generated before this admission (token indexes continue from it)


@dataclass(frozen=True, slots=True)
class KvReport:
    block_size: int
    total_blocks: int
    free_blocks: int
    cpu_total_blocks: int = 0
    cpu_free_blocks: int = 0


@dataclass(frozen=True, slots=True)
class Started:
    request_id: str
    recomputed_tokens: int = 0  # context computed again that had been computed before


@dataclass(frozen=True, slots=True)
class Tokens:
    request_id: str
    token_ids: tuple[int, ...]
    text: str
    start_index: int  # index of the first of these among the request's generated tokens


@dataclass(frozen=True, slots=True)
class ToolCalled:
    request_id: str
    call_id: str
    name: str
    arguments_json: str
    context_tokens: int
    strategy: Strategy  # what the engine applied while it waits for the scheduler's word


@dataclass(frozen=True, slots=True)
class Released:
    request_id: str
    reason: ReleaseReason
    context_token_ids: tuple[int, ...]
    generated_tokens: int


@dataclass(frozen=True, slots=True)
class Completed:
    request_id: str
    reason: FinishReason
    prompt_tokens: int  # the context this admission started from
    completion_tokens: int  # generated over the whole request, AdmitSpec.generated_tokens included


@dataclass(frozen=True, slots=True)
class Failed:
    request_id: str
    message: str


EngineEvent = Started | Tokens | ToolCalled | Released | Completed | Failed


class Engine(abc.ABC):
    """One model replica. Implementations: `sim` (lamps.model's engine model in scaled real time)
    and `vllm` (vLLM's v1 AsyncLLM in-process)."""

    name: str  # "sim" or "vllm", as the worker registers it

    @property
    @abc.abstractmethod
    def model(self) -> str:
        """The model served, as clients name it."""

    @property
    @abc.abstractmethod
    def strategies(self) -> frozenset[Strategy]:
        """The strategies this engine can carry out."""

    @property
    @abc.abstractmethod
    def max_running(self) -> int:
        """Most requests it runs at once."""

    @property
    def profile(self) -> CostModel | None:
        """Its GPU cost model, when it has one (a named profile, or measured)."""
        return None

    async def start(self) -> None:  # noqa: B027  # optional hook
        """Loads the model; called once before anything else."""

    async def close(self) -> None:  # noqa: B027  # optional hook
        """Stops generating and frees everything; the engine is not used again."""

    def require_strategy(self, strategy: Strategy, why: str = "") -> None:
        """Raise `UnsupportedStrategyError` unless this engine lists `strategy`."""
        if strategy not in self.strategies:
            raise UnsupportedStrategyError(
                f"{strategy.value} is not supported by this engine{why}; it can: "
                + ", ".join(sorted(s.value for s in self.strategies))
            )

    @abc.abstractmethod
    def kv(self) -> KvReport:
        """KV cache capacity and occupancy now."""

    @abc.abstractmethod
    def held(self) -> list[str]:
        """Ids of the requests it holds, running or paused."""

    @abc.abstractmethod
    async def admit(self, spec: AdmitSpec) -> None:
        """Starts a request."""

    @abc.abstractmethod
    async def resume(self, request_id: str, append_text: str = "", append_tokens: int = 0) -> None:
        """Continues a request paused in a tool call, with the tool's output appended."""

    @abc.abstractmethod
    async def pause(self, request_id: str, strategy: Strategy) -> None:
        """Changes the strategy of a paused request (or of its next call, if it is running)."""

    @abc.abstractmethod
    async def preempt(
        self, request_id: str, reason: ReleaseReason = ReleaseReason.PREEMPTED
    ) -> None:
        """Stops a request and hands it back with a `Released` event."""

    @abc.abstractmethod
    async def abort(self, request_id: str) -> None:
        """Drops a request for good."""

    @abc.abstractmethod
    def events(self) -> AsyncIterator[EngineEvent]:
        """Everything that happens, in order. One consumer; it ends after `close`."""
