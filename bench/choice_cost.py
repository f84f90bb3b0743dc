"""The default model choice's estimate against measured time: for each completed run, the TFLOP that
sentiment_lora/choose_model.py estimates for its config and data, the run's wall time and test accuracy.

    python bench/choice_cost.py outputs/runs/RUN_A outputs/runs/RUN_B ...

Wall seconds per TFLOP is what turns model.budget_tflops into minutes on the machine that ran them; on a shared
machine, note the load (uptime) beside the rows: the choice itself never uses these numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sentiment_lora.choose_model import (  # noqa: E402
    encoder_shape,
    estimate_tflops,
    frozen_layers,
    layer_flops,
    split_lengths,
)
from sentiment_lora.rundir.claim import RUN_CONFIG_FILE  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    opts = parser.parse_args()
    print("| run | model | train/val/test | epochs | estimate (TFLOP), of it prefix | wall (s), of it prefix | "
          "s/TFLOP | test acc |")  # fmt: skip
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for run in opts.runs:
        cfg = OmegaConf.load(run / RUN_CONFIG_FILE).config
        metrics = json.loads((run / "metrics.json").read_text())
        lengths = split_lengths(cfg)
        tflops = estimate_tflops(cfg, lengths)
        shape = encoder_shape(cfg.model)
        prefix = frozen_layers(cfg, shape.layers) * sum(layer_flops(split, shape) for split in lengths.values()) / 1e12
        prefix = prefix if cfg.trainer.frozen_prefix == "cache" else 0.0
        sizes = "/".join(str(len(lengths[name])) for name in ("train", "val", "test"))
        wall, prefix_s = metrics["time_s"], metrics.get("prefix_cache_s") or 0.0
        print(f"| {run.name} | {cfg.model.name} | {sizes} | {cfg.trainer.epochs} | {tflops:.3g}, {prefix:.3g} | "
              f"{wall:.0f}, {prefix_s:.0f} | {wall / tflops:.1f} | {metrics['test']['accuracy']:.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
