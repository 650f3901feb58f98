"""A paged-KV, continuous-batching engine model: what one replica does with the requests it holds.

It behaves like vLLM where scheduling is concerned:
- memory is reserved in blocks; a request is admitted only when its whole context fits (with vLLM's
  1% watermark), so prefill never runs out of memory half way;
- every iteration runs one decode token per decoding request plus prefill chunks, in priority order,
  up to `max_batched_tokens` (chunked prefill; by default the saturation point);
- when decoding needs a block and none is free, the running request of lowest priority is preempted
  by recompute (its KV freed; it goes back to its queue);
- at a tool call a request is paused under a strategy with its true costs: Preserve keeps its
  blocks, Discard frees them and recomputes its whole context on return, Swap copies its KV to CPU
  memory and back over one link of limited bandwidth (transfers queue on the link and hold GPU
  blocks until they finish; CPU swap space is finite).

Time is not read from a clock: callers pass `now` (virtual time in the simulator, scaled real time
in the `sim` worker). Decoding advances lazily: a decoding request's counters are brought up to date
only when something needs them, so an iteration costs O(prefilling requests), not O(batch).
"""

from __future__ import annotations

import enum
import heapq
import itertools
from dataclasses import dataclass, field

from lamps.model.cost import CostModel
from lamps.model.strategy import Strategy

WATERMARK = 0.01


class Phase(enum.Enum):
    QUEUED = "queued"  # holds nothing on this engine: new, discarded or preempted
    PREFILL = "prefill"
    DECODE = "decode"
    STOPPED = "stopped"  # reached a segment boundary; KV held until the caller decides
    PAUSED = "paused"  # in a tool call with its KV on the GPU (Preserve)
    SWAPPING_OUT = "swapping_out"
    SWAPPED = "swapped"
    SWAPPING_IN = "swapping_in"
    FINISHED = "finished"


@dataclass(eq=False, slots=True)
class Sequence:
    """A request as an engine sees it. Callers set the context and the output still to generate;
    the engine keeps the rest."""

    request_id: str
    context_tokens: int
    remaining_output: int
    priority: float = 0.0
    tiebreak: float = 0.0
    phase: Phase = Phase.QUEUED
    kv_tokens: int = 0
    reserved: int = 0
    cpu_tokens: int = 0
    recompute_pending: int = 0
    decode_since: int = 0
    version: int = 0
    paused_at: float = 0.0

    @property
    def pending_prefill(self) -> int:
        return self.context_tokens - self.kv_tokens

    def __lt__(self, other: Sequence) -> bool:
        return (self.priority, self.tiebreak) < (other.priority, other.tiebreak)


@dataclass(slots=True)
class Iteration:
    """One forward pass: how long it took and what came of it."""

    duration_s: float
    tokens: int
    recompute_tokens: int
    first_tokens: list[Sequence] = field(default_factory=list)
    stopped: list[Sequence] = field(default_factory=list)


class EngineModel:
    """One replica's running set, KV memory and swap link (see the module docstring)."""

    def __init__(self, cost: CostModel, max_batched_tokens: int | None = None) -> None:
        self.cost = cost
        self.max_batched_tokens = max_batched_tokens or cost.saturation_tokens
        self.capacity = cost.kv_capacity_blocks * cost.block_size
        self.admit_limit = int(self.capacity * (1.0 - WATERMARK))
        self.iteration = 0
        self.used = 0
        self.cpu_used = 0
        self.running_kv = 0
        self.held_token_seconds = 0.0
        self.preemptions = 0
        self.evicted: list[Sequence] = []
        self._running: set[Sequence] = set()
        self._prefilling: list[Sequence] = []
        self._decoding = 0
        self._ends: list[tuple[int, int, int, Sequence]] = []
        self._transfers: list[tuple[float, int, int, Sequence]] = []
        self._link_free_at = 0.0
        self._counter = itertools.count()
        self._iteration_s = cost.iteration_s(1)

    # What callers may know ------------------------------------------------------------------

    @property
    def free_tokens(self) -> int:
        return max(self.admit_limit - self.used, 0)

    @property
    def cpu_free_tokens(self) -> int:
        return self.cost.cpu_swap_tokens - self.cpu_used

    @property
    def decode_tokens(self) -> int:
        return self._decoding

    @property
    def iteration_s(self) -> float:
        """A moving average of recent iteration times."""
        return self._iteration_s

    @property
    def busy(self) -> bool:
        return bool(self._running)

    def next_transfer_s(self) -> float | None:
        return self._transfers[0][0] if self._transfers else None

    def fits(self, seq: Sequence) -> bool:
        """Whether admitting `seq` now keeps memory under the admission limit."""
        return self.used + self._reservation(seq) <= self.admit_limit

    def take_evicted(self) -> list[Sequence]:
        """Requests preempted since the last call: they hold nothing here and must be re-queued."""
        evicted, self.evicted = self.evicted, []
        return evicted

    # Admission and tool calls ---------------------------------------------------------------

    def admit(self, seq: Sequence, now: float) -> None:
        """Start `seq`: prefill its context, or swap its KV back in first if it was swapped."""
        if not self.fits(seq):
            raise ValueError(f"{seq.request_id}: admitted without the memory it needs")
        reservation = self._reservation(seq)
        seq.reserved = reservation
        self.used += reservation
        if seq.phase is Phase.SWAPPED:
            seq.phase = Phase.SWAPPING_IN
            self._transfer(seq, seq.cpu_tokens, now)
        elif seq.phase is Phase.QUEUED:
            seq.kv_tokens = 0
            self._start(seq)
        else:
            raise ValueError(f"{seq.request_id}: cannot admit a request in phase {seq.phase.value}")

    def pause(self, seq: Sequence, strategy: Strategy, now: float) -> Strategy:
        """Apply `strategy` to a request stopped at a tool call (or paused under Preserve).
        Returns what was applied: Swap falls back on Discard when CPU swap space is short."""
        if seq.phase not in (Phase.STOPPED, Phase.PAUSED):
            raise ValueError(f"{seq.request_id}: cannot pause a request in phase {seq.phase.value}")
        if seq.phase is Phase.PAUSED:
            self.held_token_seconds += seq.reserved * (now - seq.paused_at)
        if strategy is Strategy.SWAP and self.cpu_free_tokens < seq.kv_tokens:
            strategy = Strategy.DISCARD
        if strategy is Strategy.PRESERVE:
            seq.phase = Phase.PAUSED
            seq.paused_at = now
        elif strategy is Strategy.DISCARD:
            self._free(seq)
            seq.recompute_pending = seq.kv_tokens
            seq.kv_tokens = 0
            seq.phase = Phase.QUEUED
        else:
            seq.phase = Phase.SWAPPING_OUT
            seq.cpu_tokens = seq.kv_tokens
            self.cpu_used += seq.kv_tokens
            self._transfer(seq, seq.kv_tokens, now)
        return strategy

    def finish(self, seq: Sequence) -> None:
        """Release a request that stopped at the end of its last segment."""
        if seq.phase is not Phase.STOPPED:
            raise ValueError(
                f"{seq.request_id}: cannot finish a request in phase {seq.phase.value}"
            )
        self._free(seq)
        seq.phase = Phase.FINISHED

    def tool_returned(
        self, seq: Sequence, return_tokens: int, next_output: int, now: float
    ) -> bool:
        """A paused request's tool answered. True if it runs again here at once (its KV was kept);
        False if it must be queued: discarded (prefill all) or swapped (swap in first)."""
        if seq.phase is Phase.SWAPPING_OUT:
            # Its KV is still on the GPU: keep that copy and drop the one on its way out.
            seq.version += 1
            self._release_cpu(seq)
            seq.phase = Phase.PAUSED
            seq.paused_at = now
        seq.context_tokens += return_tokens
        seq.remaining_output = next_output
        if seq.phase is Phase.PAUSED:
            self.held_token_seconds += seq.reserved * (now - seq.paused_at)
            return self._resume_preserved(seq, return_tokens)
        if seq.phase not in (Phase.QUEUED, Phase.SWAPPED):
            raise ValueError(f"{seq.request_id}: no tool call to return from")
        return False

    def abort(self, seq: Sequence) -> None:
        """Drop a request wherever it is on this engine (a cancelled request)."""
        if seq.phase in (Phase.PREFILL, Phase.DECODE):
            self._stop_running(seq)
        if seq.phase in (Phase.SWAPPING_OUT, Phase.SWAPPING_IN, Phase.SWAPPED):
            seq.version += 1
            self._release_cpu(seq)
        self._free(seq)
        seq.phase = Phase.FINISHED

    # Iterations --------------------------------------------------------------------------

    def step(self, now: float) -> Iteration | None:
        """Run one iteration starting at `now`; None when nothing is ready to run."""
        self.complete_transfers(now)
        # Each decoding request grows by a token, and so may each request finishing its prefill.
        while self.used + self._decoding + len(self._prefilling) > self.capacity and self._running:
            self._preempt(max(self._running))
        if not self._running:
            return None
        chunks, recompute = self._plan_chunks()
        tokens = self._decoding + sum(chunk for _, chunk in chunks)
        duration = self.cost.iteration_s(tokens, self.running_kv)
        self._iteration_s = 0.9 * self._iteration_s + 0.1 * duration
        self.iteration += 1
        self.used += self._decoding
        self.running_kv += tokens
        result = Iteration(duration_s=duration, tokens=tokens, recompute_tokens=recompute)
        for seq, chunk in chunks:
            seq.kv_tokens += chunk
            if seq.pending_prefill == 0:
                self._prefilled(seq, result)
        self._collect_ends(result)
        return result

    def complete_transfers(self, now: float) -> None:
        while self._transfers and self._transfers[0][0] <= now:
            _, _, version, seq = heapq.heappop(self._transfers)
            if version != seq.version:
                continue
            if seq.phase is Phase.SWAPPING_OUT:
                self._free(seq)
                seq.kv_tokens = 0
                seq.phase = Phase.SWAPPED
            elif seq.phase is Phase.SWAPPING_IN:
                seq.kv_tokens = seq.cpu_tokens
                self._release_cpu(seq)
                self._start(seq)

    # Internals -----------------------------------------------------------------------------

    def _reservation(self, seq: Sequence) -> int:
        # Paged allocation holds at most one partly filled block per request.
        return seq.context_tokens + self.cost.block_size

    def _start(self, seq: Sequence) -> None:
        seq.phase = Phase.PREFILL
        self._running.add(seq)
        self.running_kv += seq.kv_tokens
        if seq.pending_prefill > 0:
            self._prefilling.append(seq)
            self._prefilling.sort()
        else:
            self._begin_decode(seq)

    def _plan_chunks(self) -> tuple[list[tuple[Sequence, int]], int]:
        budget = max(self.max_batched_tokens - self._decoding, self.cost.block_size)
        chunks: list[tuple[Sequence, int]] = []
        recompute = 0
        for seq in self._prefilling:
            if budget <= 0:
                break
            chunk = min(seq.pending_prefill, budget)
            budget -= chunk
            redone = min(chunk, seq.recompute_pending)
            seq.recompute_pending -= redone
            recompute += redone
            chunks.append((seq, chunk))
        return chunks, recompute

    def _prefilled(self, seq: Sequence, result: Iteration) -> None:
        self._prefilling.remove(seq)
        # The last prefill chunk samples the first token of the segment.
        seq.context_tokens += 1
        seq.kv_tokens += 1
        seq.reserved += 1
        seq.remaining_output -= 1
        self.used += 1
        self.running_kv += 1
        result.first_tokens.append(seq)
        if seq.remaining_output <= 0:
            self._stop(seq, result)
        else:
            self._begin_decode(seq)

    def _begin_decode(self, seq: Sequence) -> None:
        seq.phase = Phase.DECODE
        seq.decode_since = self.iteration
        self._decoding += 1
        end = self.iteration + seq.remaining_output
        heapq.heappush(self._ends, (end, next(self._counter), seq.version, seq))

    def _sync(self, seq: Sequence) -> None:
        """Bring a decoding request's counters up to the current iteration."""
        if seq.phase is Phase.DECODE:
            done = self.iteration - seq.decode_since
            seq.context_tokens += done
            seq.kv_tokens += done
            seq.reserved += done
            seq.remaining_output -= done
            seq.decode_since = self.iteration

    def _collect_ends(self, result: Iteration) -> None:
        while self._ends and self._ends[0][0] <= self.iteration:
            _, _, version, seq = heapq.heappop(self._ends)
            if version == seq.version and seq.phase is Phase.DECODE:
                self._stop(seq, result)

    def _stop(self, seq: Sequence, result: Iteration) -> None:
        self._stop_running(seq)
        seq.phase = Phase.STOPPED
        result.stopped.append(seq)

    def _stop_running(self, seq: Sequence) -> None:
        self._sync(seq)
        seq.version += 1
        self._running.discard(seq)
        self.running_kv -= seq.kv_tokens
        if seq.phase is Phase.DECODE:
            self._decoding -= 1
        elif seq in self._prefilling:
            self._prefilling.remove(seq)

    def _free(self, seq: Sequence) -> None:
        self.used -= seq.reserved
        seq.reserved = 0

    def _release_cpu(self, seq: Sequence) -> None:
        self.cpu_used -= seq.cpu_tokens
        seq.cpu_tokens = 0

    def _transfer(self, seq: Sequence, tokens: int, now: float) -> None:
        done = max(now, self._link_free_at) + self.cost.swap_s(tokens)
        self._link_free_at = done
        seq.version += 1
        heapq.heappush(self._transfers, (done, next(self._counter), seq.version, seq))

    def _resume_preserved(self, seq: Sequence, return_tokens: int) -> bool:
        self._make_room(return_tokens, protect=seq)
        if self.used + return_tokens > self.capacity:
            # Not even preemption frees enough: give up the KV and queue like a discarded request.
            self._free(seq)
            seq.recompute_pending = seq.kv_tokens
            seq.kv_tokens = 0
            seq.phase = Phase.QUEUED
            self.preemptions += 1
            return False
        seq.reserved += return_tokens
        self.used += return_tokens
        self._start(seq)
        return True

    def _make_room(self, tokens: int, protect: Sequence) -> None:
        """Preempt running requests of lower priority than `protect` until `tokens` more fit."""
        while self.used + tokens > self.capacity and self._running:
            victim = max(self._running)
            if not protect < victim:
                return
            self._preempt(victim)

    def _preempt(self, victim: Sequence) -> None:
        self._stop_running(victim)
        self._free(victim)
        victim.recompute_pending = victim.kv_tokens
        victim.kv_tokens = 0
        victim.phase = Phase.QUEUED
        self.preemptions += 1
        self.evicted.append(victim)
