"""The `sim` engine's stand-in for a language model: deterministic tokens, text and tool calls.

Text is split on whitespace, one token per word (a word's id is a hash of it, so encoding loses the
spelling; contexts travel as token ids and are never re-encoded). Each id decodes to a two-syllable
word. The next token is a hash of the seed, the position and the last three tokens of the context,
so the same context gives the same continuation on any worker, after any preemption or Discard, and
a tool's output changes what follows it, as with a real model.

Without a replay script the same hash decides where a segment ends: after about one token in
`CALL_ONE_IN` the model calls one of InferCept's six emulated tools (the tool runner's
`emulated.<kind>` tools), with a duration drawn from that tool's published distribution; after
about one in `END_ONE_IN` it ends the request. So `lamps generate` shows tool calls, a few per
256-token request, and benchmarks that want exact lengths replay a trace instead.
"""

from __future__ import annotations

import enum
import json
import random
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from lamps.model.tools import MEAN_TOOL_OUTPUT_TOKENS, TOOL_STATS, ToolKind

VOCAB = 4096
CALL_ONE_IN = 96
END_ONE_IN = 384
# The tool runner registers its emulated tools under this prefix (lamps.tool_runner.tools.emulated).
EMULATED_TOOL_PREFIX = "emulated."

_MASK = (1 << 64) - 1
_SYLLABLES = tuple(c + v for c in "bdfgklmnprstvz" for v in "aeiou")
_KINDS = tuple(ToolKind)


class Boundary(enum.Enum):
    """How a segment ends."""

    CALL = "call"  # a tool call; generation goes on when the tool answers
    END = "end"  # the model ended the request (or a stop string, or the replay script's end)
    LENGTH = "length"  # the token budget ran out


@dataclass(frozen=True, slots=True)
class Call:
    name: str
    arguments_json: str


@dataclass(frozen=True, slots=True)
class Segment:
    """Tokens to generate up to the next boundary, and the call made there (if any)."""

    token_ids: tuple[int, ...]
    boundary: Boundary
    call: Call | None = None


def _mix(x: int) -> int:
    """splitmix64's finaliser: a fast, well-spread 64-bit hash of an integer."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def _hash(seed: int, tail: Sequence[int], salt: int = 0) -> int:
    value = _mix((seed & _MASK) ^ salt)
    for token in tail[-3:]:
        value = _mix(value ^ token)
    return value


def encode(text: str) -> list[int]:
    """One token per whitespace-separated word."""
    return [zlib.crc32(word.encode()) % VOCAB for word in text.split()]


def decode(token_ids: Sequence[int]) -> str:
    """Each token as a space and a two-syllable word."""
    n = len(_SYLLABLES)
    return "".join(f" {_SYLLABLES[(t // n) % n]}{_SYLLABLES[t % n]}" for t in token_ids)


def filler(seed: int, context: Sequence[int], count: int) -> list[int]:
    """`count` tokens standing for a replayed tool's output (its text is not known)."""
    tail = list(context[-3:])
    out = []
    for _ in range(count):
        token = _hash(seed, tail, salt=1) % VOCAB
        out.append(token)
        tail = [*tail[-2:], token]
    return out


def _call(value: int) -> Call:
    kind = _KINDS[(value >> 8) % len(_KINDS)]
    stats = TOOL_STATS[kind]
    mu, sigma = stats.lognormal_parameters()
    # Seeded from the context: the same request calls the same tool for as long, everywhere.
    duration = random.Random(value).lognormvariate(mu, sigma)  # reproducible, not secret
    arguments = {"duration_seconds": round(duration, 6), "output_tokens": MEAN_TOOL_OUTPUT_TOKENS}
    return Call(EMULATED_TOOL_PREFIX + kind.value, json.dumps(arguments))


def generate(
    seed: int,
    context: Sequence[int],
    budget: int,
    *,
    forced: int | None = None,
    stop: Sequence[str] = (),
) -> Segment:
    """The next segment after `context`: at most `budget` tokens, exactly `forced` if given (then
    the caller decides the boundary), else up to the model's own tool call or end."""
    limit = budget if forced is None else min(forced, budget)
    tail = list(context[-3:])
    position = len(context)
    tokens: list[int] = []
    text = ""
    longest_stop = max((len(s) for s in stop), default=0)
    while len(tokens) < limit:
        # The position is part of the hash so that a continuation never falls into a cycle of
        # the same three tokens (which, without it, can repeat one tool call forever).
        value = _hash(seed, tail, salt=position + len(tokens))
        token = value % VOCAB
        tokens.append(token)
        tail = [*tail[-2:], token]
        if stop:
            text = (text + decode([token]))[-(longest_stop + 16) :]
            if any(s in text for s in stop):
                return Segment(tuple(tokens), Boundary.END)
        if forced is None:
            draw = (value >> 32) % (CALL_ONE_IN * END_ONE_IN)
            if draw < END_ONE_IN:
                return Segment(tuple(tokens), Boundary.CALL, _call(value >> 12))
            if draw < END_ONE_IN + CALL_ONE_IN:
                return Segment(tuple(tokens), Boundary.END)
    if forced is not None and limit == forced:
        return Segment(tuple(tokens), Boundary.END)
    return Segment(tuple(tokens), Boundary.LENGTH)
