"""Reliability: faults, overload and hostile input against the live system; writes
benchmarks/reliability.md.

    python benchmarks/reliability.py --json benchmarks/reliability.json

Faults: one `lamps up` (two sim workers, two scheduler replicas, every part a real process on
loopback) replays Poisson
arrivals of a bundled trace once per fault, through the fault harness of tests/support/faults:
each request is submitted with an idempotency key of its own (retried with the same key while the
scheduler is unreachable) and followed with Watch, resumed from its last offset. Mid-run the fault
is injected; afterwards every request is cross-checked with GetRequest and counted accepted,
finished, failed, lost and duplicated (definitions in tests/support/faults/ledger.py).

Load: a second `lamps up` (one worker, a small KV cache, an admission limit) gets twice the rate
the simulator says it sustains, then half of it: what it admits must finish, the rest must be
shed with RESOURCE_EXHAUSTED and a retry hint, and shedding must stop once the rate drops.

Inputs: the seeded wire-level fuzzing of every RPC of every service (tests/support/fuzz.py) and
the calculator and HTTP tool probes (tests/support/tool_probes.py).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import faulthandler
import json
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
sys.path.insert(0, str(REPO_ROOT))  # the harness lives with the tests that share it

from tests.support.faults import report  # noqa: E402
from tests.support.faults.driver import DriveSettings, Progress  # noqa: E402
from tests.support.faults.injectors import run_with_fault, standard_faults  # noqa: E402
from tests.support.faults.load import (  # noqa: E402
    Phase,
    per_interval,
    run_phases,
    shedding_stopped_after,
    sustainable_rate,
)
from tests.support.fuzz import lamps_targets, run_fuzz  # noqa: E402
from tests.support.lamps_up import LampsUp, lamps_up  # noqa: E402
from tests.support.processes import lamps_command, loopback_serve_args  # noqa: E402
from tests.support.redis import running_redis  # noqa: E402
from tests.support.system import CLIENT_TOKEN, CLUSTER_TOKEN, running_system  # noqa: E402
from tests.support.tool_probes import probe_site, probe_tools_file, run_tool_probes  # noqa: E402

from lamps.cli.progress import progress_bar  # noqa: E402
from lamps.model.cost import get_profile  # noqa: E402
from lamps.model.workload import load_trace, poisson_arrivals  # noqa: E402


def main() -> int:
    # A crash inside grpcio's C core (seen once, a client segfault during a failover) should at
    # least say where the Python side was.
    faulthandler.enable()
    args = _arguments()
    started = time.perf_counter()
    document: dict[str, Any] = {"settings": {k: str(v) for k, v in vars(args).items()}}
    document["faults"] = asyncio.run(_faults(args)) if args.faults else []
    document["load"] = asyncio.run(_load(args)) if args.load else {}
    document["inputs"] = _inputs(args) if args.inputs else {}
    document["wall_s"] = round(time.perf_counter() - started, 1)
    markdown = report.markdown(document)
    args.markdown.write_text(markdown, encoding="utf-8")
    _say(f"wrote {args.markdown} in {document['wall_s']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(document, indent=2) + "\n")
        _say(f"wrote {args.json}")
    if args.plot and document["load"]:
        try:
            report.plot_load(args.plot, document["load"])
            _say(f"wrote {args.plot}")
        except RuntimeError as error:  # matplotlib missing: the tables still stand
            _say(str(error))
    return 0 if report.passed(document) else 1


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trace", default="lamps_single_api")
    parser.add_argument("--time-scale", type=float, default=10.0, help="engine s per wall s")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rate", type=float, default=4.0, help="fault runs: req per engine s")
    parser.add_argument("--duration", type=float, default=60.0, help="fault runs: engine s")
    parser.add_argument(
        "--tool-timeout", type=float, default=70.0, help="lamps up --tool-timeout-seconds"
    )
    parser.add_argument(
        "--hang",
        type=float,
        default=15.0,
        help="wall s the tool runner stays stopped (past the tool timeout: calls time out)",
    )
    parser.add_argument("--load-duration", type=float, default=120.0, help="engine s per phase")
    parser.add_argument("--kv-tokens", type=int, default=4000, help="load: the worker's KV")
    parser.add_argument("--max-waiting", type=int, default=16, help="load: admission limit")
    parser.add_argument("--fuzz-count", type=int, default=25, help="fuzzed messages per RPC")
    for part in ("faults", "load", "inputs"):
        parser.add_argument(f"--no-{part}", dest=part, action="store_false")
    parser.add_argument("--markdown", type=Path, default=HERE / "reliability.md")
    parser.add_argument("--plot", type=Path, default=HERE / "reliability_load.png")
    parser.add_argument("--json", type=Path, help="also write the numbers as JSON")
    return parser.parse_args()


def _say(message: str) -> None:
    print(f"reliability: {message}", file=sys.stderr, flush=True)


def _progress(label: str) -> Progress:
    bar = progress_bar()

    def show(sent: int, accepted: int, ended: int, total: int) -> None:
        bar(f"{label}: {sent}/{total} sent, {ended} ended", ended / max(total, 1))

    return show


@contextmanager
def _system(*args: str) -> Iterator[LampsUp]:
    with (
        tempfile.TemporaryDirectory(prefix="lamps-reliability-") as state,
        lamps_up(Path(state), "--port", "0", *args) as running,
    ):
        yield running
        running.stop()


def _settings(args: argparse.Namespace, label: str) -> DriveSettings:
    return DriveSettings(time_scale=args.time_scale, key_prefix=f"{label}-{uuid.uuid4().hex[:8]}")


async def _faults(args: argparse.Namespace) -> list[dict[str, Any]]:
    trace = load_trace(args.trace)
    up = [
        *("--workers", "2", "--schedulers", "2", "--time-scale", str(args.time_scale)),
        # Above the trace's longest call (60 s): only a hung tool runner times calls out.
        *("--tool-timeout-seconds", str(args.tool_timeout)),
    ]
    rows = []
    with _system(*up) as system:
        for index, fault in enumerate(standard_faults(args.hang)):
            arrivals = poisson_arrivals(trace, args.rate, args.duration, args.seed + index)
            _say(f"{fault.name}: {len(arrivals)} requests at {args.rate:g} req/s")
            run = await run_with_fault(
                system.target,
                None,
                system.endpoints,
                2,
                fault,
                arrivals,
                _settings(args, f"fault{index}"),
                progress=_progress(fault.name),
            )
            counts = run.tally
            rows.append(
                counts.row(run.fault)
                | {
                    "injected": run.injected,
                    "offered": counts.offered,
                    "lost_examples": counts.lost_examples,
                    "duplicated_examples": counts.duplicated_examples,
                    "resumed_streams": sum(log.resumes for log in run.logs),
                }
            )
            _say(f"{fault.name}: {json.dumps(rows[-1])}")
    return rows


async def _load(args: argparse.Namespace) -> dict[str, Any]:
    trace = load_trace(args.trace)
    cost = get_profile("gptj-6b-a100").with_kv_tokens(args.kv_tokens)
    rate = sustainable_rate(trace, cost, workers=1, policy="lamps")
    phases = [
        Phase("overload (2x)", 2 * rate, args.load_duration),
        Phase("recovery (0.5x)", 0.5 * rate, args.load_duration),
    ]
    _say(f"load: sustainable about {rate:.2f} req/s (simulated); phases {phases}")
    up = [
        *("--workers", "1", "--time-scale", str(args.time_scale)),
        *("--kv-cache-bytes", str(int(cost.kv_bytes(args.kv_tokens)))),
        *("--max-waiting-requests", str(args.max_waiting)),
    ]
    with _system(*up) as system:
        results = await run_phases(
            system.target,
            None,
            trace,
            phases,
            _settings(args, "load"),
            seed=args.seed,
            progress=_progress("load"),
        )
    return {
        "sustainable_rate": round(rate, 3),
        "kv_tokens": args.kv_tokens,
        "max_waiting_requests": args.max_waiting,
        "phases": [result.row() for result in results],
        "shedding_stopped_after_s": shedding_stopped_after(results, 1, args.time_scale),
        "per_interval": per_interval(results, args.time_scale),
    }


def _inputs(args: argparse.Namespace) -> dict[str, Any]:
    """Seeded fuzzing of every RPC of every service (tests/support/fuzz.py) against a system
    started as the fuzz tests start theirs, and the calculator and HTTP tool probes
    (tests/support/tool_probes.py) against a tool runner allowed to reach a hostile site."""
    with (
        tempfile.TemporaryDirectory(prefix="lamps-inputs-") as scratch,
        running_redis(Path(scratch)) as redis,
        running_system(Path(scratch), redis.url) as system,
    ):
        assert system.tool_runner is not None
        predictor = system.spawn(lamps_command(*loopback_serve_args("predictor")))
        targets = lamps_targets(
            system.target,
            predictor.target,
            system.tool_runner.target,
            client_token=CLIENT_TOKEN,
            cluster_token=CLUSTER_TOKEN,
        )
        _say(f"inputs: fuzzing every RPC of 4 services, {args.fuzz_count} inputs each")
        rows = run_fuzz(targets, args.fuzz_count, args.seed)
        tools_file = Path(scratch) / "probe-tools.json"
        tools_file.write_text(json.dumps(probe_tools_file()))
        with probe_site() as site:
            runner = system.spawn(
                lamps_command(*loopback_serve_args("tool-runner"), "--tools-file", str(tools_file))
            )
            _say("inputs: calculator and HTTP tool probes")
            probes = run_tool_probes(runner.target, site_url=site)
    return {
        "count_per_rpc": args.fuzz_count,
        "fuzz": [dataclasses.asdict(row) for row in rows],
        "tool_probes": [dataclasses.asdict(probe) for probe in probes],
    }


if __name__ == "__main__":
    sys.exit(main())
