#!/usr/bin/env python
"""Evaluation against training: a test pass's reviews/s beside a training epoch's samples/s, in one process.

    python bench/eval_cost.py [--rounds 2] [--override data.n_train=160 data.n_test=400 ...]

The run is set up as `python -m sentiment_lora.train` sets it up (run.set_up: the default recipe's frozen-prefix
cache, length-grouped training batches, fastpath's dropout and weights in the compute dtype), then evaluation of the
test split (length-sorted batches of trainer.eval_batch_size, inference mode, the run's precision) and one training
epoch alternate --rounds times, so a change of the machine's load falls on both. The last line scales the measured
rates to the default draw (1,600 training reviews, 4,000 test reviews): the goal is a test pass of at most a third
of an epoch. The bench also counts the FLOPs of one training batch both ways (torch's FlopCounterMode): forward only
against forward + backward. Their ratio says what the test pass would cost at training's FLOP rate, and the measured
rates say how many times training's FLOP rate evaluation runs at.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadavg import LoadWatch, median_spread  # noqa: E402

from sentiment_lora.config import CONF_DIR, register_configs  # noqa: E402
from sentiment_lora.loop import batch_logits, train_epoch  # noqa: E402
from sentiment_lora.run import set_up  # noqa: E402
from sentiment_lora.runtime import precision_name  # noqa: E402

register_configs()
DEFAULT_TRAIN, DEFAULT_TEST = 1600, 4000


def flops_per_review(run) -> tuple[float, float]:
    """FLOPs of one training batch, per review: forward + backward (training), and forward alone (evaluation)."""
    batch = next(iter(run.batches))
    run.model.train()
    with FlopCounterMode(display=False) as training:
        logits = batch_logits(run.model, batch, run.device, run.dtype).float()
        torch.nn.functional.binary_cross_entropy_with_logits(logits, batch["labels"].to(run.device)).backward()
    run.optimizer.zero_grad(set_to_none=True)
    run.model.eval()
    with torch.inference_mode(), FlopCounterMode(display=False) as evaluation:
        batch_logits(run.model, batch, run.device, run.dtype)
    reviews = len(batch["labels"])
    return training.get_total_flops() / reviews, evaluation.get_total_flops() / reviews


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="test passes and epochs, alternated")
    parser.add_argument("--override", nargs="*", default=[], help="config overrides, e.g. data.n_test=400")
    args = parser.parse_args()
    load = LoadWatch()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose(config_name="config", overrides=["trainer.progress=false", *args.override])
    with tempfile.TemporaryDirectory() as scratch:
        run = set_up(cfg, Path(scratch))
        n_train, n_test = len(run.frozen.rows["train"]), len(run.frozen.rows["test"])
        train_flops, eval_flops = flops_per_review(run)
        eval_rates, train_rates = [], []
        for round_ in range(1, args.rounds + 1):
            started = time.perf_counter()
            run.evaluate("test")
            eval_rates.append(n_test / (time.perf_counter() - started))
            run.model.train()
            for module in run.frozen.modules:
                module.eval()
            started = time.perf_counter()
            train_epoch(run.model, run.batches, run.optimizer, run.scheduler, cfg.trainer, round_, run.device,
                        run.dtype)  # fmt: skip
            train_rates.append(n_train / (time.perf_counter() - started))
    evaluation, training = statistics.median(eval_rates), statistics.median(train_rates)
    low, high = median_spread(eval_rates)[1:]
    trainer, threads = cfg.trainer, torch.get_num_threads()
    print(f"# {cfg.model.name}, max_length {trainer.max_length}, eval_batch_size {trainer.eval_batch_size}, "
          f"{precision_name(run.dtype)}, {run.device}, {threads} threads, {args.rounds} rounds")  # fmt: skip
    print(f"evaluation: {evaluation:.1f} reviews/s ({n_test} test reviews; spread {low:.1f}-{high:.1f})")
    low, high = median_spread(train_rates)[1:]
    print(f"training: {training:.1f} samples/s ({n_train} reviews an epoch; spread {low:.1f}-{high:.1f})")
    print(f"evaluation / training per review: {evaluation / training:.2f}x")
    test_s, epoch_s = DEFAULT_TEST / evaluation, DEFAULT_TRAIN / training
    print(
        f"default draw: test pass ({DEFAULT_TEST}) {test_s:.0f} s, epoch ({DEFAULT_TRAIN}) {epoch_s:.0f} s: "
        f"test pass = {test_s / epoch_s:.2f} of an epoch (goal: at most 0.33)"
    )
    at_equal_rate = DEFAULT_TEST * eval_flops / (DEFAULT_TRAIN * train_flops)
    print(
        f"FLOPs per review: training {train_flops / 1e9:.2f} G, evaluation {eval_flops / 1e9:.2f} G "
        f"({train_flops / eval_flops:.2f}x); at training's FLOP rate the test pass would be {at_equal_rate:.2f} of an "
        f"epoch; evaluation runs at {at_equal_rate / (test_s / epoch_s):.2f}x training's FLOP rate "
        f"(the goal needs {at_equal_rate / (1 / 3):.2f}x)"
    )
    print(load.report())


if __name__ == "__main__":
    main()
