"""`lamps status` against a live system, and against an address where nothing listens."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lamps.cli.main import main
from lamps.scheduler.embedded import free_port
from tests.support.system import CLIENT_TOKEN, LocalSystem


def test_status_shows_the_queue_and_a_table_of_workers(
    connection: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", *connection]) == 0
    head, header, *rows = capsys.readouterr().out.splitlines()
    assert head.startswith("policy lamps  leader ")
    for part in ("queued 0", "starved 0", "running 0", "in tool 0"):
        assert part in head
    assert header.split("  ")[0] == "WORKER"
    for column in ("ENGINE", "MODEL", "STATE", "KV USED/TOTAL", "KV %", "IN TOOL", "LAST REPORT"):
        assert column in header
    assert sorted(row.split()[0] for row in rows) == ["w1", "w2"]
    for row in rows:
        cells = row.split()
        assert cells[1:2] == ["sim"]
        assert "ready" in cells
        assert any(cell.endswith("%") for cell in cells)
        assert row.endswith("s ago")


def test_status_json_has_the_workers_kv_blocks(
    system: LocalSystem, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAMPS_ADDRESS", system.target)
    monkeypatch.setenv("LAMPS_TOKEN", CLIENT_TOKEN)
    assert main(["status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["policy"] == "lamps"
    assert sorted(w["worker_id"] for w in status["workers"]) == ["w1", "w2"]
    for worker in status["workers"]:
        assert worker["kv_total_blocks"] > 0
        assert 0 <= worker["kv_used_blocks"] <= worker["kv_total_blocks"]


def test_status_names_an_unreachable_address(capsys: pytest.CaptureFixture[str]) -> None:
    address = f"127.0.0.1:{free_port()}"
    assert main(["status", "--address", address]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"lamps status: cannot reach the scheduler at {address}: UNAVAILABLE")


def test_status_with_an_unreadable_ca_file_says_so(tmp_path: Path) -> None:
    missing = tmp_path / "missing-ca.pem"
    with pytest.raises(SystemExit) as exited:
        main(["status", "--tls-ca-file", str(missing)])
    assert str(exited.value.code).startswith("lamps: cannot read a TLS file: ")
    assert str(missing) in str(exited.value.code)
