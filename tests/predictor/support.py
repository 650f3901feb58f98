"""Builders for the predictor's tests: a tiny OPT of the real architecture and its tokenizer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Intent:
    """A kind of synthetic request: words that mark it and the lengths and tool they imply."""

    words: tuple[str, ...]
    tool: str
    pre_call_tokens: int
    post_call_tokens: int


INTENTS = (
    Intent(("calculate", "sum", "numbers"), "math", 15, 8),
    Intent(("search", "capital", "country"), "qa", 55, 40),
    Intent(("write", "long", "story"), "none", 305, 0),
)
FILLER = [
    "please", "quickly", "the", "of", "for", "me", "now", "kindly", "today", "again",
    "this", "that", "some", "any", "with", "about",
]  # fmt: skip
SPECIAL = ["[PAD]", "[UNK]", "</s>"]


def tiny_opt(directory: Path) -> Path:
    """Save a 2-layer, 32-wide OPT and a word-level tokenizer over the synthetic vocabulary."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import OPTConfig, OPTModel, PreTrainedTokenizerFast

    torch.manual_seed(0)

    words = sorted({w for intent in INTENTS for w in intent.words} | set(FILLER))
    vocab = {token: i for i, token in enumerate([*SPECIAL, *words])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]", eos_token="</s>"
    )
    config = OPTConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        word_embed_proj_dim=32,
        ffn_dim=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        pad_token_id=vocab["[PAD]"],
        bos_token_id=vocab["</s>"],
        eos_token_id=vocab["</s>"],
    )
    OPTModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
