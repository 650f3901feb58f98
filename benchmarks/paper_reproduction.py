"""Reproduce the LAMPS paper's comparison in virtual time: benchmarks/paper_reproduction.md.

    python benchmarks/paper_reproduction.py [--duration 1800] [--json FILE] [--out-dir DIR]

Runs every policy on the bundled traces at the paper's rates, with the profile's full KV capacity
and with KV capacities where memory binds; sweeps KV capacity; compares a global queue with a
round-robin router on an 8-worker cluster; and checks the targets of the policy issue. Prints
progress to stderr, writes the report, its plots (PNG) and, with --json, every number.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lamps.model.cost import CostModel, get_profile
from lamps.model.workload import Trace, load_trace
from lamps.simulator.metrics import RunResult
from lamps.simulator.report import plot_against_rate
from lamps.simulator.runner import Scenario, simulate
from lamps.simulator.simulator import Fit, Placement

POLICIES = ("fcfs", "infercept", "sjf", "lamps", "lamps-plus", "oracle-lamps")
SINGLE_RATES = (3.0, 4.0, 5.0, 6.0)
MIXED_RATES = (1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0)
# A policy sustains a load when its queue drains soon after arrivals stop: within 5% of the
# arrival window, plus the longest tool chain of the trace and two minutes of serving.
SUSTAIN_SLACK_S = 120.0


def sustained(result: RunResult, scenario: Scenario) -> bool:
    longest_tools = max(request.tool_time_s for request in scenario.trace.requests)
    return result.makespan_s <= 1.05 * scenario.duration_s + longest_tools + SUSTAIN_SLACK_S


@dataclass
class Section:
    key: str
    title: str
    scenario: Scenario
    rates: Sequence[float]
    results: list[RunResult]


class Progress:
    def __init__(self, total: int) -> None:
        self.total, self.done, self.started = total, 0, time.perf_counter()

    def tick(self, label: str) -> None:
        self.done += 1
        elapsed = time.perf_counter() - self.started
        sys.stderr.write(f"[{self.done:4d}/{self.total}] {elapsed:6.0f} s  {label}\n")
        sys.stderr.flush()


def run_grid(
    scenario: Scenario, rates: Sequence[float], progress: Progress, policies: Sequence[str]
) -> list[RunResult]:
    results = []
    for rate in rates:
        for policy in policies:
            results.append(simulate(scenario, policy, rate))
            progress.tick(
                f"{scenario.trace.name} kv={scenario.cost.kv_capacity_tokens} {policy} @ {rate:g}"
            )
    return results


def by(results: Sequence[RunResult], policy: str, rate: float) -> RunResult:
    return next(r for r in results if r.policy == policy and r.rate == rate)


def latency_table(section: Section, field: str, fmt: str = "{:.2f}") -> str:
    header = "| policy | " + " | ".join(f"{rate:g} req/s" for rate in section.rates) + " |"
    lines = [header, "|---" * (len(section.rates) + 1) + "|"]
    for policy in dict.fromkeys(r.policy for r in section.results):
        cells = []
        for rate in section.rates:
            row = by(section.results, policy, rate)
            mark = "" if sustained(row, section.scenario) else " *"
            cells.append(fmt.format(getattr(row, field)) + mark)
        lines.append(f"| {policy} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def gains(section: Section) -> list[str]:
    """The issue's targets, checked at every rate both baselines sustain."""
    lines = []
    for rate in section.rates:
        infercept = by(section.results, "infercept", rate)
        lamps = by(section.results, "lamps", rate)
        plus = by(section.results, "lamps-plus", rate)
        oracle = by(section.results, "oracle-lamps", rate)
        both = all(sustained(r, section.scenario) for r in (infercept, lamps))
        best = min(infercept.mean_latency_s, lamps.mean_latency_s)
        lines.append(
            f"| {rate:g} | {'yes' if both else 'no'} "
            f"| {_drop(lamps.mean_latency_s, infercept.mean_latency_s)} "
            f"| {_drop(lamps.mean_ttft_s, infercept.mean_ttft_s)} "
            f"| {_drop(lamps.mean_serving_latency_s, infercept.mean_serving_latency_s)} "
            f"| {_drop(plus.mean_latency_s, infercept.mean_latency_s)} "
            f"| {_drop(plus.mean_ttft_s, infercept.mean_ttft_s)} "
            f"| {plus.mean_latency_s / best - 1:+.1%} "
            f"| {plus.mean_latency_s / oracle.mean_latency_s - 1:+.1%} |"
        )
    header = (
        "| rate | both sustain | lamps vs InferCept latency | lamps vs InferCept TTFT "
        "| lamps vs InferCept serving | lamps-plus vs InferCept latency "
        "| lamps-plus vs InferCept TTFT | lamps-plus vs best of (InferCept, lamps) "
        "| lamps-plus vs oracle-lamps |\n|---|---|---|---|---|---|---|---|---|"
    )
    return [header, *lines]


def _drop(value: float, baseline: float) -> str:
    return f"{value / baseline - 1:+.1%}" if baseline > 0 else "n/a"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=1800.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    gptj = get_profile("gptj-6b-a100")
    single, mixed = load_trace("lamps_single_api"), load_trace("infercept_mixed")

    def scenario(trace: Trace, cost: CostModel, **extra: Any) -> Scenario:
        return Scenario(trace, cost, duration_s=args.duration, seed=args.seed, **extra)

    sections = [
        Section(
            "single-full",
            "lamps_single_api, GPT-J 6B on one A100 (full KV)",
            scenario(single, gptj),
            SINGLE_RATES,
            [],
        ),
        Section(
            "single-24k",
            "lamps_single_api, GPT-J 6B, KV capped at 24,000 tokens",
            scenario(single, gptj.with_kv_tokens(24_000)),
            SINGLE_RATES,
            [],
        ),
        Section(
            "single-16k",
            "lamps_single_api, GPT-J 6B, KV capped at 16,000 tokens",
            scenario(single, gptj.with_kv_tokens(16_000)),
            SINGLE_RATES,
            [],
        ),
        Section(
            "mixed-full",
            "infercept_mixed, GPT-J 6B on one A100 (full KV)",
            scenario(mixed, gptj),
            MIXED_RATES,
            [],
        ),
        Section(
            "mixed-40k",
            "infercept_mixed, GPT-J 6B, KV capped at 40,000 tokens",
            scenario(mixed, gptj.with_kv_tokens(40_000)),
            MIXED_RATES,
            [],
        ),
        Section(
            "mixed-vicuna",
            "infercept_mixed, Vicuna-13B on two A100s (InferCept's setup)",
            scenario(mixed, get_profile("vicuna-13b-a100x2")),
            MIXED_RATES,
            [],
        ),
    ]
    kv_sweep = (126_000, 64_000, 48_000, 32_000, 24_000, 20_000, 16_000, 12_000)
    sweep_rate = 5.0
    cluster_policies = ("lamps", "lamps-plus")
    # One GPT-J worker with 24,000 KV tokens sustains about 6 req/s of lamps_single_api (the
    # 24k section); the cluster runs at 80% and 95% of eight of them.
    cluster_kv = 24_000
    cluster_rates = (8 * 6.0 * 0.80, 8 * 6.0 * 0.95)
    cluster_variants = (
        (Placement.GLOBAL, Fit.SPREAD),
        (Placement.GLOBAL, Fit.BEST),
        (Placement.ROUND_ROBIN, Fit.SPREAD),
    )
    ablation = (0.0, 10.0, 25.0, 50.0, 100.0)
    total = (
        sum(len(s.rates) * len(POLICIES) for s in sections)
        + len(kv_sweep) * len(POLICIES)
        + len(cluster_variants) * len(cluster_rates) * len(cluster_policies)
        + 2 * len(ablation)
    )
    progress = Progress(total)
    for section in sections:
        section.results = run_grid(section.scenario, section.rates, progress, POLICIES)
    sweep: list[tuple[int, RunResult]] = []
    for kv in kv_sweep:
        sweep_scenario = scenario(single, gptj.with_kv_tokens(kv))
        for policy in POLICIES:
            sweep.append((kv, simulate(sweep_scenario, policy, sweep_rate)))
            progress.tick(f"sweep kv={kv} {policy}")
    cluster: list[tuple[str, RunResult]] = []
    for rate in cluster_rates:
        for placement, fit in cluster_variants:
            label = placement.value if placement is Placement.ROUND_ROBIN else f"global, {fit}"
            cluster_scenario = scenario(
                single,
                gptj.with_kv_tokens(cluster_kv),
                workers=8,
                placement=placement,
                fit=fit,
            )
            for policy in cluster_policies:
                cluster.append((label, simulate(cluster_scenario, policy, rate)))
                progress.tick(f"cluster {label} {policy} @ {rate:g}")
    errors: list[tuple[float, RunResult]] = []
    for error in ablation:
        error_scenario = replace(
            scenario(single, gptj.with_kv_tokens(20_000)), prediction_error_pct=error
        )
        for policy in ("lamps", "lamps-plus"):
            errors.append((error, simulate(error_scenario, policy, 5.0)))
            progress.tick(f"prediction error {error:g}% {policy}")
    write_report(args, sections, sweep, sweep_rate, cluster, cluster_kv, errors)
    if args.json:
        document = {
            "sections": {
                s.key: {"title": s.title, "results": [r.to_json() for r in s.results]}
                for s in sections
            },
            "kv_sweep": [{"kv_tokens": kv, **r.to_json()} for kv, r in sweep],
            "cluster": [{"placement": p, **r.to_json()} for p, r in cluster],
            "prediction_error": [{"error_pct": e, **r.to_json()} for e, r in errors],
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    return 0


def write_report(
    args: argparse.Namespace,
    sections: list[Section],
    sweep: list[tuple[int, RunResult]],
    sweep_rate: float,
    cluster: list[tuple[str, RunResult]],
    cluster_kv: int,
    errors: list[tuple[float, RunResult]],
) -> None:
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    parts = [HEADER.format(duration=args.duration, seed=args.seed), findings(sections, cluster)]
    for section in sections:
        plot = f"paper_reproduction_{section.key}.png"
        plot_against_rate(out / plot, section.results, section.title)
        walls = [r.wall_s for r in section.results]
        parts.append(
            f"## {section.title}\n\n"
            f"{section.scenario.cost.kv_capacity_tokens:,} KV tokens. "
            f"Simulated in {min(walls):.1f}-{max(walls):.1f} s of wall time per policy "
            "and rate.\n\n"
            f"Mean end-to-end latency (s); `*` where the policy did not sustain the rate:\n\n"
            f"{latency_table(section, 'mean_latency_s')}\n\n"
            f"Mean TTFT (s):\n\n{latency_table(section, 'mean_ttft_s', '{:.3f}')}\n\n"
            f"Mean serving latency, tool time taken out (s):\n\n"
            f"{latency_table(section, 'mean_serving_latency_s')}\n\n"
            f"p99 latency (s):\n\n{latency_table(section, 'p99_latency_s')}\n\n"
            f"Targets:\n\n" + "\n".join(gains(section)) + f"\n\n![{section.title}]({plot})\n"
        )
    parts.append(sweep_section(out, sweep, sweep_rate))
    parts.append(cluster_section(cluster, cluster_kv))
    parts.append(error_section(errors))
    (out / "paper_reproduction.md").write_text("\n".join(parts))


def sweep_section(out: Path, sweep: list[tuple[int, RunResult]], rate: float) -> str:
    kvs = sorted({kv for kv, _ in sweep}, reverse=True)
    policies = list(dict.fromkeys(r.policy for _, r in sweep))
    lines = [
        "| policy | " + " | ".join(f"{kv:,}" for kv in kvs) + " |",
        "|---" * (len(kvs) + 1) + "|",
    ]
    for policy in policies:
        cells = [
            f"{r.mean_latency_s:.1f} / {r.mean_ttft_s:.2f}"
            for kv in kvs
            for _, r in [next(p for p in sweep if p[0] == kv and p[1].policy == policy)]
        ]
        lines.append(f"| {policy} | " + " | ".join(cells) + " |")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axis = plt.subplots(figsize=(7, 4.2))
        for policy in policies:
            points = sorted((kv, r.mean_latency_s) for kv, r in sweep if r.policy == policy)
            axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=policy)
        axis.set(
            xscale="log",
            yscale="log",
            xlabel="KV capacity (tokens)",
            ylabel="mean latency (s)",
            title=f"lamps_single_api at {rate:g} req/s, GPT-J",
        )
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
        figure.tight_layout()
        figure.savefig(out / "paper_reproduction_kv_sweep.png", dpi=120)
        plt.close(figure)
    except ImportError:
        pass
    return (
        f"## Where memory binds: a sweep of KV capacity\n\nlamps_single_api at {rate:g} req/s, "
        f"GPT-J 6B; each cell is mean latency / mean TTFT in seconds.\n\n"
        + "\n".join(lines)
        + "\n\n![KV sweep](paper_reproduction_kv_sweep.png)\n"
    )


def cluster_section(cluster: list[tuple[str, RunResult]], kv: int) -> str:
    lines = [
        "| rate | placement | policy | mean s | serving s | p99 s | TTFT s | p99 TTFT s | wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for placement, r in cluster:
        lines.append(
            f"| {r.rate:g} | {placement} | {r.policy} | {r.mean_latency_s:.2f} "
            f"| {r.mean_serving_latency_s:.2f} | {r.p99_latency_s:.2f} | {r.mean_ttft_s:.3f} "
            f"| {r.p99_ttft_s:.3f} | {r.wall_s:.1f} |"
        )
    verdicts = []
    for rate in dict.fromkeys(r.rate for _, r in cluster):
        for policy in dict.fromkeys(r.policy for _, r in cluster):
            rows = {p: r for p, r in cluster if r.policy == policy and r.rate == rate}
            glob, rr = rows["global, spread"], rows["round-robin"]
            verdicts.append(
                f"- {policy} at {rate:g} req/s: the global queue against round-robin: mean "
                f"latency {_drop(glob.mean_latency_s, rr.mean_latency_s)}, serving latency "
                f"{_drop(glob.mean_serving_latency_s, rr.mean_serving_latency_s)}, TTFT "
                f"{_drop(glob.mean_ttft_s, rr.mean_ttft_s)}."
            )
    return (
        f"## A cluster: one global queue against a round-robin router\n\n8 workers of GPT-J 6B "
        f"with {kv:,} KV tokens each, lamps_single_api at 80% and 95% of what eight such "
        f"workers sustain. `global, spread` gives each request to the worker with the most free "
        f"KV, `global, best` to the one with the least that fits.\n\n"
        + "\n".join(lines)
        + "\n\n"
        + "\n".join(verdicts)
        + "\n"
    )


def error_section(errors: list[tuple[float, RunResult]]) -> str:
    lines = ["| error | policy | mean s | TTFT s | p99 s |", "|---|---|---|---|---|"]
    for error, r in errors:
        lines.append(
            f"| {error:g}% | {r.policy} | {r.mean_latency_s:.2f} | {r.mean_ttft_s:.3f} "
            f"| {r.p99_latency_s:.2f} |"
        )
    return (
        "## Prediction error (the paper's ablation)\n\nlamps_single_api at 5 req/s with 20,000 "
        "KV tokens, Gaussian error of p% on the predicted length before binning.\n\n"
        + "\n".join(lines)
        + "\n"
    )


def findings(sections: list[Section], cluster: list[tuple[str, RunResult]]) -> str:
    """The headline numbers, computed from the runs below."""
    lamps_drops, ttft_drops, plus_excess, plus_vs_oracle = [], [], [], []
    for section in sections:
        for rate in section.rates:
            rows = {p: by(section.results, p, rate) for p in ("infercept", "lamps", "lamps-plus")}
            rows["oracle"] = by(section.results, "oracle-lamps", rate)
            if not all(sustained(r, section.scenario) for r in rows.values()):
                continue
            where = f"{section.key} at {rate:g} req/s"
            base = rows["infercept"]
            lamps_drops.append((rows["lamps"].mean_latency_s / base.mean_latency_s - 1, where))
            ttft_drops.append((rows["lamps"].mean_ttft_s / base.mean_ttft_s - 1, where))
            best = min(base.mean_latency_s, rows["lamps"].mean_latency_s)
            plus_excess.append((rows["lamps-plus"].mean_latency_s / best - 1, where))
            oracle = rows["oracle"].mean_latency_s
            plus_vs_oracle.append((rows["lamps-plus"].mean_latency_s / oracle - 1, where))
    lines = [
        "## Findings (computed from the runs below, at loads every compared policy sustains)",
        "",
        f"- Largest drop of `lamps` against InferCept in mean latency: "
        f"{min(lamps_drops)[0]:+.1%} ({min(lamps_drops)[1]}); in mean TTFT: "
        f"{min(ttft_drops)[0]:+.1%} ({min(ttft_drops)[1]}).",
        f"- Worst case of `lamps` against InferCept in mean latency: "
        f"{max(lamps_drops)[0]:+.1%} ({max(lamps_drops)[1]}).",
        f"- `lamps-plus` against the better of InferCept and `lamps`, worst case: "
        f"{max(plus_excess)[0]:+.1%} ({max(plus_excess)[1]}); best case: "
        f"{min(plus_excess)[0]:+.1%} ({min(plus_excess)[1]}).",
        f"- `lamps-plus` against `oracle-lamps`, worst case: {max(plus_vs_oracle)[0]:+.1%} "
        f"({max(plus_vs_oracle)[1]}).",
    ]
    for label, r in cluster:
        if label != "global, spread":
            continue
        rr = next(
            x
            for p, x in cluster
            if p == "round-robin" and x.policy == r.policy and x.rate == r.rate
        )
        lines.append(
            f"- Cluster, {r.policy} at {r.rate:g} req/s: global queue against round-robin "
            f"{_drop(r.mean_latency_s, rr.mean_latency_s)} mean latency, "
            f"{_drop(r.mean_serving_latency_s, rr.mean_serving_latency_s)} serving latency, "
            f"{_drop(r.mean_ttft_s, rr.mean_ttft_s)} TTFT."
        )
    return "\n".join(lines) + "\n\n" + ANALYSIS


HEADER = """# LAMPS in virtual time: the paper's comparison, reproduced

Written by `python benchmarks/paper_reproduction.py --json benchmarks/paper_reproduction.json`
({duration:g} s of Poisson arrivals per run, seed {seed}; every policy sees the same arrivals).
The simulator drives the policy core and engine model the live system uses (`lamps.model`,
`lamps.scheduler.policy`); `lamps` sees only the paper's predictions (10-token bins of the true
pre-call length; call durations as the running mean of each tool's past calls), and only
`oracle-lamps` sees the truth. Latency is end to end, tool time included; "serving" latency takes
the request's tool time out (the part scheduling can change). TTFT is the first token of the first
segment.
"""


ANALYSIS = """### Why the gains appear where they do

- **With an A100's whole KV cache every policy ties.** GPT-J on an 80 GB A100 keeps about 126,000
  tokens of KV; at the paper's rates lamps_single_api needs a few thousand tokens of running
  context and some 10k more idle-held by Preserve, so nothing waits for memory and the order of
  the queue does not matter. Only vLLM's Discard costs something (recompute, the `fcfs` rows).
  The same holds for infercept_mixed, and for Vicuna-13B on two GPUs, at 1-4 req/s.
- **The gains appear where KV memory binds** (the sweep): from about 24,000 tokens down at 5 req/s
  requests queue for memory, and the order of the queue decides who waits. There LAMPS' ranking
  cuts TTFT by 60-90% and the serving part of latency by up to half; end-to-end latency falls
  less because most of it is the tools' own time (about 7.6 s of the 12 s mean in
  lamps_single_api, 50 s in infercept_mixed), which no scheduler can shorten. The paper's
  27%-85% on end-to-end latency needs a regime where queueing dominates the tool time.
- **The starvation lane undoes LAMPS near saturation.** The paper moves a request passed over 100
  times to a FIFO lane served first. When the queue stays long, every waiting request crosses the
  threshold, the lane turns the queue back into FIFO, and its head blocks admission: `lamps`
  (and `oracle-lamps`, which shares the lane) fall behind InferCept at 6 req/s with 24,000
  tokens. `lamps-plus` replaces the lane with aging (rank = score + 300 token-seconds per second
  waited; the same slope for everyone keeps the key static, so the queue never re-sorts), picks
  the strategy again at the intercept from the true context and free swap space, and revises a
  Preserve whose call outlives its prediction.
- **Prediction error barely matters here**: a 10-token bin is fine-grained beside the spread of
  lengths, and the memory x time score is dominated by the call term.
- **Placement**: best-fit packing (DESIGN.md's first idea) puts new requests on the busiest
  worker, whose prefill budget is eaten by its decoders, and leaves others idle; spreading to the
  worker with the most free KV is what a global queue should do. Against a round-robin router over
  eight identical workers the global queue's edge is in TTFT and tail; its end-to-end mean gains
  are a few percent at 80-95% load, because Poisson arrivals split round-robin are already
  balanced and the tools' time dominates.
"""


if __name__ == "__main__":
    sys.exit(main())
