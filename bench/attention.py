"""Attention alone, forward and backward, on MiniLM's shapes: torch's SDPA (the fused flash kernel on the CPU)
against eager attention (matmul, softmax, matmul), in bf16 and fp32, the sides alternated (ABBA...).

    python bench/attention.py                       # batch 16, 12 heads, 256 tokens, head size 32
    python bench/attention.py --heads 12 --head-size 64 --tokens 512

It is why sentiment_lora.fastpath runs attention that trains in fp32 under bf16 on the CPU: there SDPA's backward
pass is slower in bf16 than in fp32 (bench/README.md, "Compute efficiency").
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadavg import LoadWatch, median_spread  # noqa: E402


def eager(query, key, value, mask):
    scores = (query @ key.transpose(-1, -2)) * query.shape[-1] ** -0.5 + mask
    return torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype) @ value


def sdpa(query, key, value, mask):
    return torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--head-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=6, help="timed calls per side (the first is dropped)")
    opts = parser.parse_args()
    load = LoadWatch()
    torch.manual_seed(0)
    shape = (opts.batch_size, opts.heads, opts.tokens, opts.head_size)
    print(f"# {shape} (batch, heads, tokens, head size), {torch.get_num_threads()} threads, torch {torch.__version__}")
    print("\n| attention | dtype | forward ms (median) | backward ms (median) |\n|---|---|---:|---:|")
    for dtype in (torch.bfloat16, torch.float32):
        query, key, value = (torch.randn(shape, dtype=dtype, requires_grad=True) for _ in range(3))
        mask = torch.zeros(opts.batch_size, 1, 1, opts.tokens, dtype=dtype)
        grad = torch.randn(shape, dtype=dtype)
        times = {"sdpa": [], "eager": []}
        for turn in range(opts.repeats):
            order = [("sdpa", sdpa), ("eager", eager)]
            for name, attention in order if turn % 2 == 0 else order[::-1]:
                started = time.perf_counter()
                output = attention(query, key, value, mask)
                forward = time.perf_counter() - started
                output.backward(grad)
                times[name].append((forward, time.perf_counter() - started - forward))
                query.grad = key.grad = value.grad = None
        for name, measured in times.items():
            forward = median_spread([f for f, _ in measured[1:]])[0]
            backward = median_spread([b for _, b in measured[1:]])[0]
            print(f"| {name} | {str(dtype).removeprefix('torch.')} | {forward * 1e3:.3g} | {backward * 1e3:.3g} |")
    print(f"\n{load.report()}")


if __name__ == "__main__":
    main()
