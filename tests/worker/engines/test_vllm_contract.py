"""The vllm engine holds to the shared engine contract, on the session's one real vLLM (CPU)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lamps.worker.engines.base import EngineEvent
from lamps.worker.engines.vllm import VllmEngine
from tests.worker.engines.contract import EngineContract, EngineHarness
from tests.worker.vllm_support import EventLog


class SharedEngineHarness(EngineHarness):
    """The contract's view of the session engine, whose one event reader is `EventLog`: it
    records what the log reads instead of reading the engine's events a second time."""

    def __init__(self, engine: VllmEngine, log: EventLog) -> None:
        super().__init__(engine)
        self._log = log
        log.listeners.append(self._record)

    def _record(self, event: EngineEvent) -> None:
        self.events.append(event)
        self._changed.set()

    def detach(self) -> None:
        self._log.listeners.remove(self._record)


@pytest.fixture
def engine_harness(vllm_engine: VllmEngine, vllm_events: EventLog) -> Iterator[EngineHarness]:
    harness = SharedEngineHarness(vllm_engine, vllm_events)
    yield harness
    harness.detach()


class TestVllmEngineContract(EngineContract):
    """Everything the sim engine promises, the real vLLM engine keeps."""
