"""`lamps simulate` as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lamps.cli.main import main

JSON_FIELDS = {
    "policy",
    "rate",
    "requests",
    "mean_latency_s",
    "p50_latency_s",
    "p99_latency_s",
    "mean_serving_latency_s",
    "mean_ttft_s",
    "p99_ttft_s",
    "throughput_rps",
    "wall_s",
}


def test_simulate_prints_a_table_per_rate_and_writes_json_and_a_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_json, out_png = tmp_path / "out.json", tmp_path / "out.png"
    status = main(
        [
            "simulate",
            "--trace", "lamps_single_api",
            "--rates", "2,4",
            "--duration", "60",
            "--policies", "fcfs,lamps",
            "--kv-tokens", "30000",
            "--json", str(out_json),
            "--plot", str(out_png),
        ]
    )  # fmt: skip
    assert status == 0
    captured = capsys.readouterr()
    assert "rate 2 req/s" in captured.out
    assert "rate 4 req/s" in captured.out
    assert "30000 KV tokens" in captured.out
    assert "100%" in captured.err  # the progress bar
    document = json.loads(out_json.read_text())
    assert document["trace"] == "lamps_single_api"
    assert document["kv_tokens"] == 30000
    rows = document["results"]
    assert [(row["policy"], row["rate"]) for row in rows] == [
        ("fcfs", 2.0),
        ("lamps", 2.0),
        ("fcfs", 4.0),
        ("lamps", 4.0),
    ]
    for row in rows:
        assert set(row) >= JSON_FIELDS
        assert row["source"] == "simulated"
        assert row["requests"] > 0
        assert row["mean_latency_s"] >= row["mean_serving_latency_s"] > 0
    # Same seed, same arrivals: both policies saw the same requests.
    assert rows[0]["requests"] == rows[1]["requests"]
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_simulate_takes_a_trace_file_and_a_cluster(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "mine.json"
    trace.write_text(
        json.dumps(
            {
                "a": [
                    {"prompt_tokens": 100, "completion_tokens": 20, "api_time": 0.5,
                     "api_token_length": 5},
                    {"prompt_tokens": 125, "completion_tokens": 10},
                ]
            }
        )
    )  # fmt: skip
    status = main(
        ["simulate", "--trace", str(trace), "--rates", "3", "--duration", "30",
         "--policies", "lamps-plus", "--workers", "2", "--placement", "round-robin"]
    )  # fmt: skip
    assert status == 0
    assert "mine on 2 x gptj-6b-a100" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--policies", "lamps,lifo"], "unknown policies ['lifo']"),
        (["--trace", "nope"], "no trace 'nope'"),
        (["--rates", "3,x"], "--rates must be numbers"),
        (["--rates", "0"], "positive arrival rates"),
        (["--kv-tokens", "4"], "at least one block"),
        (["--workers", "0"], "--workers at least 1"),
        (["--starvation-threshold", "0"], "--starvation-threshold must be at least 1"),
        (["--prediction-error", "-5"], "--prediction-error must not be negative"),
    ],
)
def test_simulate_refuses_bad_input_with_a_clear_message(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["simulate", "--duration", "10", *flags]) == 2
    assert message in capsys.readouterr().err
