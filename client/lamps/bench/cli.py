"""`lamps bench`: replay a trace against a running system, as `lamps simulate` replays it in
virtual time, and print (and write) the same table.

    lamps up --time-scale 10 &
    lamps bench --trace lamps_single_api --rates 4 --duration 300 --compare-simulator \\
        --plot cdf.png --json bench.json
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from pathlib import Path

from lamps.bench.results import latencies, summarize_live
from lamps.bench.runner import Progress, Replay, replay
from lamps.cli.connection import (
    add_connection_arguments,
    async_client_from_args,
    connection_from_args,
)
from lamps.cli.progress import progress_bar
from lamps.client import AsyncClient, ClusterStatus, LampsError
from lamps.model.cost import PROFILES, CostModel, get_profile
from lamps.model.workload import BUNDLED_TRACES, Trace, TraceError, load_trace, poisson_arrivals
from lamps.simulator.metrics import RunResult
from lamps.simulator.report import plot_latency_cdf, tables_by_rate, write_json
from lamps.simulator.runner import Scenario, simulate_latencies
from lamps.simulator.simulator import Fit


class BenchError(Exception):
    """Something the user must fix before the benchmark can run."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_connection_arguments(parser)
    parser.add_argument(
        "--trace",
        default="lamps_single_api",
        help=f"a bundled trace ({', '.join(BUNDLED_TRACES)}) or a path to one in that format "
        "(JSON or JSONL)",
    )
    parser.add_argument("--rates", default="4", help="arrival rates in req/s, comma-separated")
    parser.add_argument(
        "--duration", type=float, default=300.0, help="seconds of arrivals (engine time)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the arrivals")
    parser.add_argument(
        "--time-scale",
        type=float,
        help="engine seconds per wall second; the system's own (lamps up --time-scale) when "
        "omitted, and it must match the system's when given",
    )
    parser.add_argument(
        "--deadline",
        type=float,
        default=600.0,
        help="a request not ended this many engine seconds after it was sent is cancelled and "
        "counted failed",
    )
    parser.add_argument(
        "--compare-simulator",
        action="store_true",
        help="also run the same workload through the simulator and print both side by side",
    )
    parser.add_argument(
        "--profile",
        default="gptj-6b-a100",
        choices=sorted(PROFILES),
        help="the workers' cost profile, for --compare-simulator",
    )
    parser.add_argument(
        "--kv-tokens",
        type=int,
        help="KV capacity per worker for --compare-simulator; the workers' own when omitted",
    )
    parser.add_argument("--plot", type=Path, help="write a PNG of the latency CDF")
    parser.add_argument("--json", type=Path, help="write the results as JSON")


def run(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_run(args))
    except (BenchError, TraceError, ValueError) as error:
        print(f"lamps bench: {error}", file=sys.stderr)
        return 2
    except LampsError as error:
        print(f"lamps bench: {error}", file=sys.stderr)
        return 1


async def _run(args: argparse.Namespace) -> int:
    trace = load_trace(args.trace)
    rates = _rates(args.rates)
    if args.duration <= 0 or args.deadline <= 0:
        raise BenchError("--duration and --deadline must be positive")
    async with async_client_from_args(args) as client:
        status = await client.cluster_status()
        scale = _time_scale(status, args.time_scale)
        cost = _cost(status, args.profile, args.kv_tokens)
        workers = len(status.workers)
        print(
            f"{trace.name} against {connection_from_args(args).target}: policy "
            f"{status.policy}, {workers} worker(s), "
            f"time scale {scale:g}, {args.duration:g} s of arrivals, seed {args.seed}",
            file=sys.stderr,
        )
        results, series = await _measure(client, args, trace, rates, scale, status.policy)
    if args.compare_simulator:
        scenario = Scenario(
            trace=trace,
            cost=cost,
            duration_s=args.duration,
            seed=args.seed,
            workers=workers,
            fit=Fit.BEST,
        )
        for rate in rates:
            simulated, latency = simulate_latencies(scenario, status.policy, rate)
            results.append(simulated)
            series[f"{status.policy} at {rate:g} req/s (simulated)"] = latency
    results.sort(key=lambda result: (result.rate, result.source))
    print(tables_by_rate(results))
    if args.compare_simulator:
        print("\n" + _comparison(results))
    _write(args, results, series, trace, cost, scale, workers)
    return 0 if all(result.failed == 0 for result in results) else 1


async def _measure(
    client: AsyncClient,
    args: argparse.Namespace,
    trace: Trace,
    rates: list[float],
    scale: float,
    policy: str,
) -> tuple[list[RunResult], dict[str, list[float]]]:
    results: list[RunResult] = []
    series: dict[str, list[float]] = {}
    for rate in rates:
        arrivals = poisson_arrivals(trace, rate, args.duration, args.seed)
        started = time.perf_counter()
        outcomes, lag = await replay(
            client,
            arrivals,
            Replay(time_scale=scale, deadline_s=args.deadline / scale),
            _progress(f"{policy} at {rate:g} req/s"),
        )
        wall = time.perf_counter() - started
        if lag * scale > 1.0:
            print(
                f"lamps bench: the client fell {lag:.2f} s (wall) behind the arrival schedule; "
                "lower --time-scale for a faithful replay",
                file=sys.stderr,
            )
        errors = Counter(outcome.error for outcome in outcomes if outcome.error)
        for message, count in errors.most_common(5):
            print(f"lamps bench: {count} request(s) failed: {message}", file=sys.stderr)
        results.append(summarize_live(policy, rate, outcomes, scale, wall))
        series[f"{policy} at {rate:g} req/s (live)"] = latencies(outcomes, scale)
    return results, series


def _progress(label: str) -> Progress:
    bar = progress_bar()

    def show(sent: int, ended: int, total: int) -> None:
        bar(f"{label}: {sent}/{total} sent, {ended} ended", ended / max(total, 1))

    return show


def _rates(text: str) -> list[float]:
    try:
        rates = [float(rate) for rate in text.split(",") if rate.strip()]
    except ValueError:
        raise BenchError(f"--rates must be numbers separated by commas, got {text!r}") from None
    if not rates or min(rates) <= 0:
        raise BenchError("--rates must list positive arrival rates")
    return rates


def _time_scale(status: ClusterStatus, asked: float | None) -> float:
    scale = status.time_scale or 1.0
    if asked is not None and abs(asked - scale) > 1e-9 * scale:
        raise BenchError(
            f"--time-scale {asked:g} does not match the system's ({scale:g}): the scheduler, "
            "workers and tools run at the scale `lamps up --time-scale` gave them; omit "
            "--time-scale or restart the system with the scale you want"
        )
    if not status.workers:
        raise BenchError("no worker is connected to the scheduler; start some (lamps up)")
    return scale


def _cost(status: ClusterStatus, profile: str, kv_tokens: int | None) -> CostModel:
    cost = get_profile(profile)
    if kv_tokens is None:
        kv_tokens = min(w.kv_total_blocks * w.kv_block_size for w in status.workers)
    if kv_tokens < cost.block_size:
        raise BenchError(f"--kv-tokens must be at least one block ({cost.block_size})")
    return cost.with_kv_tokens(kv_tokens)


def _comparison(results: list[RunResult]) -> str:
    lines = ["live against simulated (mean latency, TTFT):"]
    for rate in sorted({result.rate for result in results}):
        live = next(r for r in results if r.rate == rate and r.source == "live")
        simulated = next(r for r in results if r.rate == rate and r.source == "simulated")
        lines.append(
            f"  {live.policy} at {rate:g} req/s: latency {live.mean_latency_s:.2f} s vs "
            f"{simulated.mean_latency_s:.2f} s "
            f"({_ratio(live.mean_latency_s, simulated.mean_latency_s)}), "
            f"TTFT {live.mean_ttft_s:.3f} s vs {simulated.mean_ttft_s:.3f} s"
        )
    return "\n".join(lines)


def _ratio(live: float, simulated: float) -> str:
    return f"{(live / simulated - 1.0):+.1%}" if simulated > 0 else "n/a"


def _write(
    args: argparse.Namespace,
    results: list[RunResult],
    series: dict[str, list[float]],
    trace: Trace,
    cost: CostModel,
    scale: float,
    workers: int,
) -> None:
    if args.json:
        write_json(
            args.json,
            results,
            trace=trace.name,
            profile=cost.name,
            kv_tokens=cost.kv_capacity_tokens,
            workers=workers,
            duration_s=args.duration,
            seed=args.seed,
            time_scale=scale,
        )
        print(f"wrote {args.json}")
    if args.plot:
        title = f"{trace.name}, {cost.name}, {cost.kv_capacity_tokens} KV, time scale {scale:g}"
        try:
            plot_latency_cdf(args.plot, series, title)
        except RuntimeError as error:  # matplotlib missing: the numbers above still stand
            print(f"lamps bench: {error}", file=sys.stderr)
            return
        print(f"wrote {args.plot}")
