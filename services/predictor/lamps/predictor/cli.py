"""`lamps predictor train`: trace in, model file and accuracy report out.

lamps predictor train --trace fireact --backbone ~/models/SmolLM2-135M-Instruct.Q4_1.gguf \\
    --out predictor.safetensors --json report.json

Importing this module is cheap (the `lamps` command builds every parser for `--help`); torch and
transformers load only when training runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from lamps.predictor.backbone import DEFAULT_BACKBONE, BackboneSpec, Device

if TYPE_CHECKING:
    from lamps.predictor.training import Metrics, TrainOptions, TrainResult

DESCRIPTION = (
    "Train the predictor's heads on a trace and report their accuracy on a held-out test split "
    "of its requests. TRACE is `fireact` (2,061 agent conversations shipped with lamps), "
    "`lamps_single_api` or `infercept_mixed` (the shared traces, where installed), or a file: a "
    "trace's .json, FireAct-style agent JSONL, or JSONL of {prompt, pre_call_tokens, tool, "
    "duration_seconds, post_call_tokens}."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.add_argument("--trace", required=True, help="dataset name or file (see above)")
    parser.add_argument(
        "--backbone",
        default=DEFAULT_BACKBONE,
        help="hub id in the local cache, directory of weights or .gguf file "
        f"(default: {DEFAULT_BACKBONE})",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("predictor.safetensors"),
        help="model file to write (default: predictor.safetensors)",
    )
    parser.add_argument("--json", type=Path, help="also write the test-split figures here")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and the training")
    parser.add_argument(
        "--test-fraction", type=float, default=0.2, help="share of requests held out for testing"
    )
    parser.add_argument(
        "--max-tokens", type=int, default=512, help="prompt tokens the backbone reads (the end)"
    )
    parser.add_argument("--epochs", type=int, help="training epochs of the heads")
    parser.add_argument(
        "--hidden-units", type=int, help="width of the heads' hidden layer; 0 for linear heads"
    )
    parser.add_argument("--device", choices=[d.value for d in Device], default="auto")
    parser.add_argument(
        "--cache-dir", type=Path, help="keep prompt embeddings here, to retrain without a pass"
    )
    parser.add_argument(
        "--download",
        action="store_true",
        help="let transformers download a hub backbone missing from the local cache",
    )


def run(args: argparse.Namespace) -> int:
    """Train, print the report table, write the model and the JSON; 1 on a user error."""
    from lamps.predictor.backbone import BackboneError, load_backbone
    from lamps.predictor.datasets import DatasetError
    from lamps.predictor.training import TrainOptions, train

    started = time.monotonic()
    try:
        options = _options(args, TrainOptions)
        spec = BackboneSpec(
            args.backbone, args.max_tokens, Device(args.device), allow_download=args.download
        )
        print(f"loading backbone {args.backbone}", file=sys.stderr)
        backbone = load_backbone(spec)
        result = train(args.trace, backbone, options, args.out, args.cache_dir, stderr_progress)
    except (BackboneError, DatasetError, ValueError) as exc:
        print(f"lamps predictor train: {exc}", file=sys.stderr)
        return 1
    print(report_table(result, time.monotonic() - started))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report_json(result), indent=2) + "\n")
    return 0


def _options(args: argparse.Namespace, cls: type[TrainOptions]) -> TrainOptions:
    given = {
        "seed": args.seed,
        "test_fraction": args.test_fraction,
        "epochs": args.epochs,
        "hidden_units": args.hidden_units,
    }
    return cls(**{k: v for k, v in given.items() if v is not None})


def report_json(result: TrainResult) -> dict[str, object]:
    """The figures `--json` writes: the five the issue names first, then the rest."""
    m = result.metrics
    return {
        "backbone": result.info.backbone,
        "exact_bin_acc": m.exact_bin_acc,
        "within_one_bin_acc": m.within_one_bin_acc,
        "mae_tokens": m.mae_tokens,
        "tool_acc": m.tool_acc,
        "baseline_within_one_bin_acc": m.baseline_within_one_bin_acc,
        "baseline_exact_bin_acc": m.baseline_exact_bin_acc,
        "baseline_mae_tokens": m.baseline_mae_tokens,
        "baseline_tool_acc": m.baseline_tool_acc,
        "post_call_mae_tokens": m.post_call_mae_tokens,
        "train_requests": m.train_requests,
        "test_requests": m.test_requests,
        "trace": result.info.trained_on,
        "model": str(result.model_path),
        "model_version": result.version,
    }


def report_table(result: TrainResult, seconds: float) -> str:
    m: Metrics = result.metrics
    rows = [
        ("pre-call bin, exact", _pct(m.exact_bin_acc), _pct(m.baseline_exact_bin_acc)),
        ("pre-call bin, +-1", _pct(m.within_one_bin_acc), _pct(m.baseline_within_one_bin_acc)),
        ("pre-call MAE (tokens)", f"{m.mae_tokens:.1f}", f"{m.baseline_mae_tokens:.1f}"),
        ("tool", _pct(m.tool_acc), _pct(m.baseline_tool_acc)),
        ("post-call MAE (tokens)", f"{m.post_call_mae_tokens:.1f}", "-"),
    ]
    lines = [
        f"{result.info.trained_on}: {m.train_requests} train / {m.test_requests} test requests, "
        f"backbone {result.info.backbone}",
        f"{'test split':<24}{'model':>10}{'baseline':>10}",
        *(f"{name:<24}{model:>10}{base:>10}" for name, model, base in rows),
        "baseline: always the most common training bin (and tool)",
        f"wrote {result.model_path} (version {result.version}) in {seconds:.0f} s",
    ]
    return "\n".join(lines)


def stderr_progress(done: int, total: int) -> None:
    """A one-line counter on standard error, for long embedding passes."""
    end = "\n" if done >= total else ""
    print(f"\rembedding prompts: {done}/{total}", end=end, file=sys.stderr, flush=True)


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"
