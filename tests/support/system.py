"""A small live system for client-side tests: tool runner, scheduler and sim workers, each a real
process on loopback, started once for a whole module (or package) of tests.

The scheduler keeps its state in the session's Redis under a prefix of its own, so it can be
killed and started again on the same port with nothing lost (`restart_scheduler`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from lamps.client import TLS, Client
from lamps.scheduler.embedded import free_port
from tests.support.certs import CertPair
from tests.support.processes import (
    ServiceProcess,
    lamps_command,
    loopback_serve_args,
    spawn_service,
)

CLIENT_TOKEN = "client-secret"
CLUSTER_TOKEN = "cluster-secret"


@dataclass
class LocalSystem:
    """The running processes, and what is needed to start the scheduler again."""

    directory: Path
    redis_url: str
    tls: CertPair | None = None  # the scheduler's pair, signed by `ca_file`
    ca_file: Path | None = None
    prefix: str = field(default_factory=lambda: f"client-{uuid.uuid4().hex[:8]}")
    port: int = field(default_factory=free_port)
    processes: list[ServiceProcess] = field(default_factory=list)
    tool_runner: ServiceProcess | None = None
    scheduler: ServiceProcess | None = None
    workers: list[ServiceProcess] = field(default_factory=list)
    # The scheduler's LAMPS_AUTH_TOKENS (CLIENT_TOKEN must stay among them) and extra flags.
    client_tokens: str = CLIENT_TOKEN
    scheduler_args: Sequence[str] = ()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def spawn(self, argv: Sequence[str], env: dict[str, str] | None = None) -> ServiceProcess:
        """Start a process that logs a JSON "serving" record, and wait until it serves."""
        service = spawn_service(argv, self.directory / f"process-{len(self.processes)}.log", env)
        self.processes.append(service)
        service.wait_ready()
        return service

    def start_scheduler(self) -> ServiceProcess:
        assert self.tool_runner is not None
        tls_args: list[str] = []
        if self.tls is not None:
            tls_args = ["--tls-cert-file", str(self.tls.cert), "--tls-key-file", str(self.tls.key)]
        self.scheduler = self.spawn(
            lamps_command(
                *loopback_serve_args("scheduler"),
                *("--port", str(self.port), "--redis-url", self.redis_url),
                *("--redis-prefix", self.prefix, "--worker-lease-seconds", "3"),
                *("--tool-runner-address", self.tool_runner.target, *tls_args),
                *self.scheduler_args,
            ),
            env={"LAMPS_AUTH_TOKENS": self.client_tokens, "LAMPS_CLUSTER_TOKENS": CLUSTER_TOKEN},
        )
        return self.scheduler

    def start_worker(
        self, worker_id: str, *args: str, cluster_token: str | None = CLUSTER_TOKEN
    ) -> ServiceProcess:
        """A sim worker; `cluster_token=None` starts it without one."""
        tls_args = []
        if self.ca_file is not None:
            tls_args = ["--scheduler-tls", "--scheduler-ca-file", str(self.ca_file)]
        worker = self.spawn(
            lamps_command(
                *loopback_serve_args("worker"),
                *("--scheduler-address", f"localhost:{self.port}", "--worker-id", worker_id),
                *tls_args,
                *args,
            ),
            env={"LAMPS_CLUSTER_TOKEN": cluster_token} if cluster_token is not None else {},
        )
        self.workers.append(worker)
        return worker

    def kill_scheduler(self) -> None:
        """SIGKILL the scheduler: nothing handed over, its port closed."""
        assert self.scheduler is not None
        self.scheduler.proc.kill()
        self.scheduler.proc.wait()
        self.processes.remove(self.scheduler)

    def restart_scheduler(self) -> None:
        """SIGKILL the scheduler and start it again on the same port."""
        self.kill_scheduler()
        self.start_scheduler()

    def stop(self) -> list[str]:
        """Stop workers first (as a rollout does), then the rest; what did not exit 0."""
        unclean = []
        for service in [*self.workers, *reversed(self.processes)]:
            if service.proc.poll() is None and service.terminate() != 0:
                unclean.append(f"{service.proc.args!r}: exit {service.proc.returncode}")
        return unclean


@contextmanager
def running_system(
    directory: Path,
    redis_url: str,
    *,
    workers: int = 1,
    worker_args: Sequence[str] = ("--time-scale", "20"),
    tls: CertPair | None = None,
    ca_file: Path | None = None,
    client_tokens: str = CLIENT_TOKEN,
    scheduler_args: Sequence[str] = (),
) -> Iterator[LocalSystem]:
    """Tool runner (emulated tools 20x faster), scheduler and `workers` sim workers; with `tls`
    (and the `ca_file` that signed it) the scheduler serves TLS. `client_tokens` and
    `scheduler_args` configure the scheduler (tenants, limits)."""
    system = LocalSystem(
        directory=directory,
        redis_url=redis_url,
        tls=tls,
        ca_file=ca_file,
        client_tokens=client_tokens,
        scheduler_args=scheduler_args,
    )
    try:
        system.tool_runner = system.spawn(
            lamps_command(*loopback_serve_args("tool-runner"), "--time-scale", "0.05")
        )
        system.start_scheduler()
        for index in range(workers):
            system.start_worker(f"w{index + 1}", *worker_args)
        wait_for_workers(system, workers)
        yield system
    finally:
        unclean = system.stop()
    assert not unclean, "services did not exit 0 on SIGTERM:\n" + "\n".join(unclean)


def wait_for_workers(system: LocalSystem, count: int) -> None:
    """Block until `count` workers have registered: a worker logs "serving" before its
    registration lands, and nothing announces that but the scheduler's status."""
    tls = TLS(ca_file=system.ca_file) if system.ca_file is not None else None
    target = f"localhost:{system.port}" if tls is not None else system.target
    with Client(target, token=CLIENT_TOKEN, tls=tls, timeout_s=10) as client:
        for _ in range(600):
            if len(client.cluster_status().workers) >= count:
                return
            time.sleep(0.05)
    raise AssertionError(f"{count} workers never registered with the scheduler")
