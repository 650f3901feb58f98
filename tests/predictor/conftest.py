"""Fixtures of the predictor's tests: a tiny OPT with a tokenizer made here, a learnable synthetic
dataset, and heads trained on them (no download: every weight is made in the test session)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from lamps.predictor.backbone import Backbone, BackboneSpec, load_backbone
from lamps.predictor.datasets import Example, generic_examples
from lamps.predictor.training import TrainOptions, train
from tests.predictor.support import FILLER, INTENTS, tiny_opt

# Heads that learn the synthetic intents in a few seconds on the tiny backbone.
FAST_OPTIONS = TrainOptions(
    seed=0, hidden_units=32, dropout=0.0, epochs=60, learning_rate=1e-2, weight_decay=0.0
)


def synthetic_rows(count: int, seed: int = 0) -> list[dict[str, object]]:
    """Generic-format rows whose lengths and tools follow from the prompt's intent words."""
    rng = random.Random(seed)
    rows: list[dict[str, object]] = []
    for index in range(count):
        intent = INTENTS[index % len(INTENTS)]
        words = [*intent.words, *rng.sample(FILLER, 4)]
        rng.shuffle(words)
        rows.append(
            {
                "id": f"req-{index}",
                "prompt": " ".join(words),
                "pre_call_tokens": intent.pre_call_tokens + rng.randint(-3, 3),
                "tool": intent.tool,
                "duration_seconds": 0.5,
                "post_call_tokens": intent.post_call_tokens,
            }
        )
    return rows


@pytest.fixture(scope="session")
def tiny_backbone_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding a 2-layer OPT and its word-level tokenizer, as save_pretrained makes."""
    return tiny_opt(tmp_path_factory.mktemp("tiny-opt"))


@pytest.fixture(scope="session")
def tiny_backbone(tiny_backbone_dir: Path) -> Backbone:
    return load_backbone(BackboneSpec(str(tiny_backbone_dir), max_tokens=16, batch_size=8))


@pytest.fixture(scope="session")
def synthetic_jsonl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "synthetic.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in synthetic_rows(240)))
    return path


@pytest.fixture(scope="session")
def synthetic_examples(synthetic_jsonl: Path) -> list[Example]:
    rows = [json.loads(line) for line in synthetic_jsonl.read_text().splitlines()]
    return generic_examples(rows, str(synthetic_jsonl))


@pytest.fixture(scope="session")
def trained_model(
    tiny_backbone: Backbone, synthetic_jsonl: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A model file of heads trained on the synthetic data over the tiny OPT."""
    out = tmp_path_factory.mktemp("model") / "predictor.safetensors"
    train(str(synthetic_jsonl), tiny_backbone, FAST_OPTIONS, out)
    return out
