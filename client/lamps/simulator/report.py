"""Tables, plots and JSON of run results."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lamps.simulator.metrics import RunResult

COLUMNS = (
    ("policy", "policy", "{}"),
    ("mean_latency_s", "mean s", "{:.2f}"),
    ("p50_latency_s", "p50 s", "{:.2f}"),
    ("p99_latency_s", "p99 s", "{:.2f}"),
    ("mean_serving_latency_s", "serving s", "{:.2f}"),
    ("mean_ttft_s", "TTFT s", "{:.3f}"),
    ("p99_ttft_s", "p99 TTFT s", "{:.3f}"),
    ("throughput_rps", "req/s", "{:.2f}"),
    ("idle_held_gb", "idle GB", "{:.2f}"),
    ("recompute_share", "recompute", "{:.1%}"),
    ("starved", "starved", "{}"),
    ("finished", "done", "{}"),
    ("failed", "failed", "{}"),
    ("wall_s", "wall s", "{:.1f}"),
)
SOURCE_COLUMN = ("source", "source", "{}")


def table(results: Sequence[RunResult]) -> str:
    """A fixed-width table, one row per result; a source column when live and simulated rows
    are side by side."""
    columns = list(COLUMNS)
    if len({result.source for result in results}) > 1:
        columns.insert(1, SOURCE_COLUMN)
    header = [title for _, title, _ in columns]
    rows = [[_cell(getattr(result, key), fmt) for key, _, fmt in columns] for result in results]
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = [_line(header, widths), _line(["-" * width for width in widths], widths)]
    lines.extend(_line(row, widths) for row in rows)
    return "\n".join(lines)


def _cell(value: object, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def _line(cells: Sequence[str], widths: Sequence[int]) -> str:
    first, *rest = cells
    return "  ".join(
        [first.ljust(widths[0])]
        + [cell.rjust(width) for cell, width in zip(rest, widths[1:], strict=True)]
    )


def tables_by_rate(results: Sequence[RunResult]) -> str:
    rates = sorted({result.rate for result in results})
    parts = []
    for rate in rates:
        rows = [result for result in results if result.rate == rate]
        parts.append(f"rate {rate:g} req/s\n{table(rows)}")
    return "\n\n".join(parts)


def write_json(path: Path, results: Sequence[RunResult], **context: object) -> None:
    document = {**context, "results": [result.to_json() for result in results]}
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def plot_against_rate(path: Path, results: Sequence[RunResult], title: str) -> None:
    """Mean latency and mean TTFT against rate, one line per policy."""
    plt = _pyplot()
    figure, (latency_axis, ttft_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
    for policy in dict.fromkeys(result.policy for result in results):
        rows = sorted((r for r in results if r.policy == policy), key=lambda r: r.rate)
        rates = [row.rate for row in rows]
        latency_axis.plot(rates, [row.mean_latency_s for row in rows], marker="o", label=policy)
        ttft_axis.plot(rates, [row.mean_ttft_s for row in rows], marker="o", label=policy)
    latency_axis.set(xlabel="arrival rate (req/s)", ylabel="mean end-to-end latency (s)")
    ttft_axis.set(xlabel="arrival rate (req/s)", ylabel="mean time to first token (s)")
    for axis in (latency_axis, ttft_axis):
        axis.set_yscale("log")
        axis.grid(alpha=0.3)
    latency_axis.legend(fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_latency_cdf(path: Path, series: Mapping[str, Sequence[float]], title: str) -> None:
    """The cumulative distribution of end-to-end latency, one line per labelled series."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 4.2))
    # "lamps (live)" and "lamps (simulated)" share a colour; simulated lines are dashed.
    colours: dict[str, str] = {}
    for label, values in series.items():
        ordered = sorted(values)
        if not ordered:
            continue
        fractions = [(index + 1) / len(ordered) for index in range(len(ordered))]
        base = label.split(" (")[0]
        colour = colours.setdefault(base, f"C{len(colours) % 10}")
        style = "--" if "simulated" in label else "-"
        axis.plot(ordered, fractions, style, color=colour, label=label, drawstyle="steps-post")
    axis.set(xlabel="end-to-end latency (s)", ylabel="fraction of requests", xscale="log")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("plots need matplotlib: pip install 'lamps-serving[plot]'") from None
    return plt
