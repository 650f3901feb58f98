"""Backbones: frozen language models that turn prompts into fixed-size feature vectors.

The heads (`lamps.predictor.heads`) are trained on these vectors, so a backbone is the one part that
sees raw text. Implementations are registered by name in `BACKBONES`; `load_backbone` picks one.
The default, `transformers`, loads any causal LM or encoder that `transformers` can load: a hub id
from the local hub cache (`facebook/opt-125m`), a directory of weights, or a single GGUF file.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

DEFAULT_BACKBONE = "facebook/opt-125m"
# Token ids cost nothing to cut, but tokenizing a huge prompt does: text beyond this many characters
# per kept token is dropped from the front before tokenizing. No tokenizer this project uses makes
# tokens anywhere near this long, so the kept tokens are the same as without the cut.
_CHARS_PER_TOKEN_BOUND = 32


class BackboneError(RuntimeError):
    """A backbone that cannot be loaded or run; the message names the path or id."""


class Device(enum.Enum):
    """Where the backbone runs."""

    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


@dataclass(frozen=True)
class BackboneSpec:
    """What to load: `source` is a hub id, a directory or a `.gguf` file.

    `max_tokens` bounds the prompt tokens the backbone reads: longer prompts keep their *last*
    `max_tokens` tokens. The end of a prompt is where the request says what it wants ("Convert this
    to text to speech", the question after a long context, the newest chat turn), which is what the
    output length and the tool depend on; a long preamble at the start says little about either.
    """

    source: str = DEFAULT_BACKBONE
    max_tokens: int = 512
    device: Device = Device.AUTO
    batch_size: int = 32
    # Download from the hub when the weights are not cached; off in production and tests.
    allow_download: bool = False


class Backbone(abc.ABC):
    """A frozen text encoder: texts in, one `hidden_size` vector per text out."""

    @property
    @abc.abstractmethod
    def name(self) -> str:
        """Identifies the weights (recorded in model files, checked when they are loaded)."""

    @property
    @abc.abstractmethod
    def hidden_size(self) -> int:
        """Width of the vectors `embed` returns."""

    @property
    @abc.abstractmethod
    def max_tokens(self) -> int:
        """Most prompt tokens read per text; longer texts keep their end."""

    @abc.abstractmethod
    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """A float32 CPU tensor [len(texts), hidden_size], one row per text, in order."""

    @abc.abstractmethod
    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens in each text by this backbone's tokenizer, untruncated (for training labels)."""


class TransformersBackbone(Backbone):
    """A `transformers` model: mean of the last hidden state over the prompt's real tokens.

    Mean pooling rather than the last token's state because encoders and causal LMs are then read
    the same way, and because the heads are trained on frozen features: an average over every
    token keeps more of the prompt than one position of a model never tuned to summarise there.
    """

    def __init__(self, spec: BackboneSpec) -> None:
        import torch

        self._spec = spec
        self._device = torch.device(_resolve_device(spec.device))
        self._tokenizer, self._model = _load_pretrained(spec)
        self._model.to(self._device)
        self._model.eval()
        self._hidden_size = int(self._model.config.hidden_size)

    @property
    def name(self) -> str:
        return self._spec.source

    @property
    def hidden_size(self) -> int:
        return self._hidden_size

    @property
    def max_tokens(self) -> int:
        return self._spec.max_tokens

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        import torch

        if not texts:
            return torch.empty((0, self._hidden_size))
        # Texts of similar length share a forward pass, so little of it is spent on padding.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        step = self._spec.batch_size
        parts = [
            self._embed_batch([texts[i] for i in order[start : start + step]])
            for start in range(0, len(order), step)
        ]
        pooled = torch.empty((len(texts), self._hidden_size))
        pooled[torch.tensor(order)] = torch.cat(parts)
        return pooled

    def _embed_batch(self, texts: Sequence[str]) -> torch.Tensor:
        import torch

        limit = self._spec.max_tokens * _CHARS_PER_TOKEN_BOUND
        encoded = self._tokenizer(
            [text[-limit:] for text in texts],
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=self._spec.max_tokens,
        ).to(self._device)
        with torch.inference_mode():
            hidden = self._model(
                input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]
            ).last_hidden_state
        mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled: torch.Tensor = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        return pooled.float().cpu()

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        encoded = self._tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return [len(ids) for ids in encoded]


def _resolve_device(device: Device) -> str:
    import torch

    if device is Device.CUDA and not torch.cuda.is_available():
        raise BackboneError("--device=cuda but torch sees no CUDA device")
    if device is Device.AUTO:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device.value)


def _pretrained_arguments(spec: BackboneSpec) -> tuple[str, dict[str, Any]]:
    """(what to pass to from_pretrained, keyword arguments) for a hub id, directory or GGUF file."""
    path = Path(spec.source).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise BackboneError(f"backbone GGUF file {path} does not exist")
        return str(path.parent), {"gguf_file": path.name}
    if path.is_dir():
        return str(path), {"local_files_only": True}
    if path.exists():
        raise BackboneError(
            f"backbone {path} is a file: give a directory of weights, a .gguf file or a hub id"
        )
    if spec.source.startswith((".", "/", "~")):
        raise BackboneError(f"backbone directory {path} does not exist")
    return spec.source, {"local_files_only": not spec.allow_download}


def _load_pretrained(spec: BackboneSpec) -> tuple[Any, Any]:
    """The tokenizer and the base model (no LM head) named by `spec`."""
    from transformers import AutoModel, AutoTokenizer

    source, kwargs = _pretrained_arguments(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModel.from_pretrained(source, **kwargs)
    except (OSError, ValueError, ImportError) as exc:
        hint = (
            " (not in the local hub cache: give a directory or .gguf file, or download it first)"
            if kwargs.get("local_files_only")
            else ""
        )
        raise BackboneError(f"cannot load backbone {spec.source!r}{hint}: {exc}") from exc
    if tokenizer.pad_token is None:
        # Causal LMs often have no padding token; padded positions are masked out anyway.
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    tokenizer.truncation_side = "left"
    return tokenizer, model


BACKBONES: dict[str, Callable[[BackboneSpec], Backbone]] = {
    "transformers": TransformersBackbone,
}


def load_backbone(spec: BackboneSpec, kind: str = "transformers") -> Backbone:
    """The backbone registered as `kind`, loaded from `spec`.

    Raises BackboneError when the weights are missing or unreadable, ValueError on an unknown kind.
    """
    try:
        factory = BACKBONES[kind]
    except KeyError:
        raise ValueError(
            f"unknown backbone kind {kind!r}; known: {', '.join(sorted(BACKBONES))}"
        ) from None
    return factory(spec)
