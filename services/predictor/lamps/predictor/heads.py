"""Small heads on the frozen backbone's features: pre-call length bins, tool, post-call length bins.

The paper tunes OPT-125M with LoRA (r=32) for its length classifier. Here the backbone stays frozen
and only these heads are trained: a prompt is embedded once, so training is a few seconds of work
on cached features instead of hours of backpropagation through the backbone on a CPU, one backbone
serves any number of head sets, and a model file is kilobytes to megabytes rather than a fork of
the backbone. The cost is some accuracy a tuned backbone would add; the training report says how
much accuracy is left.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lamps.predictor.labels import NO_TOOL


@dataclass(frozen=True)
class HeadsShape:
    """Everything that fixes the heads' tensor shapes; stored in the model file."""

    input_size: int
    length_bins: int
    tools: tuple[str, ...]
    # Width of the one hidden layer shared by the heads; 0 makes each head linear.
    hidden_units: int = 256

    def __post_init__(self) -> None:
        if self.input_size < 1 or self.length_bins < 2 or self.hidden_units < 0:
            raise ValueError(f"impossible head shape {self}")
        if NO_TOOL not in self.tools or len(set(self.tools)) != len(self.tools):
            raise ValueError(f"tools must be distinct and include {NO_TOOL!r}: {self.tools}")


@dataclass(frozen=True)
class HeadOutputs:
    """Logits of each head for a batch: [batch, classes]."""

    pre_call: torch.Tensor
    tool: torch.Tensor
    post_call: torch.Tensor


class Heads(nn.Module):
    """Standardise the features, one optional shared hidden layer, then three linear heads.

    Features are standardised with the training set's mean and deviation (buffers saved with the
    weights): hidden states of causal LMs have a few dimensions hundreds of times larger than the
    rest, which would otherwise dominate a linear head.
    """

    feature_mean: torch.Tensor
    feature_std: torch.Tensor

    def __init__(self, shape: HeadsShape, dropout: float = 0.1) -> None:
        super().__init__()
        self.shape = shape
        self.register_buffer("feature_mean", torch.zeros(shape.input_size))
        self.register_buffer("feature_std", torch.ones(shape.input_size))
        width = shape.hidden_units or shape.input_size
        layers: list[nn.Module] = [nn.Dropout(dropout)]
        if shape.hidden_units:
            layers += [nn.Linear(shape.input_size, width), nn.GELU(), nn.Dropout(dropout)]
        self.body = nn.Sequential(*layers)
        self.pre_call = nn.Linear(width, shape.length_bins)
        self.tool = nn.Linear(width, len(shape.tools))
        self.post_call = nn.Linear(width, shape.length_bins)

    def set_feature_scale(self, features: torch.Tensor) -> None:
        """Standardise with the mean and deviation of these (training) features."""
        self.feature_mean.copy_(features.mean(dim=0))
        self.feature_std.copy_(features.std(dim=0).clamp(min=1e-6))

    def forward(self, features: torch.Tensor) -> HeadOutputs:
        hidden = self.body((features - self.feature_mean) / self.feature_std)
        return HeadOutputs(self.pre_call(hidden), self.tool(hidden), self.post_call(hidden))


_TIE_BREAK = 1e-3


def within_one_bin_choice(probabilities: torch.Tensor) -> torch.Tensor:
    """For each row of bin probabilities, the bin whose neighbourhood (itself +-1) is most likely.

    This is the Bayes-optimal choice for +-1-bin accuracy, the figure the paper's ranking depends
    on: where the distribution is wide, the most probable single bin can sit at the edge of the
    mass, while the bin in the middle of the three most probable neighbours is more often close.
    """
    window = torch.ones(1, 1, 3, dtype=probabilities.dtype)
    mass = nn.functional.conv1d(probabilities.unsqueeze(1), window, padding=1).squeeze(1)
    # When one bin holds nearly all the mass, it and both neighbours tie on window mass; the small
    # share of the bin's own probability breaks the tie in its favour.
    return (mass + _TIE_BREAK * probabilities).argmax(dim=-1)
