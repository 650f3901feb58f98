"""The model file: trained heads plus what the server needs to use them, in one safetensors file.

One file, because a model is copied between machines and mounted into pods, and a directory half
copied is a corrupt model nobody notices. safetensors, because it cannot run code when loaded
(unlike pickle) and carries a string-to-string header where the JSON metadata lives under
`lamps.predictor`: the format version, the backbone the heads were trained on and its settings, the
bins, the tool vocabulary, the training metrics. The model version reported in every
`PredictResponse` is the start of the file's SHA-256, so a changed file is a changed version.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from lamps.predictor.heads import Heads, HeadsShape
from lamps.predictor.labels import Bins

FORMAT = "lamps-predictor/1"
METADATA_KEY = "lamps.predictor"


class ModelFileError(RuntimeError):
    """A model file that is missing, unreadable, corrupt or of another format; says which."""


@dataclass(frozen=True)
class ModelInfo:
    """The metadata of a model file."""

    backbone: str
    max_tokens: int
    bins: Bins
    heads: HeadsShape
    # Test-split figures from training: exact_bin_acc, within_one_bin_acc, mae_tokens, tool_acc...
    metrics: dict[str, float] = field(default_factory=dict)
    # Where the training examples came from, for people reading the file later.
    trained_on: str = ""

    def to_json(self) -> str:
        body = dataclasses.asdict(self)
        body["format"] = FORMAT
        return json.dumps(body, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelInfo:
        """Parse and validate; raises ValueError saying what is wrong."""
        body = json.loads(text)
        if not isinstance(body, dict):
            raise ValueError("metadata is not a JSON object")
        if body.get("format") != FORMAT:
            raise ValueError(f"format is {body.get('format')!r}, this server reads {FORMAT!r}")
        try:
            heads = dict(body["heads"])
            return cls(
                backbone=str(body["backbone"]),
                max_tokens=int(body["max_tokens"]),
                bins=Bins(**body["bins"]),
                heads=HeadsShape(**{**heads, "tools": tuple(heads["tools"])}),
                metrics={str(k): float(v) for k, v in body.get("metrics", {}).items()},
                trained_on=str(body.get("trained_on", "")),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"metadata field missing or of the wrong type: {exc}") from None


@dataclass(frozen=True)
class LoadedModel:
    """Heads ready for inference, with their metadata and version."""

    heads: Heads
    info: ModelInfo
    version: str


def save_model(path: Path, heads: Heads, info: ModelInfo) -> str:
    """Write the heads and metadata to `path` (parents created); returns the model version."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().cpu().contiguous() for name, t in heads.state_dict().items()}
    save_file(tensors, str(path), metadata={METADATA_KEY: info.to_json()})
    return file_version(path)


def file_version(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def load_model(path: Path) -> LoadedModel:
    """Read a model file written by `save_model`; raises ModelFileError with the reason."""
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as exc:
        raise ModelFileError(
            f"model file {path} is not a readable safetensors file: {exc}"
        ) from exc
    if METADATA_KEY not in metadata:
        raise ModelFileError(
            f"model file {path} has no {METADATA_KEY!r} metadata: "
            "was it written by `lamps predictor train`?"
        )
    try:
        info = ModelInfo.from_json(metadata[METADATA_KEY])
    except ValueError as exc:
        raise ModelFileError(f"model file {path}: bad metadata: {exc}") from exc
    heads = Heads(info.heads)
    _load_state(heads, tensors, path)
    heads.eval()
    return LoadedModel(heads=heads, info=info, version=file_version(path))


def _load_state(heads: Heads, tensors: dict[str, torch.Tensor], path: Path) -> None:
    expected: dict[str, Any] = heads.state_dict()
    problems = sorted(set(expected) ^ set(tensors))
    problems += [
        f"{name} {tuple(tensors[name].shape)} != {tuple(expected[name].shape)}"
        for name in sorted(set(expected) & set(tensors))
        if tensors[name].shape != expected[name].shape
    ]
    if problems:
        raise ModelFileError(
            f"model file {path}: tensors do not match its metadata: {', '.join(problems)}"
        )
    heads.load_state_dict(tensors)
