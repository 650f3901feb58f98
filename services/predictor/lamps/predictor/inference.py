"""A loaded predictor: backbone plus trained heads, turning prompts into bins and tool odds."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from lamps.predictor.backbone import Backbone, BackboneSpec, Device, load_backbone
from lamps.predictor.heads import within_one_bin_choice
from lamps.predictor.labels import Bins
from lamps.predictor.model_file import LoadedModel, ModelFileError, load_model

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ModelOutput:
    """What the heads say about one prompt."""

    pre_call_bin: int
    # Probability of each tool of the model's vocabulary, NO_TOOL included; sums to 1.
    tool_probabilities: dict[str, float]
    post_call_bin: int


class PredictorModel:
    """Backbone and heads together; `predict` is blocking (run it in a worker thread)."""

    def __init__(self, backbone: Backbone, loaded: LoadedModel) -> None:
        expected = loaded.info.heads.input_size
        if backbone.hidden_size != expected:
            raise ModelFileError(
                f"the model's heads read {expected}-wide features, but backbone "
                f"{backbone.name!r} gives {backbone.hidden_size}: use the backbone it was "
                f"trained on ({loaded.info.backbone!r})"
            )
        if backbone.name != loaded.info.backbone:
            log.warning(
                "backbone differs from the one the heads were trained on",
                extra={"backbone": backbone.name, "trained_on": loaded.info.backbone},
            )
        self.backbone = backbone
        self.loaded = loaded

    @property
    def version(self) -> str:
        return self.loaded.version

    @property
    def bins(self) -> Bins:
        return self.loaded.info.bins

    @property
    def tools(self) -> tuple[str, ...]:
        return self.loaded.info.heads.tools

    def predict(self, prompts: Sequence[str]) -> list[ModelOutput]:
        """One forward pass of the backbone and heads over every prompt."""
        features = self.backbone.embed(prompts)
        with torch.inference_mode():
            out = self.loaded.heads(features)
        pre = within_one_bin_choice(out.pre_call.softmax(dim=-1)).tolist()
        post = within_one_bin_choice(out.post_call.softmax(dim=-1)).tolist()
        tools = out.tool.softmax(dim=-1).tolist()
        return [
            ModelOutput(pre_bin, dict(zip(self.tools, odds, strict=True)), post_bin)
            for pre_bin, odds, post_bin in zip(pre, tools, post, strict=True)
        ]


def open_model(
    path: Path,
    backbone: str | None = None,
    device: Device = Device.AUTO,
    batch_size: int = 32,
) -> PredictorModel:
    """Load a model file and its backbone (`backbone` overrides the one the file names).

    Raises ModelFileError or BackboneError with a message naming what is missing.
    """
    loaded = load_model(path)
    spec = BackboneSpec(
        source=backbone or loaded.info.backbone,
        max_tokens=loaded.info.max_tokens,
        device=device,
        batch_size=batch_size,
    )
    return PredictorModel(load_backbone(spec), loaded)
