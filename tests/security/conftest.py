"""One live system whose scheduler knows two tenants and a shared token, for the access and
isolation tests of this package (the admission tests start their own)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.redis import RedisProcess
from tests.support.system import CLIENT_TOKEN, LocalSystem, running_system

ALICE_TOKEN = "alice-secret"
BOB_TOKEN = "bob-secret"
# A plain token (the shared tenant) next to two tenants' own.
TENANT_TOKENS = f"{CLIENT_TOKEN},alice={ALICE_TOKEN},bob={BOB_TOKEN}"


@pytest.fixture(scope="package")
def system(
    redis_process: RedisProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalSystem]:
    with running_system(
        tmp_path_factory.mktemp("secured"), redis_process.url, client_tokens=TENANT_TOKENS
    ) as running:
        yield running
