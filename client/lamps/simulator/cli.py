"""`lamps simulate`: compare policies on a trace in virtual time.

    lamps simulate --trace lamps_single_api --profile gptj-6b-a100 --rates 3,4,5,6 \\
        --policies fcfs,infercept,lamps --kv-tokens 24000 --plot out.png --json out.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from lamps.cli.progress import progress_bar
from lamps.model.cost import PROFILES, get_profile
from lamps.model.workload import BUNDLED_TRACES, TraceError, load_trace
from lamps.scheduler.policy import DEFAULT_STARVATION_THRESHOLD, POLICIES
from lamps.simulator.report import plot_against_rate, tables_by_rate, write_json
from lamps.simulator.runner import Scenario, simulate_grid
from lamps.simulator.simulator import Fit, Placement

DEFAULT_POLICIES = "fcfs,infercept,sjf,lamps,lamps-plus,oracle-lamps"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trace",
        default="lamps_single_api",
        help=f"a bundled trace ({', '.join(BUNDLED_TRACES)}) or a path to one in that format",
    )
    parser.add_argument(
        "--profile", default="gptj-6b-a100", choices=sorted(PROFILES), help="GPU cost profile"
    )
    parser.add_argument(
        "--rates", default="3,4,5,6", help="arrival rates in req/s, comma-separated"
    )
    parser.add_argument("--duration", type=float, default=1800.0, help="seconds of arrivals")
    parser.add_argument(
        "--policies", default=DEFAULT_POLICIES, help=f"comma-separated of: {', '.join(POLICIES)}"
    )
    parser.add_argument("--kv-tokens", type=int, help="override the profile's KV capacity")
    parser.add_argument("--workers", type=int, default=1, help="GPU replicas")
    parser.add_argument(
        "--placement",
        default=Placement.GLOBAL.value,
        choices=[placement.value for placement in Placement],
        help="one global ranked queue with best-fit placement, or a round-robin router in "
        "front of per-worker queues",
    )
    parser.add_argument(
        "--fit",
        default=Fit.SPREAD.value,
        choices=[fit.value for fit in Fit],
        help="with a global queue, give each request to the worker with the most free KV "
        "(spread) or the least that fits (best)",
    )
    parser.add_argument(
        "--prediction-error",
        type=float,
        default=0.0,
        metavar="PCT",
        help="Gaussian error, in percent, added to predicted lengths (the paper's ablation)",
    )
    parser.add_argument(
        "--starvation-threshold",
        type=int,
        default=DEFAULT_STARVATION_THRESHOLD,
        help="passes over a waiting request before it moves to the head lane",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of arrivals and predictions")
    parser.add_argument("--plot", type=Path, help="write a PNG of latency and TTFT against rate")
    parser.add_argument("--json", type=Path, help="write the results as JSON")


def run(args: argparse.Namespace) -> int:
    try:
        scenario, policies, rates = _scenario(args)
    except (TraceError, ValueError) as error:
        print(f"lamps simulate: {error}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    results = simulate_grid(scenario, policies, rates, progress=progress_bar())
    print(
        f"{scenario.trace.name} on {scenario.workers} x {scenario.cost.name} "
        f"({scenario.cost.kv_capacity_tokens} KV tokens), {scenario.duration_s:g} s of arrivals, "
        f"seed {scenario.seed}, {scenario.placement.value} placement"
        + (f" ({scenario.fit.value} fit)" if scenario.placement is Placement.GLOBAL else "")
    )
    print(tables_by_rate(results))
    print(f"\n{len(results)} runs in {time.perf_counter() - started:.1f} s")
    context = {
        "trace": scenario.trace.name,
        "profile": scenario.cost.name,
        "kv_tokens": scenario.cost.kv_capacity_tokens,
        "workers": scenario.workers,
        "placement": scenario.placement.value,
        "fit": scenario.fit.value,
        "duration_s": scenario.duration_s,
        "seed": scenario.seed,
    }
    if args.json:
        write_json(args.json, results, **context)
        print(f"wrote {args.json}")
    if args.plot:
        title = (
            f"{scenario.trace.name}, {scenario.cost.name}, {scenario.cost.kv_capacity_tokens} KV"
        )
        try:
            plot_against_rate(args.plot, results, title)
        except RuntimeError as error:
            print(f"lamps simulate: {error}", file=sys.stderr)
            return 2
        print(f"wrote {args.plot}")
    return 0


def _scenario(args: argparse.Namespace) -> tuple[Scenario, list[str], list[float]]:
    cost = get_profile(args.profile)
    if args.kv_tokens is not None:
        if args.kv_tokens < cost.block_size:
            raise ValueError(f"--kv-tokens must be at least one block ({cost.block_size})")
        cost = cost.with_kv_tokens(args.kv_tokens)
    try:
        rates = [float(rate) for rate in args.rates.split(",") if rate.strip()]
    except ValueError:
        raise ValueError(
            f"--rates must be numbers separated by commas, got {args.rates!r}"
        ) from None
    if not rates or min(rates) <= 0:
        raise ValueError("--rates must list positive arrival rates")
    policies = [name.strip() for name in args.policies.split(",") if name.strip()]
    unknown = [name for name in policies if name not in POLICIES]
    if unknown or not policies:
        raise ValueError(f"unknown policies {unknown}; choose from {', '.join(POLICIES)}")
    if args.duration <= 0 or args.workers < 1:
        raise ValueError("--duration must be positive and --workers at least 1")
    if args.starvation_threshold < 1:
        raise ValueError("--starvation-threshold must be at least 1")
    if args.prediction_error < 0:
        raise ValueError("--prediction-error must not be negative")
    scenario = Scenario(
        trace=load_trace(args.trace),
        cost=cost,
        duration_s=args.duration,
        seed=args.seed,
        workers=args.workers,
        placement=Placement(args.placement),
        fit=Fit(args.fit),
        prediction_error_pct=args.prediction_error,
        starvation_threshold=args.starvation_threshold,
    )
    return scenario, policies, rates
