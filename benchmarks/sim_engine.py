"""How closely the `sim` engine keeps to the time its cost profile models, in real time.

For each time scale and batch size, the same requests run twice: through `lamps.model`'s engine
model in virtual time (the modelled makespan M), and through the `sim` worker engine in real time
(wall time W). The ratio W * scale / M is 1.0 when the engine keeps up; above 1 it fell behind
(Python could not run the iterations as fast as the scaled GPU would).

    python benchmarks/sim_engine.py --scales 10,50,200 --batches 16,256 --json sim_engine.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from lamps.model.cost import get_profile
from lamps.model.engine import EngineModel, Sequence
from lamps.worker.engines.base import AdmitSpec, Completed, ReplaySegment
from lamps.worker.engines.sim import SimEngine

PROMPT_TOKENS = 100


def modelled_makespan(batch: int, output: int) -> float:
    """Seconds the profile's GPU takes for the batch, from the engine model in virtual time."""
    model = EngineModel(get_profile("gptj-6b-a100"))
    for i in range(batch):
        # The sim engine counts the first sampled token inside the segment, as here.
        model.admit(Sequence(f"r{i}", PROMPT_TOKENS, output, tiebreak=i), 0.0)
    now, done = 0.0, 0
    while done < batch:
        iteration = model.step(now)
        assert iteration is not None
        now += iteration.duration_s
        for seq in iteration.stopped:
            model.finish(seq)
            done += 1
    return now


async def wall_time(scale: float, batch: int, output: int) -> float:
    engine = SimEngine(get_profile("gptj-6b-a100"), time_scale=scale)
    await engine.start()
    prompt = " ".join(f"w{i}" for i in range(PROMPT_TOKENS))
    begin = time.perf_counter()
    for i in range(batch):
        replay = (ReplaySegment(output),)
        await engine.admit(AdmitSpec(f"r{i}", output, prompt=prompt, replay=replay))
    done = 0
    async for event in engine.events():
        if isinstance(event, Completed):
            done += 1
            if done == batch:
                break
    elapsed = time.perf_counter() - begin
    await engine.close()
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", default="10,50,200", help="time scales, comma-separated")
    parser.add_argument("--batches", default="16,256", help="requests at once, comma-separated")
    parser.add_argument("--output-tokens", type=int, default=200, help="tokens per request")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    rows = []
    print(f"{'scale':>6} {'batch':>6} {'modelled s':>11} {'wall s':>8} {'wall*scale/modelled':>20}")
    for scale in (float(s) for s in args.scales.split(",")):
        for batch in (int(b) for b in args.batches.split(",")):
            modelled = modelled_makespan(batch, args.output_tokens)
            wall = asyncio.run(wall_time(scale, batch, args.output_tokens))
            ratio = wall * scale / modelled
            rows.append(
                {
                    "scale": scale,
                    "batch": batch,
                    "modelled_s": modelled,
                    "wall_s": wall,
                    "ratio": ratio,
                }
            )
            print(
                f"{scale:>6g} {batch:>6} {modelled:>11.3f} {wall:>8.3f} {ratio:>20.3f}", flush=True
            )
    if args.json:
        with open(args.json, "w") as out:
            json.dump(rows, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
