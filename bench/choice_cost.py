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

from sentiment_lora.choose_model import estimate_tflops, split_lengths  # noqa: E402
from sentiment_lora.rundir.claim import RUN_CONFIG_FILE  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    opts = parser.parse_args()
    print("| run | model | train/val/test | epochs | estimate (TFLOP) | wall (s) | s/TFLOP | test acc |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for run in opts.runs:
        cfg = OmegaConf.load(run / RUN_CONFIG_FILE).config
        metrics = json.loads((run / "metrics.json").read_text())
        lengths = split_lengths(cfg)
        tflops = estimate_tflops(cfg, lengths)
        sizes = "/".join(str(len(lengths[name])) for name in ("train", "val", "test"))
        wall = metrics["time_s"]
        print(f"| {run.name} | {cfg.model.name} | {sizes} | {cfg.trainer.epochs} | {tflops:.2f} | {wall:.0f} | "
              f"{wall / tflops:.1f} | {metrics['test']['accuracy']:.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
