"""The model file: one safetensors file with JSON metadata, validated when loaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lamps.predictor.heads import Heads, HeadsShape, within_one_bin_choice
from lamps.predictor.labels import Bins
from lamps.predictor.model_file import (
    METADATA_KEY,
    ModelFileError,
    ModelInfo,
    load_model,
    save_model,
)

SHAPE = HeadsShape(input_size=8, length_bins=50, tools=("math", "none"), hidden_units=4)
INFO = ModelInfo(
    backbone="tiny", max_tokens=16, bins=Bins(), heads=SHAPE, metrics={"tool_acc": 0.5}
)


def saved(tmp_path: Path) -> tuple[Path, Heads, str]:
    torch.manual_seed(0)
    heads = Heads(SHAPE)
    heads.set_feature_scale(torch.randn(20, 8))
    path = tmp_path / "model.safetensors"
    return path, heads, save_model(path, heads, INFO)


def test_a_saved_model_loads_with_the_same_outputs_and_metadata(tmp_path: Path) -> None:
    path, heads, version = saved(tmp_path)
    loaded = load_model(path)
    assert loaded.info == INFO
    assert loaded.version == version
    assert len(version) == 12
    features = torch.randn(3, 8)
    heads.eval()
    with torch.inference_mode():
        torch.testing.assert_close(loaded.heads(features).tool, heads(features).tool)


def test_the_version_changes_with_the_weights(tmp_path: Path) -> None:
    path, heads, version = saved(tmp_path)
    with torch.no_grad():
        heads.tool.bias.add_(1.0)
    assert save_model(path, heads, INFO) != version


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match=r"model file .*absent\.safetensors does not exist"):
        load_model(tmp_path / "absent.safetensors")


def test_a_corrupt_file_is_refused(tmp_path: Path) -> None:
    path, _, _ = saved(tmp_path)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ModelFileError, match="not a readable safetensors file"):
        load_model(path)


def test_a_safetensors_file_of_another_kind_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(ModelFileError, match="was it written by `lamps predictor train`"):
        load_model(path)


def test_metadata_of_another_format_version_is_refused(tmp_path: Path) -> None:
    path, heads, _ = saved(tmp_path)
    body = json.loads(INFO.to_json())
    body["format"] = "lamps-predictor/99"
    save_file(
        {k: v.contiguous() for k, v in heads.state_dict().items()},
        str(path),
        metadata={METADATA_KEY: json.dumps(body)},
    )
    with pytest.raises(ModelFileError, match="this server reads 'lamps-predictor/1'"):
        load_model(path)


def test_tensors_that_do_not_match_the_metadata_are_refused(tmp_path: Path) -> None:
    path, heads, _ = saved(tmp_path)
    state = {k: v.contiguous() for k, v in heads.state_dict().items()}
    state["tool.bias"] = torch.zeros(5)
    save_file(state, str(path), metadata={METADATA_KEY: INFO.to_json()})
    with pytest.raises(ModelFileError, match=r"tool\.bias \(5,\) != \(2,\)"):
        load_model(path)


def test_a_head_shape_without_no_tool_is_refused() -> None:
    with pytest.raises(ValueError, match="include 'none'"):
        HeadsShape(input_size=8, length_bins=50, tools=("math",))


def test_the_within_one_choice_picks_the_middle_of_the_most_likely_neighbours() -> None:
    # Bin 0 is the likeliest single bin, but bins 2-4 together hold more.
    probabilities = torch.tensor([[0.3, 0.0, 0.25, 0.2, 0.25]])
    assert within_one_bin_choice(probabilities).tolist() == [3]


def test_a_confident_bin_is_chosen_over_its_neighbours() -> None:
    probabilities = torch.zeros(1, 50)
    probabilities[0, 1] = 1.0
    assert within_one_bin_choice(probabilities).tolist() == [1]
