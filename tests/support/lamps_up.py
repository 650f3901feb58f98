"""`lamps up` run as a real process, found through the banner it prints and its endpoints.json."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lamps.common.channel import ClientTls, open_channel
from tests.support.processes import REPO_ROOT, lamps_command

SCHEDULER_SERVICE = "lamps.v1.SchedulerService"

BANNER_END = "Ctrl-C to stop."
STOP_TIMEOUT_S = 60.0


def alive(pid: int) -> bool:
    """Whether a process runs (a zombie does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


@dataclass
class LampsUp:
    """A running `lamps up`: its process, state directory and what it printed."""

    proc: subprocess.Popen[str]
    state_dir: Path
    stderr_path: Path
    banner: list[str] = field(default_factory=list)

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_ready(self) -> None:
        """Read the banner up to its last line; fails with the progress lines if it exits."""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.banner.append(line.rstrip("\n"))
            if line.startswith(BANNER_END):
                return
        self.proc.wait()
        raise AssertionError(f"lamps up exited with {self.proc.returncode}:\n{self.stderr}")

    def endpoints(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads((self.state_dir / "endpoints.json").read_text())
        return document

    @property
    def target(self) -> str:
        return str(self.endpoints()["scheduler"])

    def pids(self) -> list[int]:
        """The parts' pids, from endpoints.json or else from the progress lines."""
        path = self.state_dir / "endpoints.json"
        if path.exists():
            return [part["pid"] for part in self.endpoints()["parts"].values()]
        return [int(pid) for pid in re.findall(r"\(pid (\d+)\)", self.stderr)]

    def part(self, name: str) -> dict[str, Any]:
        """One part as endpoints.json describes it now (address, pid, ...)."""
        described: dict[str, Any] = self.endpoints()["parts"][name]
        return described

    def schedulers(self) -> list[str]:
        """The scheduler replicas' part names, scheduler-0 first."""
        return sorted(name for name in self.endpoints()["parts"] if name.startswith("scheduler-"))

    def stop(self, signum: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        return self.proc.wait(STOP_TIMEOUT_S)


async def serves(address: str, service: str, tls: ClientTls | None = None) -> bool:
    """Whether the server at `address` says SERVING for `service` (a scheduler replica: whether
    it leads)."""
    async with open_channel(address, tls=tls) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        except grpc.RpcError:
            return False
    return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


async def leading_scheduler(system: LampsUp, tls: ClientTls | None = None) -> str:
    """The part name of the scheduler replica that leads now."""
    for name in system.schedulers():
        if await serves(system.part(name)["address"], SCHEDULER_SERVICE, tls):
            return name
    raise AssertionError("no scheduler replica leads")


@contextmanager
def lamps_up(directory: Path, *args: str, wait: bool = True) -> Iterator[LampsUp]:
    """`lamps up ARGS` with its state in `directory`; killed at the end if still running (its
    parts die with it)."""
    stderr_path = directory / "lamps-up.stderr"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMPS_")}
    with stderr_path.open("w") as stderr:
        proc = subprocess.Popen(
            lamps_command("up", "--state-dir", str(directory), *args),
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=env,
            cwd=REPO_ROOT,
        )
    system = LampsUp(proc, directory, stderr_path)
    try:
        if wait:
            system.wait_ready()
        yield system
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
