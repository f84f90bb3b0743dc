"""Compute efficiency: one training step of the default recipe in fp32 and bf16, plain and with the step's levers
(sentiment_lora.fastpath), against the matmul peak of each precision measured in the same process.

    python bench/flops.py                      # MiniLM (pretrained), the default recipe, batch 16 x 256 tokens
    python bench/flops.py --model distilbert   # DistilBERT architecture, random init
    python bench/flops.py --sides fast --precisions bf16 --profile-rows 0
    # this CPU as an AVX2-only one (torch's kernels, oneDNN and MKL capped; bf16 products then run emulated):
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 python bench/flops.py --sides fast
    # as an AVX512-BF16 CPU without AMX:
    ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 python bench/flops.py --sides fast

Sides: `plain` is the step as a PEFT model runs it (torch's dropout, frozen fp32 weights cast by autocast in every
forward); `fast` is the step a run takes (fastpath.prepare_for_steps: cheap dropout masks, frozen Linear weights
held in the compute dtype, attention that trains in fp32 under bf16); `fast_sdpa` is `fast` with transformers' SDPA
in the compute dtype everywhere, as before that last lever. Every (precision, side) has its own model; the timed
steps go round them in turn, step by step (ABAB...), so a change of the machine's load falls on every side alike.
Median and spread (min-max) of --steps steps each.

Peak: the best of several square matmuls of size --peak-size per precision, 2*n^3 FLOPs each, measured before and
after the timed steps; the higher is used. Step FLOPs are counted, not estimated: FlopCounterMode records every
matmul of one forward + backward + optimizer step, with eager attention (it has no formula for the CPU's fused
attention kernel; the timed steps use SDPA, which does the same multiply-adds). Batches are full (every review
max_length tokens), so no FLOP is padding. The step runs the whole encoder from token ids, the frozen lower layers
in train mode (as trainer.frozen_prefix=live): the most work a step of this layout can do. Elementwise work is not
counted, as usual for model FLOP utilization. The profile rows: each side's costliest operators in one step, by
self time.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadavg import LoadWatch, median_spread  # noqa: E402

from sentiment_lora import fastpath, runtime  # noqa: E402
from sentiment_lora.config import CONF_DIR, register_configs  # noqa: E402
from sentiment_lora.methods.lora_adapters import attach_lora  # noqa: E402
from sentiment_lora.model import build_classifier  # noqa: E402
from sentiment_lora.sources import resolve_weights  # noqa: E402

register_configs()
DTYPES = {"fp32": None, "bf16": torch.bfloat16}


def matmul_peak(size: int, dtype: torch.dtype, repeats: int = 10) -> float:
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    torch.mm(a, b)  # warm up
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9


def build(overrides: list[str], attention: str, side: str = "plain", dtype=None):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    torch.manual_seed(0)
    classifier = build_classifier(cfg.model, resolve_weights(cfg.model))
    classifier.encoder.config._attn_implementation = attention
    model = attach_lora(classifier, cfg.lora, cfg.model.targets_map)
    if side in ("fast", "fast_sdpa"):
        fastpath.prepare_for_steps(model, classifier.encoder, dtype)
    if side == "fast_sdpa":  # the fast side before trained attention ran in fp32: transformers' SDPA throughout
        classifier.encoder.config._attn_implementation = attention
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    return model, torch.optim.AdamW(trainable, lr=1e-4)


def step(model, optimizer, ids, mask, labels, dtype) -> None:
    with torch.autocast("cpu", dtype=dtype) if dtype else torch.autocast("cpu", enabled=False):
        logits = model(ids, mask)
    torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), labels).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def profile_rows(run_step, rows: int) -> list[tuple[str, float, int]]:
    """(operator, self seconds, calls) of one step's costliest operators."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run_step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    return [(e.key, e.self_cpu_time_total / 1e6, e.count) for e in events[:rows]]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["minilm", "distilbert", "tiny"], default="minilm")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per (precision, side)")
    parser.add_argument("--peak-size", type=int, default=2048)
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--sides", default="plain,fast")
    parser.add_argument("--profile-rows", type=int, default=6, help="top operators per side (0: no profile)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--override", action="append", default=[], help="extra config override (repeatable)")
    return parser.parse_args()


def main() -> None:
    opts = parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(opts.threads)
    load = LoadWatch()
    model_args = {"distilbert": ["model=distilbert", "model.source=random"]}.get(opts.model, [f"model={opts.model}"])
    overrides = [*model_args, *opts.override]
    precisions, sides = opts.precisions.split(","), opts.sides.split(",")
    peaks = {name: [matmul_peak(opts.peak_size, DTYPES[name] or torch.float32)] for name in precisions}
    torch.manual_seed(0)
    ids = torch.randint(1000, 30000, (opts.batch_size, opts.max_length))
    mask = torch.ones_like(ids)
    labels = torch.randint(0, 2, (opts.batch_size,)).float()

    counted, optimizer = build(overrides, "eager")
    with FlopCounterMode(display=False) as counter:
        step(counted, optimizer, ids, mask, labels, None)
    flops = counter.get_total_flops()
    del counted, optimizer

    cases = [(name, side) for name in precisions for side in sides]
    models = {case: build(overrides, "sdpa", case[1], DTYPES[case[0]]) for case in cases}
    runs = {case: (lambda case=case: step(*models[case], ids, mask, labels, DTYPES[case[0]])) for case in cases}
    for case in cases:
        runs[case]()  # warm up
    times = {case: [] for case in cases}
    for _ in range(opts.steps):
        for case in cases:  # round-robin: each round times every side once
            started = time.perf_counter()
            runs[case]()
            times[case].append(time.perf_counter() - started)
    for name in precisions:
        peaks[name].append(matmul_peak(opts.peak_size, DTYPES[name] or torch.float32))
    profiles = {case: profile_rows(runs[case], opts.profile_rows) for case in cases} if opts.profile_rows else {}
    report(opts, flops, peaks, times, profiles, load)


# Environment variables that cap the instruction sets torch's own kernels, oneDNN and MKL use: with them one CPU
# stands in for an older kind (bench/README.md, "Precision per CPU kind").
ISA_CAP_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def cpu_line() -> str:
    """The CPU, its bf16 flags, the caps in effect and what precision=auto chooses under them."""
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                 "unknown CPU") if os.path.exists("/proc/cpuinfo") else "unknown CPU"  # fmt: skip
    flags = sorted(flag for flag in runtime.NATIVE_BF16_FLAGS if flag in (runtime.cpu_flags() or set()))
    caps = [f"{name}={os.environ[name]}" for name in ISA_CAP_VARIABLES if os.environ.get(name)]
    cpu = torch.device("cpu")
    auto = runtime.precision_name(runtime.pick_dtype("auto", cpu))
    return (f"# CPU: {model}; bf16 flags: {', '.join(flags) or 'none'}; torch kernels: "
            f"{torch.backends.cpu.get_cpu_capability()}; caps: {' '.join(caps) or 'none'}; precision=auto -> "
            f"{auto} ({runtime.precision_reason('auto', cpu)})")  # fmt: skip


def report(opts, flops: float, peaks: dict, times: dict, profiles: dict, load: LoadWatch) -> None:
    print(cpu_line())
    print(f"# {opts.model} {' '.join(opts.override) or '(defaults)'}: batch {opts.batch_size} x {opts.max_length} "
          f"tokens, {torch.get_num_threads()} threads, torch {torch.__version__}, {flops / 1e9:.1f} GFLOP per step "
          f"(counted)")  # fmt: skip
    for name, (before, after) in peaks.items():
        print(f"# matmul peak {name} ({opts.peak_size}^3): {before:.1f} before, {after:.1f} after the steps GFLOP/s")
    print("\n| precision | side | step s (median) | spread (min-max) | samples/s | GFLOP/s | share of peak |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for (name, side), measured in times.items():
        median, low, high = median_spread(measured)
        achieved = flops / median / 1e9
        print(f"| {name} | {side} | {median:.3f} | {low:.3f}-{high:.3f} | {opts.batch_size / median:.1f} | "
              f"{achieved:.1f} | {achieved / max(peaks[name]):.0%} |")  # fmt: skip
    for (name, side), rows in profiles.items():
        step_s = median_spread(times[(name, side)])[0]
        print(f"\nprofile, {name} {side} (one step; share of the median step):")
        for operator, seconds, calls in rows:
            print(f"  {operator:<40} {seconds * 1e3:9.1f} ms {seconds / step_s:6.1%}  {calls} calls")
    print(f"\n{load.report()}")


if __name__ == "__main__":
    main()
