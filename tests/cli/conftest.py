"""Fixtures of the command-line tests: a live system for the client commands (`lamps generate`,
`lamps status`), started once for the tests of this package that ask for it; the tiny Llama for
`lamps up --engine vllm`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.redis import RedisProcess
from tests.support.system import CLIENT_TOKEN, LocalSystem, running_system
from tests.worker.vllm_support import tiny_llama_dir

__all__ = ["tiny_llama_dir"]


@pytest.fixture(scope="package")
def system(
    redis_process: RedisProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalSystem]:
    with running_system(tmp_path_factory.mktemp("system"), redis_process.url, workers=2) as running:
        yield running


@pytest.fixture
def connection(system: LocalSystem) -> list[str]:
    """The connection flags of a client command for the live system."""
    return ["--address", system.target, "--token", CLIENT_TOKEN]
