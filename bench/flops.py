"""Compute efficiency: achieved GFLOP/s of one LoRA training step against a matmul peak measured in the same run.

    python bench/flops.py                      # MiniLM (pretrained), q+v, batch 16 x 256 tokens
    python bench/flops.py --model distilbert   # DistilBERT architecture, random init

Peak: the best of several fp32 (or --dtype bf16) square matmuls of size --peak-size, 2*n^3 FLOPs each, measured
before and after the timed steps; the higher of the two is used, since a shared machine's speed drifts.

Step FLOPs are counted, not estimated: torch.utils.flop_counter.FlopCounterMode records every matmul (mm, addmm,
bmm, baddbmm) of one forward + backward + optimizer step. The counting pass runs the model with eager attention,
because FlopCounterMode has no formula for the CPU's fused attention kernel; the timed steps use the default
(SDPA) attention, which does the same multiply-adds. Batches are full (every review >= max_length tokens), so no
FLOP is spent on padding and all counted FLOPs are useful. Elementwise work (softmax, GELU, LayerNorm, dropout) is
not counted, as is usual for model FLOP utilization.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sentiment_lora.config import CONF_DIR, register_configs  # noqa: E402
from sentiment_lora.methods.lora_adapters import attach_lora  # noqa: E402
from sentiment_lora.model import build_classifier  # noqa: E402
from sentiment_lora.sources import resolve_weights  # noqa: E402

register_configs()


def matmul_peak(size: int, dtype: torch.dtype, repeats: int = 10) -> float:
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    torch.mm(a, b)  # warm up
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9


def build(overrides: list[str], attention: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    torch.manual_seed(0)
    classifier = build_classifier(cfg.model, resolve_weights(cfg.model))
    classifier.encoder.config._attn_implementation = attention
    model = attach_lora(classifier, cfg.lora, cfg.model.targets_map)
    trainable = [p for p in model.parameters() if p.requires_grad]
    return model, torch.optim.AdamW(trainable, lr=1e-4)


def step(model, optimizer, ids, mask, labels, dtype) -> None:
    with torch.autocast("cpu", dtype=dtype) if dtype else torch.autocast("cpu", enabled=False):
        logits = model(ids, mask)
    torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), labels).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["minilm", "distilbert", "tiny"], default="minilm")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--peak-size", type=int, default=2048)
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--override", action="append", default=[], help="extra config override (repeatable)")
    opts = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(opts.threads)
    dtype = torch.bfloat16 if opts.dtype == "bf16" else None
    model_args = {"distilbert": ["model=distilbert", "model.source=random"]}.get(opts.model, [f"model={opts.model}"])
    overrides = [*model_args, *opts.override]

    peak_before = matmul_peak(opts.peak_size, dtype or torch.float32)
    torch.manual_seed(0)
    ids = torch.randint(1000, 30000, (opts.batch_size, opts.max_length))
    mask = torch.ones_like(ids)
    labels = torch.randint(0, 2, (opts.batch_size,)).float()

    counted, optimizer = build(overrides, "eager")
    counted.train()
    with FlopCounterMode(display=False) as counter:
        step(counted, optimizer, ids, mask, labels, dtype)
    flops = counter.get_total_flops()
    del counted, optimizer

    model, optimizer = build(overrides, "sdpa")
    model.train()
    step(model, optimizer, ids, mask, labels, dtype)  # warm up
    times = []
    for _ in range(opts.steps):
        started = time.perf_counter()
        step(model, optimizer, ids, mask, labels, dtype)
        times.append(time.perf_counter() - started)
    seconds = statistics.median(times)
    peak_after = matmul_peak(opts.peak_size, dtype or torch.float32)
    peak = max(peak_before, peak_after)
    achieved = flops / seconds / 1e9
    print(
        f"# {opts.model} {' '.join(opts.override) or '(defaults)'}: batch {opts.batch_size} x {opts.max_length} "
        f"tokens, {opts.dtype}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print("| measure | value |\n|---|---:|")
    peaks = f"{peak_before:.1f} / {peak_after:.1f}"
    print(f"| matmul peak ({opts.peak_size}^3, {opts.dtype}; before / after the steps) | {peaks} GFLOP/s |")
    print(f"| FLOPs per training step (counted) | {flops / 1e9:.1f} GFLOP |")
    print(f"| step time (median of {opts.steps}) | {seconds:.3f} s ({opts.batch_size / seconds:.1f} samples/s) |")
    print(f"| achieved | {achieved:.1f} GFLOP/s |")
    print(f"| achieved / peak | {achieved / peak:.0%} |")


if __name__ == "__main__":
    main()
