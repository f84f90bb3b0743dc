#!/usr/bin/env python
"""Inference speed of an `export --format onnx` graph in onnxruntime against the same model in PyTorch, on CPU.

    python bench/onnx_speed.py [--model minilm] [--reviews 256] [--batch-sizes 1,32] [--max-length 256]

The model is the configured encoder (MiniLM's pretrained weights; the tiny test model at random) with pooling and
a head: an export's graph is the merged classifier, so its speed does not depend on what LoRA learned. The graph
is written by the export's own code (export_formats.export_onnx). Both sides score the same test reviews
(IMDB's, or --data-csv's) in the same batches, tokenized once beforehand (tokenizing is the same for both and not
timed), in fp32, with --threads threads (torch.set_num_threads; onnxruntime's intra-op threads), after one
warm-up batch. The table gives reviews/s, the ratio, and the largest probability difference between the two.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sentiment_lora.config import CONF_DIR, register_configs  # noqa: E402
from sentiment_lora.data import pipeline as data_lib  # noqa: E402
from sentiment_lora.export.formats import ONNX_FILE, ProbabilityGraph, export_onnx  # noqa: E402
from sentiment_lora.model import build_classifier, load_tokenizer  # noqa: E402
from sentiment_lora.sources import resolve_weights  # noqa: E402

register_configs()


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def timed(score, batches: list[dict]) -> tuple[float, np.ndarray]:
    """Seconds for every batch (after one warm-up batch), and the probabilities."""
    score(batches[0])
    started = time.perf_counter()
    probs = [score(batch) for batch in batches]
    return time.perf_counter() - started, np.concatenate(probs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["minilm", "tiny"], default="minilm")
    parser.add_argument("--data-csv", type=Path, help="a CSV (text,label) instead of IMDB's test reviews")
    parser.add_argument("--reviews", type=int, default=256, help="test reviews to score (a prefix of the test set)")
    parser.add_argument("--batch-sizes", default="1,32", help="comma-separated")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    opts = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(opts.threads)
    import onnxruntime

    data = ["data=csv", f"data.path={opts.data_csv.resolve()}"] if opts.data_csv else []
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"model={opts.model}", *data])
    weights = resolve_weights(cfg.model)
    tokenizer = load_tokenizer(cfg.model, weights)
    texts = list(data_lib.load_splits(cfg.data)["test"]["text"][: opts.reviews])
    torch.manual_seed(0)
    classifier = build_classifier(cfg.model, weights).eval()
    graph = ProbabilityGraph(classifier).eval()

    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / ONNX_FILE
        started = time.perf_counter()
        export_onnx(classifier, tokenizer, path)
        export_s = time.perf_counter() - started
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = opts.threads, 1
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def torch_score(batch):
        with torch.inference_mode():
            return graph(torch.from_numpy(batch["input_ids"]), torch.from_numpy(batch["attention_mask"])).numpy()

    def onnx_score(batch):
        return session.run(["probability"], batch)[0]

    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=opts.max_length)["input_ids"]]
    print(
        f"# {opts.model}, {len(texts)} reviews (mean {np.mean(lengths):.0f} tokens at max_length {opts.max_length}), "
        f"fp32, {opts.threads} thread(s), {cpu_name()}; torch {torch.__version__}, onnxruntime "
        f"{onnxruntime.__version__}; export {export_s:.1f} s",
        flush=True,
    )
    print("| batch | PyTorch reviews/s | onnxruntime reviews/s | onnxruntime / PyTorch | max abs prob diff |")
    print("|---:|---:|---:|---:|---:|", flush=True)
    for size in (int(item) for item in opts.batch_sizes.split(",")):
        batches = [
            dict(tokenizer(texts[start : start + size], padding=True, truncation=True, max_length=opts.max_length,
                           return_token_type_ids=False, return_tensors="np"))
            for start in range(0, len(texts), size)
        ]  # fmt: skip
        torch_s, torch_probs = timed(torch_score, batches)
        onnx_s, onnx_probs = timed(onnx_score, batches)
        diff = float(np.abs(torch_probs - onnx_probs).max())
        n = len(texts)
        print(f"| {size} | {n / torch_s:.1f} | {n / onnx_s:.1f} | {torch_s / onnx_s:.2f}x | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
