"""Predictions per second of an OPT-125M-shaped predictor: the model alone, then the gRPC server.

    python benchmarks/predictor_throughput.py [--tokens 64] [--seconds 5] [--json FILE]

The backbone has OPT-125M's architecture and dimensions (transformers' OPTConfig defaults) with
random weights, so nothing is downloaded; its speed is the real model's. Prompts are random words
of a word-level tokenizer, each exactly `--tokens` tokens. Measured:
- the model in this process at batch 1 and batch 32 (tokenize, forward, pool, heads);
- `lamps predictor serve` in a child process: one caller sending one prompt at a time, then 32
  concurrent callers with micro-batching off (--max-batch 1) and on (--max-batch 32).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from grpc import aio

from lamps.predictor.backbone import BackboneSpec, Device, load_backbone
from lamps.predictor.heads import Heads, HeadsShape
from lamps.predictor.inference import PredictorModel
from lamps.predictor.labels import Bins
from lamps.predictor.model_file import ModelInfo, load_model, save_model
from lamps.v1 import predictor_pb2 as pb
from lamps.v1 import predictor_pb2_grpc as pb_grpc

VOCAB = 50_000
REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Row:
    """One measurement."""

    what: str
    device: str
    batch_or_callers: int
    predictions_per_second: float
    mean_latency_ms: float


def build_model(directory: Path) -> Path:
    """Save an OPT-125M-shaped backbone, its tokenizer and random heads; return the model file."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import OPTConfig, OPTModel, PreTrainedTokenizerFast

    torch.manual_seed(0)
    vocab = {"<pad>": 0, "<unk>": 1, "</s>": 2} | {f"w{i}": i + 3 for i in range(VOCAB)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", eos_token="</s>"
    )
    backbone_dir = directory / "opt-125m-shaped"
    OPTModel(OPTConfig(vocab_size=len(vocab))).save_pretrained(backbone_dir)
    tokenizer.save_pretrained(backbone_dir)
    shape = HeadsShape(768, 50, ("math", "none", "qa"), 64)
    info = ModelInfo(backbone=str(backbone_dir), max_tokens=512, bins=Bins(), heads=shape)
    path = directory / "predictor.safetensors"
    save_model(path, Heads(shape), info)
    return path


def prompts(count: int, tokens: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(f"w{rng.randrange(VOCAB)}" for _ in range(tokens)) for _ in range(count)]


def timed(run: Callable[[], int], seconds: float) -> tuple[float, float]:
    """(items per second, mean milliseconds per run) of `run` repeated for about `seconds`."""
    run()  # warm-up
    runs, items, started = 0, 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        items += run()
        runs += 1
    elapsed = time.perf_counter() - started
    return items / elapsed, 1000 * elapsed / runs


def measure_model(model_file: Path, device: Device, tokens: int, seconds: float) -> list[Row]:
    loaded = load_model(model_file)
    spec = BackboneSpec(loaded.info.backbone, 512, device, batch_size=32)
    model = PredictorModel(load_backbone(spec), loaded)
    rows = []
    for batch in (1, 32):
        texts = prompts(batch, tokens, seed=batch)

        def run(texts: list[str] = texts) -> int:
            return len(model.predict(texts))

        rate, latency = timed(run, seconds)
        rows.append(Row("model, in process", device.value, batch, rate, latency))
    return rows


async def call_loop(target: str, texts: list[str], deadline: float) -> tuple[int, float]:
    """Predict one prompt per call until `deadline`; (calls made, seconds spent in calls)."""
    calls, spent = 0, 0.0
    async with aio.insecure_channel(target) as channel:
        stub = pb_grpc.PredictorServiceStub(channel)
        while time.perf_counter() < deadline:
            request = pb.PredictRequest(inputs=[pb.PredictionInput(prompt=texts[calls % 8])])
            started = time.perf_counter()
            await stub.Predict(request, timeout=120)
            spent += time.perf_counter() - started
            calls += 1
    return calls, spent


async def measure_callers(target: str, callers: int, tokens: int, seconds: float) -> Row:
    await call_loop(target, prompts(8, tokens), time.perf_counter() + 1)  # warm-up
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()
    results = await asyncio.gather(
        *(call_loop(target, prompts(8, tokens, seed=c), deadline) for c in range(callers))
    )
    elapsed = time.perf_counter() - started
    calls = sum(c for c, _ in results)
    latency = 1000 * sum(s for _, s in results) / max(calls, 1)
    return Row("", "", callers, calls / elapsed, latency)


def start_server(
    model_file: Path, device: Device, max_batch: int, log: Path
) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "lamps.cli.main", "predictor", "serve",
        "--host", "127.0.0.1", "--port", "0", "--metrics-host", "127.0.0.1", "--metrics-port", "0",
        "--model", str(model_file), "--device", device.value, "--max-batch", str(max_batch),
        "--batch-window-ms", "5",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAMPS_")}
    with log.open("wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)


def wait_for_port(log: Path, proc: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("{") and '"msg": "serving"' in line:
                return int(json.loads(line)["port"])
        if proc.poll() is not None:
            raise RuntimeError("the predictor exited:\n" + log.read_text())
        time.sleep(0.1)
    raise RuntimeError("the predictor did not start:\n" + log.read_text())


def measure_server(
    model_file: Path, device: Device, tokens: int, seconds: float, directory: Path
) -> list[Row]:
    rows = []
    for label, max_batch, callers in [
        ("server, one call at a time", 32, 1),
        ("server, batching off (--max-batch 1)", 1, 32),
        ("server, micro-batching (--max-batch 32)", 32, 32),
    ]:
        log = directory / f"server-{max_batch}-{callers}.log"
        proc = start_server(model_file, device, max_batch, log)
        try:
            port = wait_for_port(log, proc)
            row = asyncio.run(measure_callers(f"127.0.0.1:{port}", callers, tokens, seconds))
        finally:
            proc.terminate()
            proc.wait(60)
        rows.append(
            Row(label, device.value, callers, row.predictions_per_second, row.mean_latency_ms)
        )
    return rows


def table(rows: list[Row], tokens: int) -> str:
    lines = [
        f"OPT-125M-shaped predictor, prompts of {tokens} tokens",
        f"{'what':<42}{'device':>7}{'batch/callers':>15}{'pred/s':>10}{'ms/call':>10}",
    ]
    lines += [
        f"{r.what:<42}{r.device:>7}{r.batch_or_callers:>15}"
        f"{r.predictions_per_second:>10.1f}{r.mean_latency_ms:>10.1f}"
        for r in rows
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=64, help="tokens per prompt")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each measurement")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    devices = [Device.CPU] + ([Device.CUDA] if torch.cuda.is_available() else [])
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        model_file = build_model(Path(tmp))
        for device in devices:
            rows += measure_model(model_file, device, args.tokens, args.seconds)
            rows += measure_server(model_file, device, args.tokens, args.seconds, Path(tmp))
    print(table(rows, args.tokens))
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")


if __name__ == "__main__":
    main()
