#!/usr/bin/env python
"""What the larger evaluation sets cost: time one evaluation pass of the default model over the default draw's
validation and test reviews, and compare a run's (and a sweep's) evaluation time with the earlier 200/200 split.

    python bench/eval_cost.py [--reviews 1000] [--override trainer.max_length=128 ...]

Evaluation runs as in a run (length-sorted batches, inference mode, the run's precision), on a sample of the
test set; seconds scale with the number of reviews, so the sample's reviews/s gives every figure below.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sentiment_lora.config import CONF_DIR, register_configs  # noqa: E402
from sentiment_lora.data import pipeline as data_lib  # noqa: E402
from sentiment_lora.loop import evaluate  # noqa: E402
from sentiment_lora.methods.lora_adapters import attach_lora  # noqa: E402
from sentiment_lora.model import build_classifier, load_tokenizer  # noqa: E402
from sentiment_lora.runtime import pick_device, pick_dtype, precision_name  # noqa: E402
from sentiment_lora.sources import resolve_weights  # noqa: E402

register_configs()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reviews", type=int, default=1000, help="test reviews to time (a prefix of the test set)")
    parser.add_argument("--trials", type=int, default=20, help="trials of the sweep to extrapolate to")
    parser.add_argument("--override", nargs="*", default=[], help="config overrides, e.g. trainer.max_length=128")
    args = parser.parse_args()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose(config_name="config", overrides=args.override)
    device = pick_device(cfg.trainer.device)
    dtype = pick_dtype(cfg.trainer.precision, device)
    weights = resolve_weights(cfg.model)
    tokenizer = load_tokenizer(cfg.model, weights)
    splits, encoded, _ = data_lib.prepare(cfg.data, tokenizer, cfg.trainer.max_length)
    torch.manual_seed(0)
    model = attach_lora(build_classifier(cfg.model, weights), cfg.lora, cfg.model.targets_map).to(device)
    rows = encoded["test"][: args.reviews]
    started = time.perf_counter()
    evaluate(model, rows, tokenizer, cfg.trainer.eval_batch_size, device, dtype)
    per_s = len(rows) / (time.perf_counter() - started)
    epochs, n_val, n_test = cfg.trainer.epochs, len(encoded["val"]), len(encoded["test"])
    now = (epochs * n_val + n_test) / per_s
    before = (epochs * 200 + 200) / per_s
    print(f"{cfg.model.name}, max_length {cfg.trainer.max_length}, {precision_name(dtype)}, {device}, "
          f"{torch.get_num_threads()} threads: evaluation {per_s:.1f} reviews/s ({len(rows)} timed)")  # fmt: skip
    print(f"per run ({epochs} validation passes of {n_val} + one test pass of {n_test}): {now / 60:.1f} min, "
          f"against {before / 60:.1f} min with 200/200 reviews: +{(now - before) / 60:.1f} min")  # fmt: skip
    print(f"a {args.trials}-trial sweep: +{args.trials * (now - before) / 3600:.1f} h of evaluation; "
          f"without the test pass in trials: +{args.trials * epochs * (n_val - 200) / per_s / 3600:.1f} h")  # fmt: skip


if __name__ == "__main__":
    main()
