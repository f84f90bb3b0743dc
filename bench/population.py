"""A sweep batch as one population against the same trials one after another, in one process each.

    python bench/population.py                                   # MiniLM, a slice of the study preset
    python bench/population.py --sweep "lora/targets=q,k,v,output,ffn,qv,qkv,all lora.rank=4,16" --device cuda
    python bench/population.py --preset study --sweep "" --n-train 1600 --n-val 1000 --n-test 4000 --epochs 3 \
        --device cuda                                     # the whole 108-run study, as published (a GPU)

sequential: `hydra/launcher=basic`, Hydra's own launcher: the batch's trials one after another in one process
(they share the in-process frozen-prefix memo, so only the training differs). population:
`hydra/launcher=population`, the same trials trained together over one encoder. Each is one
`python -m sentiment_lora.train -m ...` process, timed from start to exit; peak memory is that process's maximum
resident set (host memory; on a GPU, torch.cuda's peak allocation too, read from the runs). Test accuracies are
read back from each trial's metrics.json, and the largest difference between the two paths is printed (with
dropout on, a population's members draw other masks than their single runs: not zero, the size of seed noise).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sentiment_lora.rundir.record import METRICS_FILE, read_metrics


def run_sweep(launcher: str, args: list[str], out: Path) -> dict:
    command = [sys.executable, "-m", "sentiment_lora.train", "-m", f"hydra/launcher={launcher}",
               f"hydra.sweep.dir={out}", *args]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    out.mkdir(parents=True, exist_ok=True)
    log_path = out.parent / f"{launcher}.log"
    started = time.perf_counter()
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env)
        # os.wait4: this child's own peak resident memory (getrusage(RUSAGE_CHILDREN) would mix both sweeps)
        _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    output = log_path.read_text()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"error: the {launcher} sweep failed:\n{output[-3000:]}")
    peak_mb = usage.ru_maxrss / 1024  # kB on Linux
    runs = {p.parent.name: read_metrics(p.parent) for p in sorted(out.glob(f"*/{METRICS_FILE}"))}
    complete = {name: run for name, run in runs.items() if run["status"] == "complete"}
    samples = sum(entry["train_samples_per_s"] * entry["train_time_s"] for run in complete.values()
                  for entry in run["history"])  # fmt: skip
    precisions = sorted({run.get("precision", "?") for run in complete.values()})
    return {"wall_s": wall, "runs": len(runs), "complete": len(complete), "samples": samples, "peak_mb": peak_mb,
            "precision": "/".join(precisions), "test": {n: r["test"]["accuracy"] for n, r in complete.items()},
            "joined": output.count("population of")}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="minilm", help="model config (conf/model)")
    parser.add_argument("--preset", default=None, help="a sweep preset (hparams_search=...), e.g. study")
    parser.add_argument(
        "--sweep",
        default="lora/targets=qv,all,ffn,qkv trainer.seed=1",
        help="the sweep's parameters, as on the command line (a slice of the study by default)",
    )
    parser.add_argument("--data-csv", type=Path, help="a CSV (text,label) instead of the IMDB draw")
    parser.add_argument("--n-train", type=int, default=160, help="training reviews")
    parser.add_argument("--n-val", type=int, default=48, help="validation reviews")
    parser.add_argument("--n-test", type=int, default=48, help="test reviews")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--launchers", default="basic,population", help="ratios are against the first")
    parser.add_argument("--keep", type=Path, help="keep the sweep directories here instead of a temporary folder")
    parser.add_argument("--override", action="append", default=[], help="extra override for both sweeps")
    opts = parser.parse_args()
    args = [
        f"model={opts.model}",
        *([f"hparams_search={opts.preset}"] if opts.preset else []),
        *(["data=csv", f"data.path={opts.data_csv.resolve()}"] if opts.data_csv else []),
        f"data.n_train={opts.n_train}", f"data.n_val={opts.n_val}", f"data.n_test={opts.n_test}",
        f"trainer.epochs={opts.epochs}", f"trainer.device={opts.device}", "trainer.progress=false",
        *shlex.split(opts.sweep), *opts.override,
    ]  # fmt: skip
    print(f"# {' '.join(args)}", flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        root = opts.keep or Path(scratch)
        for launcher in opts.launchers.split(","):
            results[launcher] = run_sweep(launcher, args, root / launcher)
            print(f"  {launcher}: {results[launcher]['wall_s']:.1f} s", flush=True)
    base = results[next(iter(results))]
    print(
        "\n| launcher | precision | trials (complete) | wall s | samples/s | ratio | peak RSS MB | max |Δ test acc| |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for launcher, r in results.items():
        shared = set(r["test"]) & set(base["test"])
        delta = max((abs(r["test"][n] - base["test"][n]) for n in shared), default=float("nan"))
        print(f"| {launcher} | {r['precision']} | {r['runs']} ({r['complete']}) | {r['wall_s']:.1f} | "
              f"{r['samples'] / r['wall_s']:.2f} | {base['wall_s'] / r['wall_s']:.2f}x | {r['peak_mb']:.0f} | "
              f"{delta:.4f} |")  # fmt: skip


if __name__ == "__main__":
    main()
