"""The vllm engine on the real SmolLM2-135M-Instruct, where a converted copy is present.

`lamps models smollm2 DIR` downloads it (network), so CI does not run this module; point
LAMPS_TEST_SMOLLM2 at the folder to run it (it starts a second vLLM, about 30 s here).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from lamps.model.strategy import Strategy
from lamps.worker.engines.base import AdmitSpec, Completed, ReplaySegment, Sampling, ToolCalled
from lamps.worker.engines.vllm import VllmEngine, VllmOptions
from tests.worker.test_vllm_engine import tokens_of
from tests.worker.vllm_support import EventLog

MODEL = os.environ.get("LAMPS_TEST_SMOLLM2", "")

pytestmark = pytest.mark.skipif(
    not (MODEL and (Path(MODEL) / "config.json").is_file()),
    reason="set LAMPS_TEST_SMOLLM2 to a folder `lamps models smollm2` wrote (needs a download)",
)


@pytest_asyncio.fixture(scope="module")
async def smollm2() -> AsyncIterator[tuple[VllmEngine, EventLog]]:
    engine = VllmEngine(
        VllmOptions(model=MODEL, dtype="float32", max_model_len=1024, kv_cache_bytes=64 << 20)
    )
    await engine.start()
    log = EventLog(engine)
    yield engine, log
    await engine.close()
    await log.close()


GREEDY = Sampling(temperature=0.0)
CHAT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"


async def test_answers_a_question(smollm2: tuple[VllmEngine, EventLog]) -> None:
    engine, log = smollm2
    await engine.admit(AdmitSpec("paris", 30, prompt=CHAT, sampling=GREEDY))
    events, done = await log.until("paris", Completed)
    assert "Paris" in "".join(t.text for t in tokens_of(events))
    assert done.completion_tokens <= 30


async def test_preserves_its_kv_through_a_replayed_call(
    smollm2: tuple[VllmEngine, EventLog],
) -> None:
    engine, log = smollm2
    script = (ReplaySegment(12, "search", 0.5, 8), ReplaySegment(5))
    await engine.admit(
        AdmitSpec("tool", 64, prompt=CHAT, replay=script, strategy=Strategy.PRESERVE)
    )
    _, call = await log.until("tool", ToolCalled)
    assert call.name == "search"
    assert engine.kv().free_blocks < engine.kv().total_blocks
    await engine.resume("tool", append_tokens=8)
    _, done = await log.until("tool", Completed)
    assert done.completion_tokens == 17
