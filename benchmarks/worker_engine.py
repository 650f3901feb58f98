"""The vllm engine's overhead: tokens/s and time to first token through our `Engine` interface
against the same AsyncLLM called directly, in one run, on the same model and batch.

    python benchmarks/worker_engine.py [--model DIR] [--batch 8] [--prompt-tokens 64]
        [--output-tokens 128] [--repetitions 5] [--json FILE]

Without --model it builds the tests' tiny Llama (hidden 128, 2 layers, float32) in a temporary
folder; `lamps models smollm2 DIR` makes a real 135M model to pass instead. Each repetition runs
one batch through `VllmEngine` (admit, a streaming-input session per request, events) and one
batch through `AsyncLLM.generate` directly, alternating which goes first; every request has its
own random prompt (no prefix-cache hits) and generates exactly --output-tokens tokens (replay on
our side, ignore_eos on the direct side). One untimed batch of each warms up first. The
overhead is ours over direct, the median over repetitions of 1 - ours/direct for tokens/s and
of ours/direct - 1 for TTFT, each repetition's batches compared with each other. A third row
runs AsyncLLM directly on a one-chunk streaming-input session, the vLLM path ours takes, to split
the overhead between vLLM's session path and our own code.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from lamps.worker.engines.base import AdmitSpec, Completed, ReplaySegment, Tokens
from lamps.worker.engines.vllm import VllmEngine, VllmOptions

REPO_ROOT = Path(__file__).resolve().parents[1]
# ours: VllmEngine; direct: AsyncLLM.generate on a prompt; session: AsyncLLM.generate on a
# one-chunk streaming-input session, the vLLM path ours takes (so the gap to it is our own code).
MODES = ("ours", "direct", "session")


@dataclass(frozen=True)
class Batch:
    """One batch's measurements."""

    tokens: int
    seconds: float
    ttft_s: list[float]

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


@dataclass
class Tally:
    """What the event reader saw of one request."""

    start: float
    done: asyncio.Future[None]
    first: float = 0.0
    tokens: int = 0


class Router:
    """The one reader of the engine's events (as the worker agent is): counts each request's
    tokens, notes its first, and resolves its future when it completes."""

    def __init__(self, engine: VllmEngine) -> None:
        self.tallies: dict[str, Tally] = {}
        self.task = asyncio.create_task(self._read(engine))

    async def _read(self, engine: VllmEngine) -> None:
        async for event in engine.events():
            tally = self.tallies[event.request_id]
            if isinstance(event, Tokens):
                tally.first = tally.first or time.perf_counter() - tally.start
                tally.tokens += len(event.token_ids)
            elif isinstance(event, Completed):
                tally.done.set_result(None)


async def run_ours(
    engine: VllmEngine, router: Router, prompts: list[list[int]], tokens: int, tag: str
) -> Batch:
    async def one(index: int, prompt: list[int]) -> tuple[int, float]:
        request_id = f"{tag}-{index}"
        loop = asyncio.get_running_loop()
        tally = router.tallies[request_id] = Tally(time.perf_counter(), loop.create_future())
        spec = AdmitSpec(
            request_id,
            tokens,
            context_token_ids=tuple(prompt),
            replay=(ReplaySegment(tokens),),
        )
        await engine.admit(spec)
        await tally.done
        del router.tallies[request_id]
        return tally.tokens, tally.first

    return await timed(lambda: asyncio.gather(*(one(i, p) for i, p in enumerate(prompts))))


async def run_direct(engine: VllmEngine, prompts: list[list[int]], tokens: int, tag: str) -> Batch:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import RequestOutputKind

    params = SamplingParams(max_tokens=tokens, ignore_eos=True, output_kind=RequestOutputKind.DELTA)

    async def one(index: int, prompt: list[int]) -> tuple[int, float]:
        start = time.perf_counter()
        first, count = 0.0, 0
        stream = engine.llm.generate(
            TokensPrompt(prompt_token_ids=prompt), params, f"{tag}-{index}"
        )
        async for out in stream:
            if out.outputs[0].token_ids:
                first = first or time.perf_counter() - start
                count += len(out.outputs[0].token_ids)
        return count, first

    return await timed(lambda: asyncio.gather(*(one(i, p) for i, p in enumerate(prompts))))


async def run_direct_session(
    engine: VllmEngine, prompts: list[list[int]], tokens: int, tag: str
) -> Batch:
    """AsyncLLM directly, each request a streaming-input session of one chunk (as ours runs)."""
    from vllm import SamplingParams
    from vllm.engine.protocol import StreamingInput
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import RequestOutputKind

    params = SamplingParams(max_tokens=tokens, ignore_eos=True, output_kind=RequestOutputKind.DELTA)

    async def one(index: int, prompt: list[int]) -> tuple[int, float]:
        async def chunks() -> AsyncIterator[StreamingInput]:
            yield StreamingInput(TokensPrompt(prompt_token_ids=prompt), params)

        start = time.perf_counter()
        first, count = 0.0, 0
        async for out in engine.llm.generate(chunks(), params, f"{tag}-{index}"):
            if out.outputs[0].token_ids:
                first = first or time.perf_counter() - start
                count += len(out.outputs[0].token_ids)
        return count, first

    return await timed(lambda: asyncio.gather(*(one(i, p) for i, p in enumerate(prompts))))


async def timed(batch: Callable[[], Awaitable[list[tuple[int, float]]]]) -> Batch:
    start = time.perf_counter()
    results = await batch()
    seconds = time.perf_counter() - start
    return Batch(sum(c for c, _ in results), seconds, [f for _, f in results])


def random_prompts(rng: random.Random, vocab: int, count: int, length: int) -> list[list[int]]:
    # Ids from 16 up: past the special tokens of both the tiny model and SmolLM2.
    return [[rng.randrange(16, vocab) for _ in range(length)] for _ in range(count)]


async def measure(args: argparse.Namespace, model: str, label: str) -> Result:
    engine = VllmEngine(
        VllmOptions(
            model=model,
            dtype="float32",
            max_model_len=args.prompt_tokens + args.output_tokens + 16,
            kv_cache_bytes=args.kv_cache_mib << 20,
            max_running=args.batch,
        )
    )
    print(f"starting vLLM on {model} ...", file=sys.stderr, flush=True)
    await engine.start()
    router = Router(engine)
    vocab = len(engine.llm.get_tokenizer())
    rng = random.Random(0)
    runs: dict[str, list[Batch]] = {mode: [] for mode in MODES}
    try:
        for rep in range(args.repetitions + 1):  # repetition 0 warms up
            for turn in range(len(MODES)):  # each mode goes first in turn
                mode = MODES[(rep + turn) % len(MODES)]
                prompts = random_prompts(rng, vocab, args.batch, args.prompt_tokens)
                tag = f"{mode}-{rep}"
                if mode == "ours":
                    batch = await run_ours(engine, router, prompts, args.output_tokens, tag)
                elif mode == "direct":
                    batch = await run_direct(engine, prompts, args.output_tokens, tag)
                else:
                    batch = await run_direct_session(engine, prompts, args.output_tokens, tag)
                if rep:
                    runs[mode].append(batch)
            stage = "warm-up" if rep == 0 else f"repetition {rep}/{args.repetitions}"
            print(f"  {stage} done", file=sys.stderr, flush=True)
    finally:
        await engine.close()
        router.task.cancel()
    return summarize(args, label, runs)


@dataclass(frozen=True)
class Result:
    model: str
    batch: int
    prompt_tokens: int
    output_tokens: int
    repetitions: int
    tokens_per_s_ours: float
    tokens_per_s_direct: float
    ttft_ours_s: float
    ttft_direct_s: float
    tokens_per_s_session: float
    ttft_session_s: float
    # Medians of each repetition's ratio (ours against the direct batch run beside it), which
    # cancels the drift of a shared machine better than a ratio of medians.
    throughput_overhead: float
    ttft_overhead: float
    # Every timed batch, per path: (tokens/s, mean TTFT in seconds).
    batches: dict[str, list[tuple[float, float]]]


def summarize(args: argparse.Namespace, model: str, runs: dict[str, list[Batch]]) -> Result:
    def tps(batches: list[Batch]) -> float:
        return statistics.median(b.tokens_per_s for b in batches)

    def mean_ttft(batch: Batch) -> float:
        return statistics.mean(batch.ttft_s)

    def ttft(batches: list[Batch]) -> float:
        return statistics.median(mean_ttft(b) for b in batches)

    pairs = list(zip(runs["ours"], runs["direct"], strict=True))
    expected = args.batch * args.output_tokens
    if any(b.tokens != expected for batches in runs.values() for b in batches):
        raise RuntimeError(f"a batch did not generate exactly {expected} tokens")
    return Result(
        model,
        args.batch,
        args.prompt_tokens,
        args.output_tokens,
        args.repetitions,
        tps(runs["ours"]),
        tps(runs["direct"]),
        ttft(runs["ours"]),
        ttft(runs["direct"]),
        tps(runs["session"]),
        ttft(runs["session"]),
        statistics.median(1 - o.tokens_per_s / d.tokens_per_s for o, d in pairs),
        statistics.median(mean_ttft(o) / mean_ttft(d) - 1 for o, d in pairs),
        {mode: [(b.tokens_per_s, mean_ttft(b)) for b in batches] for mode, batches in runs.items()},
    )


def print_table(result: Result) -> None:
    print(
        f"{result.model}: batch {result.batch}, {result.prompt_tokens} prompt + "
        f"{result.output_tokens} output tokens, median of {result.repetitions} repetitions"
    )
    print(f"{'path':<18} {'tokens/s':>10} {'TTFT ms':>9}")
    print(f"{'-' * 18} {'-' * 10} {'-' * 9}")
    rows = (
        ("VllmEngine (ours)", result.tokens_per_s_ours, result.ttft_ours_s),
        ("AsyncLLM direct", result.tokens_per_s_direct, result.ttft_direct_s),
        ("AsyncLLM session", result.tokens_per_s_session, result.ttft_session_s),
    )
    for label, tps, ttft in rows:
        print(f"{label:<18} {tps:>10.1f} {ttft * 1000:>9.1f}")
    print(
        f"overhead: {result.throughput_overhead:+.1%} tokens/s, "
        f"{result.ttft_overhead:+.1%} TTFT (medians of paired repetitions; goal: under 5%)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a model folder (default: the tests' tiny Llama)")
    parser.add_argument("--batch", type=int, default=8, help="concurrent requests")
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--output-tokens", type=int, default=128)
    parser.add_argument("--repetitions", type=int, default=10)
    parser.add_argument("--kv-cache-mib", type=int, default=256)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lamps-bench-") as scratch:
        model = label = args.model
        if model is None:
            sys.path.insert(0, str(REPO_ROOT))
            from tests.worker.tiny_llama import tiny_llama

            model = str(tiny_llama(Path(scratch) / "tiny-llama"))
            label = "tiny Llama (hidden 128, 2 layers)"
        result = asyncio.run(measure(args, model, label))
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(asdict(result), indent=2) + "\n")
    return 0


if __name__ == "__main__":  # vLLM spawns its engine process: this guard is required
    sys.exit(main())
