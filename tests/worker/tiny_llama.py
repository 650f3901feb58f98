"""A tiny Llama whose greedy output is scripted, with a word-level tokenizer made here.

Its attention and MLP read and write real KV caches but add nothing to the residual stream (their
output projections are zero), so the next token depends only on the current one: a bigram machine
whose table is the output head. That makes a random-weight model produce tool calls on cue:

    "go" -> <tool_call> {"name": "calc", "arguments": {}} </tool_call>
    "answer" -> done </s>
    w{i} -> w{i+1} (mod WORDS), so filler prompts generate until max_tokens

The words of the JSON are single tokens, and the tokenizer joins tokens with spaces, so the text
between the markers is valid JSON. Nothing is downloaded.
"""

from __future__ import annotations

import itertools
from pathlib import Path

WORDS = 200
EOS = "</s>"
TOOL_OPEN = "<tool_call>"
TOOL_CLOSE = "</tool_call>"
CALL = ('{"name":', '"calc",', '"arguments":', "{}}")
SPECIAL = ["<unk>", "<s>", EOS]
SCRIPT = ["go", TOOL_OPEN, *CALL, TOOL_CLOSE]


def vocabulary() -> list[str]:
    return [*SPECIAL, TOOL_OPEN, TOOL_CLOSE, *CALL, "go", "answer", "done"] + [
        f"w{i}" for i in range(WORDS)
    ]


def bigrams() -> dict[str, str]:
    """The next token after each token."""
    table = {f"w{i}": f"w{(i + 1) % WORDS}" for i in range(WORDS)}
    table.update(itertools.pairwise(SCRIPT))
    table |= {TOOL_CLOSE: "w0", "answer": "done", "done": EOS}
    table |= {EOS: "w0", "<s>": "w0", "<unk>": "w0"}
    return table


def tiny_llama(directory: Path, hidden: int = 128, layers: int = 2, seed: int = 0) -> Path:
    """Save the scripted Llama (float32, head_dim 64) and its tokenizer; return the directory."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(seed)
    vocab = {token: i for i, token in enumerate(vocabulary())}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token=EOS
    )
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 64,
        head_dim=64,
        max_position_embeddings=2048,
        bos_token_id=vocab["<s>"],
        eos_token_id=vocab[EOS],
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)  # type: ignore[no-untyped-call]
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embed = model.model.embed_tokens.weight
        unit = embed / embed.norm(dim=1, keepdim=True)
        head = torch.zeros_like(embed)
        for source, target in bigrams().items():
            head[vocab[target]] += unit[vocab[source]]
        # Final norm scales each embedding to length sqrt(hidden); a margin of ~hidden logits
        # between the scripted token and any other keeps sampling at temperature 1 on script.
        model.lm_head.weight.copy_(head * hidden**0.5)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
