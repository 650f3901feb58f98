"""Training the heads on frozen backbone features, and the report `lamps predictor train` prints.

Requests are split into train and test sets by request id with a seeded shuffle; every figure in the
report is measured on the test set, which no training decision sees. The baseline is the paper's
trivial predictor: always the training set's most common pre-call bin.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lamps.predictor.backbone import Backbone
from lamps.predictor.datasets import DatasetError, Example, load_examples
from lamps.predictor.heads import Heads, HeadsShape, within_one_bin_choice
from lamps.predictor.labels import NO_TOOL, Bins
from lamps.predictor.model_file import ModelInfo, save_model

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class TrainOptions:
    """How the heads are trained. The defaults were chosen on a validation split of FireAct's
    training requests (never its test split)."""

    seed: int = 0
    test_fraction: float = 0.2
    hidden_units: int = 64
    dropout: float = 0.5
    epochs: int = 15
    batch_size: int = 64
    learning_rate: float = 3e-4
    weight_decay: float = 0.1

    def __post_init__(self) -> None:
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"--test-fraction must be between 0 and 1, not {self.test_fraction}")
        if self.epochs < 1 or self.batch_size < 1 or self.hidden_units < 0:
            raise ValueError("--epochs and --batch-size must be >= 1, --hidden-units >= 0")


@dataclass(frozen=True)
class Metrics:
    """Test-split figures; `baseline_*` is always predicting the most common training bin."""

    exact_bin_acc: float
    within_one_bin_acc: float
    mae_tokens: float
    tool_acc: float
    post_call_mae_tokens: float
    baseline_exact_bin_acc: float
    baseline_within_one_bin_acc: float
    baseline_mae_tokens: float
    baseline_tool_acc: float
    train_requests: int
    test_requests: int


def split_by_request(
    examples: Sequence[Example], test_fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """(train, test): every example of a request lands on the same side."""
    ids = sorted({e.request_id for e in examples})
    random.Random(seed).shuffle(ids)
    test_ids = set(ids[: max(1, round(len(ids) * test_fraction))])
    if len(test_ids) == len(ids):
        raise ValueError(f"{len(ids)} requests are too few to split into train and test")
    train = [e for e in examples if e.request_id not in test_ids]
    return train, [e for e in examples if e.request_id in test_ids]


def embed_prompts(
    backbone: Backbone,
    prompts: Sequence[str],
    cache_dir: Path | None = None,
    progress: Progress | None = None,
) -> torch.Tensor:
    """The backbone's features of each prompt, cached on disk when `cache_dir` is given.

    The cache key covers the backbone, its token limit and every prompt, so a stale cache is
    never read.
    """
    key = hashlib.sha256(f"{backbone.name}\0{backbone.max_tokens}".encode())
    for prompt in prompts:
        key.update(prompt.encode() + b"\0")
    cached = cache_dir / f"embeddings-{key.hexdigest()[:24]}.safetensors" if cache_dir else None
    if cached is not None and cached.is_file():
        return load_file(str(cached))["features"]
    # Embedded shortest first, so that each pass pads its prompts to similar lengths.
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    features = torch.empty((len(prompts), backbone.hidden_size))
    step = 64
    for start in range(0, len(order), step):
        chosen = order[start : start + step]
        features[torch.tensor(chosen)] = backbone.embed([prompts[i] for i in chosen])
        if progress is not None:
            progress(min(start + step, len(prompts)), len(prompts))
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        save_file({"features": features.contiguous()}, str(cached))
    return features


def tool_vocabulary(examples: Sequence[Example]) -> tuple[str, ...]:
    """The tools seen in training, sorted, with NO_TOOL always present."""
    return tuple(sorted({e.tool for e in examples} | {NO_TOOL}))


def _targets(
    examples: Sequence[Example], bins: Bins, tools: Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    index = {tool: i for i, tool in enumerate(tools)}
    pre = torch.tensor([bins.of(e.pre_call_tokens) for e in examples])
    # A tool unseen in training (only possible in the test split) counts as a wrong answer.
    tool = torch.tensor([index.get(e.tool, -1) for e in examples])
    post = torch.tensor([bins.of(e.post_call_tokens) for e in examples])
    return pre, tool, post


def train_heads(
    features: torch.Tensor,
    examples: Sequence[Example],
    bins: Bins,
    tools: tuple[str, ...],
    options: TrainOptions,
) -> Heads:
    """Fit the three heads jointly (summed cross-entropies) with AdamW on mini-batches."""
    torch.manual_seed(options.seed)
    shape = HeadsShape(features.shape[1], bins.count, tools, options.hidden_units)
    heads = Heads(shape, options.dropout)
    heads.set_feature_scale(features)
    pre, tool, post = _targets(examples, bins, tools)
    optimiser = torch.optim.AdamW(
        heads.parameters(), lr=options.learning_rate, weight_decay=options.weight_decay
    )
    loss = nn.CrossEntropyLoss()
    heads.train()
    for _ in range(options.epochs):
        for batch in torch.split(torch.randperm(len(examples)), options.batch_size):
            out = heads(features[batch])
            total = (
                loss(out.pre_call, pre[batch])
                + loss(out.tool, tool[batch])
                + loss(out.post_call, post[batch])
            )
            optimiser.zero_grad()
            total.backward()
            optimiser.step()
    heads.eval()
    return heads


def evaluate(
    heads: Heads,
    features: torch.Tensor,
    test: Sequence[Example],
    train: Sequence[Example],
    bins: Bins,
) -> Metrics:
    """The report's figures on `test`, beside the most-common-bin baseline learnt from `train`."""
    pre, tool, _ = _targets(test, bins, heads.shape.tools)
    with torch.inference_mode():
        out = heads(features)
    chosen = within_one_bin_choice(out.pre_call.softmax(dim=-1))
    post_chosen = within_one_bin_choice(out.post_call.softmax(dim=-1))
    common_bin = Counter(bins.of(e.pre_call_tokens) for e in train).most_common(1)[0][0]
    common_tool = Counter(e.tool for e in train).most_common(1)[0][0]
    baseline = torch.full_like(pre, common_bin)
    return Metrics(
        exact_bin_acc=_mean(chosen == pre),
        within_one_bin_acc=_mean((chosen - pre).abs() <= 1),
        mae_tokens=_mae(chosen, test, bins, post_call=False),
        tool_acc=_mean(out.tool.argmax(dim=-1) == tool),
        post_call_mae_tokens=_mae(post_chosen, test, bins, post_call=True),
        baseline_exact_bin_acc=_mean(baseline == pre),
        baseline_within_one_bin_acc=_mean((baseline - pre).abs() <= 1),
        baseline_mae_tokens=_mae(baseline, test, bins, post_call=False),
        baseline_tool_acc=sum(e.tool == common_tool for e in test) / len(test),
        train_requests=len({e.request_id for e in train}),
        test_requests=len({e.request_id for e in test}),
    )


def _mean(hits: torch.Tensor) -> float:
    return float(hits.float().mean()) if hits.numel() else math.nan


def _mae(chosen: torch.Tensor, examples: Sequence[Example], bins: Bins, post_call: bool) -> float:
    """Mean absolute error of the chosen bins' centres against the true token counts."""
    truth = [e.post_call_tokens if post_call else e.pre_call_tokens for e in examples]
    errors = [abs(bins.centre(int(b)) - t) for b, t in zip(chosen.tolist(), truth, strict=True)]
    return sum(errors) / len(errors) if errors else math.nan


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced."""

    metrics: Metrics
    info: ModelInfo
    model_path: Path
    version: str


def train(
    source: str,
    backbone: Backbone,
    options: TrainOptions,
    out: Path,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
) -> TrainResult:
    """Load `source`, split it, embed, train and evaluate the heads, and write the model file."""
    bins = Bins()
    examples = load_examples(source, backbone.count_tokens)
    if not examples:
        raise DatasetError(f"{source!r} holds no usable requests")
    train_set, test_set = split_by_request(examples, options.test_fraction, options.seed)
    features = embed_prompts(backbone, [e.prompt for e in examples], cache_dir, progress)
    test_ids = {e.request_id for e in test_set}
    is_test = torch.tensor([e.request_id in test_ids for e in examples])
    heads = train_heads(features[~is_test], train_set, bins, tool_vocabulary(train_set), options)
    metrics = evaluate(heads, features[is_test], test_set, train_set, bins)
    info = ModelInfo(
        backbone=backbone.name,
        max_tokens=backbone.max_tokens,
        bins=bins,
        heads=heads.shape,
        metrics={k: float(v) for k, v in dataclasses.asdict(metrics).items()},
        trained_on=source,
    )
    return TrainResult(metrics, info, out, save_model(out, heads, info))
