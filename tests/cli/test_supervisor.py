"""The supervisor's start: a part that crashes while starting is started again; one that refuses
its configuration is not."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from lamps.cli.probes import service_probe
from lamps.cli.supervisor import Part, PartError, Supervisor
from lamps.cli.up_parts import child_environment

# Counts its starts in a file; crashes on a signal (like an abort inside gRPC) on the first,
# or exits with status 2 every time, else becomes a real tool runner.
_SCRIPT = """
import os, signal, sys
starts = sys.argv[1]
with open(starts, "a") as f:
    f.write("start\\n")
count = len(open(starts).read().splitlines())
if sys.argv[2] == "refuse":
    sys.exit(2)
if count == 1:
    os.kill(os.getpid(), signal.SIGABRT)
os.execvp(sys.executable, [sys.executable, "-m", "lamps.cli.main", "tool-runner", "serve",
    "--host", "127.0.0.1", "--port", "0", "--metrics-host", "127.0.0.1", "--metrics-port", "0"])
"""


def _part(tmp_path: Path, mode: str) -> Part:
    argv = (sys.executable, "-c", _SCRIPT, str(tmp_path / "starts"), mode)
    return Part("tool-runner", argv, child_environment(), 0, service_probe())


def _supervisor(tmp_path: Path, said: list[str]) -> Supervisor:
    return Supervisor(tmp_path, ready_timeout=60.0, say=said.append, on_change=lambda: None)


async def test_a_part_that_crashes_while_starting_is_started_again(tmp_path: Path) -> None:
    said: list[str] = []
    supervisor = _supervisor(tmp_path, said)
    try:
        child = await supervisor.start(_part(tmp_path, "crash-once"))
        assert child.running()
        assert child.port > 0
        assert (tmp_path / "starts").read_text().splitlines() == ["start", "start"]
        assert any("starting it again" in line for line in said)
    finally:
        await supervisor.stop(grace=10.0)


async def test_a_part_that_refuses_its_configuration_is_not_started_again(
    tmp_path: Path,
) -> None:
    said: list[str] = []
    supervisor = _supervisor(tmp_path, said)
    with pytest.raises(PartError, match="exited with status 2"):
        await supervisor.start(_part(tmp_path, "refuse"))
    assert (tmp_path / "starts").read_text().splitlines() == ["start"]
