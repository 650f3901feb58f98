"""The transformers backbone on a tiny OPT: pooling, truncation, batching, loading errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lamps.predictor.backbone import (
    Backbone,
    BackboneError,
    BackboneSpec,
    load_backbone,
)


def test_embeds_one_row_per_text_in_order(tiny_backbone: Backbone) -> None:
    texts = ["calculate the sum", "write long story about the country", "search"]
    features = tiny_backbone.embed(texts)
    assert features.shape == (3, tiny_backbone.hidden_size) == (3, 32)
    assert features.dtype == torch.float32
    one_by_one = torch.cat([tiny_backbone.embed([t]) for t in texts])
    torch.testing.assert_close(features, one_by_one, atol=1e-5, rtol=1e-4)


def test_padding_does_not_change_a_prompts_features(tiny_backbone: Backbone) -> None:
    short = "sum numbers"
    alone = tiny_backbone.embed([short])
    beside_a_long_one = tiny_backbone.embed([short, "please " * 12 + "write long story"])[:1]
    torch.testing.assert_close(alone, beside_a_long_one, atol=1e-5, rtol=1e-4)


def test_long_prompts_keep_their_end(tiny_backbone: Backbone) -> None:
    # max_tokens is 16: whatever precedes the last 16 tokens cannot matter.
    end = " ".join(["the"] * 14 + ["calculate", "sum"])
    a = tiny_backbone.embed(["write long story " * 5 + end])
    b = tiny_backbone.embed(["search capital country " * 5 + end])
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, tiny_backbone.embed(["write long story"]))


def test_counts_tokens_without_truncation(tiny_backbone: Backbone) -> None:
    assert tiny_backbone.count_tokens(["sum numbers", "the " * 40, ""]) == [2, 40, 0]


def test_an_empty_batch_is_an_empty_tensor(tiny_backbone: Backbone) -> None:
    assert tiny_backbone.embed([]).shape == (0, 32)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("/nowhere/opt", "backbone directory /nowhere/opt does not exist"),
        ("/nowhere/model.gguf", "backbone GGUF file /nowhere/model.gguf does not exist"),
        ("nobody/no-such-model", "not in the local hub cache"),
    ],
)
def test_a_missing_backbone_is_a_clear_error(
    source: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackboneError, match=message):
        load_backbone(BackboneSpec(source))


def test_a_file_that_is_not_weights_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(b"")
    with pytest.raises(BackboneError, match="is a file"):
        load_backbone(BackboneSpec(str(path)))


def test_unknown_kind_names_the_known_ones(tiny_backbone_dir: Path) -> None:
    with pytest.raises(ValueError, match="known: transformers"):
        load_backbone(BackboneSpec(str(tiny_backbone_dir)), kind="onnx")
