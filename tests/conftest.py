"""Shared fixtures: services started as real processes on loopback, and a real Redis."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.support.processes import (
    ServiceProcess,
    StartService,
    lamps_command,
    loopback_serve_args,
    spawn_service,
)
from tests.support.redis import RedisProcess, running_redis


@pytest.fixture
def start_process(tmp_path: Path) -> Iterator[StartService]:
    """Start any command that logs a JSON "serving" record; stopped with SIGTERM at teardown."""
    started: list[ServiceProcess] = []

    def start(
        argv: Sequence[str], env: dict[str, str] | None = None, wait: bool = True
    ) -> ServiceProcess:
        service = spawn_service(argv, tmp_path / f"process-{len(started)}.log", env)
        started.append(service)
        if wait:
            service.wait_ready()
        return service

    yield start
    unclean = []
    for service in started:
        if service.proc.poll() is None:
            try:  # every process is stopped, even after one that ignored SIGTERM (and was killed)
                status = service.terminate()
            except AssertionError as exc:
                unclean.append(f"{service.proc.args!r}: {exc}")
                continue
            if status != 0:
                unclean.append(
                    f"{service.proc.args!r}: exit {status}\n{service.log_path.read_text()}"
                )
    assert not unclean, "services did not exit 0 on SIGTERM:\n" + "\n".join(unclean)


@pytest.fixture
def start_service(start_process: StartService) -> StartService:
    """Start `lamps <service> serve` on loopback with free ports: `start_service(["scheduler"])`."""

    def start(
        argv: Sequence[str], env: dict[str, str] | None = None, wait: bool = True
    ) -> ServiceProcess:
        service, *extra = argv
        return start_process(lamps_command(*loopback_serve_args(service), *extra), env, wait)

    return start


@pytest.fixture(scope="session")
def redis_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    """One real redis-server for the whole session (see tests/support/redis.py)."""
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_server(redis_process: RedisProcess) -> str:
    """The URL of a real, empty Redis: the session's server, flushed before each test."""
    redis_process.flush()
    return redis_process.url
