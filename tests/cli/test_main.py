"""The `lamps` command."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from lamps.cli.main import SERVICES, TOOLS, main
from tests.support.processes import lamps_command


def test_help_lists_every_service_and_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for name in [s.name for s in SERVICES] + [t.name for t in TOOLS]:
        assert f"\n    {name}" in out


@pytest.mark.parametrize("service", [s.name for s in SERVICES])
def test_each_service_has_serve_with_port_flags(
    service: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main([service, "serve", "--help"])
    out = capsys.readouterr().out
    for flag in ("--port", "--metrics-port", "--auth-tokens", "--tls-cert-file", "LAMPS_PORT"):
        assert flag in out


def test_the_installed_entry_point_runs() -> None:
    lamps = shutil.which("lamps")
    command = [lamps, "--version"] if lamps else lamps_command("--version")
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.startswith("lamps ")
