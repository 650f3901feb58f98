"""One live system (tool runner, scheduler on the session's Redis, two sim workers) shared by the
SDK tests of this package; tests that restart or reconfigure the scheduler start their own."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from lamps.client import AsyncClient, Client
from tests.support.redis import RedisProcess
from tests.support.system import CLIENT_TOKEN, LocalSystem, running_system


@pytest.fixture(scope="package")
def system(
    redis_process: RedisProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalSystem]:
    with running_system(tmp_path_factory.mktemp("system"), redis_process.url, workers=2) as running:
        yield running


@pytest.fixture
def client(system: LocalSystem) -> Iterator[Client]:
    with Client(system.target, token=CLIENT_TOKEN) as connected:
        yield connected


@pytest.fixture
async def async_client(system: LocalSystem) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(system.target, token=CLIENT_TOKEN) as connected:
        yield connected
