"""Fixtures of the vllm engine's tests: the scripted tiny Llama, ONE engine for the whole session
(vLLM takes 10-30 s to start here), and a router that hands each test its requests' events.

The engine's KV cache is deliberately small: 2 MiB at 32 tokens a block is 31 usable blocks (992
tokens), so a paused request's blocks show plainly in its reports.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TypeVar

import pytest
import pytest_asyncio

from lamps.worker.engines.base import Engine, EngineEvent
from lamps.worker.engines.vllm import VllmEngine, VllmOptions
from tests.worker.tiny_llama import tiny_llama

BLOCK_SIZE = 32
KV_CACHE_BYTES = 2 << 20
MAX_RUNNING = 2
MAX_MODEL_LEN = 512
EVENT_TIMEOUT_S = 60.0

E = TypeVar("E", bound=EngineEvent)


class EventLog:
    """Reads the engine's one event stream and queues each event under its request id."""

    def __init__(self, engine: Engine) -> None:
        self._queues: defaultdict[str, asyncio.Queue[EngineEvent]] = defaultdict(asyncio.Queue)
        self._ids = itertools.count()
        self.listeners: list[Callable[[EngineEvent], None]] = []
        self._task = asyncio.create_task(self._read(engine))

    async def _read(self, engine: Engine) -> None:
        async for event in engine.events():
            self._queues[event.request_id].put_nowait(event)
            for listener in self.listeners:
                listener(event)

    def new_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids)}"

    async def next(self, request_id: str) -> EngineEvent:
        return await asyncio.wait_for(self._queues[request_id].get(), EVENT_TIMEOUT_S)

    async def until(self, request_id: str, kind: type[E]) -> tuple[list[EngineEvent], E]:
        """The request's events up to the first `kind`, and that event."""
        seen: list[EngineEvent] = []
        while True:
            event = await self.next(request_id)
            seen.append(event)
            if isinstance(event, kind):
                return seen, event

    def pending(self, request_id: str) -> list[EngineEvent]:
        """Events queued for the request and not read yet."""
        queue = self._queues[request_id]
        return [queue.get_nowait() for _ in range(queue.qsize())]

    async def close(self) -> None:
        await asyncio.wait_for(self._task, EVENT_TIMEOUT_S)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest_asyncio.fixture(scope="session")
async def vllm_engine(tiny_llama_dir: Path) -> AsyncIterator[VllmEngine]:
    """The session's one vllm engine (float32, a small KV cache, priority scheduling)."""
    engine = VllmEngine(
        VllmOptions(
            model=str(tiny_llama_dir),
            dtype="float32",
            max_model_len=MAX_MODEL_LEN,
            kv_cache_bytes=KV_CACHE_BYTES,
            block_size=BLOCK_SIZE,
            max_running=MAX_RUNNING,
        )
    )
    await engine.start()
    yield engine
    await engine.close()


@pytest_asyncio.fixture(scope="session")
async def vllm_events(vllm_engine: VllmEngine) -> AsyncIterator[EventLog]:
    log = EventLog(vllm_engine)
    yield log
    await vllm_engine.close()
    await log.close()
