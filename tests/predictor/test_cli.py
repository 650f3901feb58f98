"""`lamps predictor train`: the command trains, prints the report and writes model and JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lamps.cli.main import main
from lamps.predictor.model_file import load_model

ISSUE_FIELDS = {
    "backbone",
    "exact_bin_acc",
    "within_one_bin_acc",
    "mae_tokens",
    "tool_acc",
    "baseline_within_one_bin_acc",
}


def test_train_prints_the_table_and_writes_the_model_and_json(
    tiny_backbone_dir: Path,
    synthetic_jsonl: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out, report = tmp_path / "model.safetensors", tmp_path / "report.json"
    status = main(
        [
            *("predictor", "train", "--trace", str(synthetic_jsonl)),
            *("--backbone", str(tiny_backbone_dir), "--out", str(out), "--json", str(report)),
            *("--max-tokens", "16", "--epochs", "40", "--seed", "3", "--test-fraction", "0.25"),
        ]
    )
    assert status == 0
    printed = capsys.readouterr()
    assert "pre-call bin, +-1" in printed.out
    assert "180 train / 60 test requests" in printed.out
    assert "embedding prompts: 240/240" in printed.err
    figures = json.loads(report.read_text())
    assert set(figures) >= ISSUE_FIELDS
    assert figures["backbone"] == str(tiny_backbone_dir)
    assert figures["within_one_bin_acc"] > figures["baseline_within_one_bin_acc"]
    assert figures["model_version"] == load_model(out).version


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--trace", "nothing-here"], "no dataset 'nothing-here'"),
        (["--trace", "fireact", "--backbone", "/no/such/dir"], "/no/such/dir does not exist"),
        (["--trace", "fireact", "--test-fraction", "1.5"], "--test-fraction must be between"),
    ],
)
def test_user_errors_exit_1_with_a_message(
    argv: list[str],
    message: str,
    tiny_backbone_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = ["predictor", "train", "--backbone", str(tiny_backbone_dir), *argv]
    assert main([*args, "--out", str(tmp_path / "m.safetensors")]) == 1
    assert message in capsys.readouterr().err
