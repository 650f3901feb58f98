"""Services started as real processes on loopback, found by the ports they log."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

READY_TIMEOUT_S = 30.0
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class ServiceProcess:
    """A service running as a child process, with its bound ports read from its log."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    port: int = 0
    metrics_port: int = 0
    _stopped: bool = field(default=False, repr=False)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def records(self) -> list[dict[str, Any]]:
        """The JSON log records written so far (other lines, such as tracebacks, are skipped)."""
        records = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return records

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for record in self.records():
                if record.get("msg") == "serving":
                    self.port = int(record["port"])
                    self.metrics_port = int(record["metrics_port"])
                    return
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"service exited with {self.proc.returncode} before serving:\n"
                    + self.log_path.read_text(errors="replace")
                )
            time.sleep(0.05)
        raise AssertionError("service not ready in time:\n" + self.log_path.read_text())

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait for the exit and return the exit status."""
        if not self._stopped:
            self._stopped = True
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired as exc:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(
                    "service ignored SIGTERM:\n" + self.log_path.read_text()
                ) from exc
        return self.proc.returncode


def spawn_service(
    argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None
) -> ServiceProcess:
    """Start a command from the repository root, its output in `log_path`, with this process's
    environment less its `LAMPS_*` variables (a test says what each service gets) plus `env`."""
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("LAMPS_")}
    child_env.update(env or {})
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            list(argv), stdout=log_file, stderr=subprocess.STDOUT, env=child_env, cwd=REPO_ROOT
        )
    return ServiceProcess(proc=proc, log_path=log_path)


class StartService(Protocol):
    def __call__(
        self,
        argv: Sequence[str],
        env: dict[str, str] | None = None,
        wait: bool = True,
    ) -> ServiceProcess: ...


def lamps_command(*args: str) -> list[str]:
    """`lamps ...` run with this interpreter, so the tests need no PATH set up."""
    return [sys.executable, "-m", "lamps.cli.main", *args]


def loopback_serve_args(service: str) -> list[str]:
    return [
        service,
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--metrics-host",
        "127.0.0.1",
        "--metrics-port",
        "0",
    ]
