"""Training on frozen features: the split, learning a learnable label, the report's figures."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from lamps.predictor.backbone import Backbone
from lamps.predictor.datasets import Example
from lamps.predictor.labels import NO_TOOL, Bins
from lamps.predictor.model_file import load_model
from lamps.predictor.training import (
    embed_prompts,
    evaluate,
    split_by_request,
    tool_vocabulary,
    train,
    train_heads,
)
from tests.predictor.conftest import FAST_OPTIONS


def test_split_keeps_each_request_on_one_side_and_is_seeded(
    synthetic_examples: list[Example],
) -> None:
    doubled = synthetic_examples + [
        replace(e, prompt=e.prompt + " again") for e in synthetic_examples
    ]
    train_set, test_set = split_by_request(doubled, 0.25, seed=7)
    train_ids = {e.request_id for e in train_set}
    test_ids = {e.request_id for e in test_set}
    assert not train_ids & test_ids
    assert len(test_ids) == 60
    assert len(train_set) + len(test_set) == len(doubled)
    again, _ = split_by_request(doubled, 0.25, seed=7)
    other, _ = split_by_request(doubled, 0.25, seed=8)
    assert again == train_set
    assert other != train_set


def test_too_few_requests_to_split_is_an_error(synthetic_examples: list[Example]) -> None:
    with pytest.raises(ValueError, match="too few"):
        split_by_request(synthetic_examples[:1], 0.5, seed=0)


def test_the_vocabulary_always_has_no_tool(synthetic_examples: list[Example]) -> None:
    assert tool_vocabulary(synthetic_examples) == ("math", "none", "qa")
    assert tool_vocabulary(synthetic_examples[:1]) == ("math", NO_TOOL)


def test_heads_learn_a_learnable_label_and_beat_the_baseline(
    tiny_backbone: Backbone, synthetic_examples: list[Example]
) -> None:
    bins = Bins()
    train_set, test_set = split_by_request(synthetic_examples, 0.25, seed=0)
    features = embed_prompts(tiny_backbone, [e.prompt for e in train_set + test_set])
    heads = train_heads(
        features[: len(train_set)], train_set, bins, tool_vocabulary(train_set), FAST_OPTIONS
    )
    metrics = evaluate(heads, features[len(train_set) :], test_set, train_set, bins)
    assert metrics.tool_acc > 0.9
    assert metrics.within_one_bin_acc > 0.9
    assert metrics.baseline_within_one_bin_acc < 0.5  # three intents, a third each
    assert metrics.mae_tokens < metrics.baseline_mae_tokens
    assert (metrics.train_requests, metrics.test_requests) == (180, 60)


def test_embeddings_are_cached_by_backbone_and_prompts(
    tiny_backbone: Backbone, tmp_path: Path
) -> None:
    prompts = ["calculate the sum", "write long story"]
    first = embed_prompts(tiny_backbone, prompts, cache_dir=tmp_path)
    cached = list(tmp_path.iterdir())
    assert len(cached) == 1
    assert embed_prompts(tiny_backbone, prompts, cache_dir=tmp_path).equal(first)
    embed_prompts(tiny_backbone, [*prompts, "search"], cache_dir=tmp_path)
    assert len(list(tmp_path.iterdir())) == 2


def test_progress_is_reported_up_to_the_total(tiny_backbone: Backbone) -> None:
    seen: list[tuple[int, int]] = []
    embed_prompts(
        tiny_backbone, ["sum"] * 70, progress=lambda done, total: seen.append((done, total))
    )
    assert seen == [(64, 70), (70, 70)]


def test_train_writes_a_model_file_with_its_metrics(trained_model: Path) -> None:
    loaded = load_model(trained_model)
    assert loaded.info.heads.tools == ("math", "none", "qa")
    assert loaded.info.metrics["within_one_bin_acc"] > 0.9
    assert loaded.info.trained_on.endswith("synthetic.jsonl")
    assert loaded.info.max_tokens == 16


def test_train_rejects_an_empty_dataset(tiny_backbone: Backbone, tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="no usable requests"):
        train(str(empty), tiny_backbone, FAST_OPTIONS, tmp_path / "model.safetensors")
