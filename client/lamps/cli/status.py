"""`lamps status`: the scheduler's policy and queue, and a table of its workers."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Sequence

from lamps.cli.connection import add_connection_arguments, client_from_args, report_error
from lamps.client import ClusterStatus, LampsError, WorkerStatus

# A status call is quick; an address that swallows packets should not hang the command.
TIMEOUT_S = 10.0
COLUMNS = ("WORKER", "ENGINE", "MODEL", "STATE", "KV USED/TOTAL", "KV %", "RUNNING", "IN TOOL")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the status as one JSON object")
    add_connection_arguments(parser)


def run(args: argparse.Namespace) -> int:
    with client_from_args(args, timeout_s=TIMEOUT_S) as client:
        try:
            status = client.cluster_status()
        except LampsError as error:
            return report_error("status", client.target, error)
    if args.json:
        print(json.dumps(dataclasses.asdict(status), indent=2))
    else:
        print(render(status, now=time.time()))
    return 0


def render(status: ClusterStatus, *, now: float) -> str:
    """The status as a summary line and a table of workers, ages measured from `now`."""
    head = (
        f"policy {status.policy}  leader {status.leader_id or '-'}  queued {status.queued}  "
        f"starved {status.starved}  running {status.running}  in tool {status.in_tool}"
    )
    if not status.workers:
        return f"{head}\nno workers connected"
    rows: list[tuple[str, ...]] = [(*COLUMNS, "LAST REPORT")]
    rows += [_row(worker, now) for worker in status.workers]
    return f"{head}\n{_table(rows)}"


def _row(worker: WorkerStatus, now: float) -> tuple[str, ...]:
    age = (
        "-"
        if worker.last_report_at is None
        else f"{max(0.0, now - worker.last_report_at):.1f} s ago"
    )
    return (
        worker.worker_id,
        worker.engine,
        worker.model,
        str(worker.state),
        f"{worker.kv_used_blocks}/{worker.kv_total_blocks}",
        f"{100 * worker.kv_used_fraction:.1f}%",
        str(worker.running),
        str(worker.in_tool),
        age,
    )


def _table(rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )
