"""A sweep batch as one population against the same trials one after another, in one process each.

    python bench/population.py                                   # MiniLM, a slice of the study preset
    python bench/population.py --sweep "lora/targets=q,k,v,output,ffn,qv,qkv,all lora.rank=4,16" --device cuda
    python bench/population.py --preset study --sweep "" --n-train 1600 --n-val 1000 --n-test 4000 --epochs 3 \
        --device cuda                                     # the whole 108-run study, as published (a GPU)

Turns alternate (basic, population, population, basic by default), so a change of the machine's load falls on both
sides; each launcher's row gives the median of its turns and their spread, and the load average before and after.

sequential: `hydra/launcher=basic`, Hydra's own launcher: the batch's trials one after another in one process
(they share the in-process frozen-prefix memo, so only the training differs). population:
`hydra/launcher=population`, the same trials trained together over one encoder (stacked on a GPU; on a CPU one
after another over one shared encoder unless the side is `stacked`). Each is one
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadavg import LoadWatch, median_spread  # noqa: E402

from sentiment_lora.rundir.record import METRICS_FILE, read_metrics  # noqa: E402

# Side names beyond Hydra's launcher names: the population launcher with members stacked or not, whatever the device
SIDES = {"stacked": ["hydra/launcher=population", "hydra.launcher.stack=true"],
         "unstacked": ["hydra/launcher=population", "hydra.launcher.stack=false"]}  # fmt: skip


def run_sweep(launcher: str, args: list[str], out: Path) -> dict:
    chosen = SIDES.get(launcher, [f"hydra/launcher={launcher}"])
    command = [sys.executable, "-m", "sentiment_lora.train", "-m", *chosen, f"hydra.sweep.dir={out}", *args]
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
    parser.add_argument(
        "--launchers",
        default="basic,population,population,basic",
        help="launchers in the order they run (a name may repeat: turns alternate, ABBA by default); ratios are of "
        "median wall times, against the first name. 'population' stacks its members on a GPU only (the launcher's "
        "default); 'stacked' and 'unstacked' force hydra.launcher.stack",
    )
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
    load = LoadWatch()
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        root = opts.keep or Path(scratch)
        for turn, launcher in enumerate(opts.launchers.split(",")):
            result = run_sweep(launcher, args, root / f"{turn}-{launcher}")
            results.setdefault(launcher, []).append(result)
            print(f"  {launcher}: {result['wall_s']:.1f} s, peak RSS {result['peak_mb']:.0f} MB", flush=True)
    report(results)
    print(f"\n{load.report()}")


def report(results: dict[str, list[dict]]) -> None:
    """One row per launcher: the median wall time of its turns, their spread, the ratio of the medians."""
    base = results[next(iter(results))]
    base_wall = median_spread([r["wall_s"] for r in base])[0]
    print(
        "\n| launcher | precision | turns | trials (complete) | wall s (median) | spread | samples/s | ratio | "
        "peak RSS MB (max) | max |Δ test acc| |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for launcher, turns in results.items():
        wall, low, high = median_spread([r["wall_s"] for r in turns])
        r = turns[0]
        shared = set(r["test"]) & set(base[0]["test"])
        delta = max((abs(r["test"][n] - base[0]["test"][n]) for n in shared), default=float("nan"))
        print(f"| {launcher} | {r['precision']} | {len(turns)} | {r['runs']} ({r['complete']}) | {wall:.1f} | "
              f"{low:.1f}-{high:.1f} | {r['samples'] / wall:.2f} | {base_wall / wall:.2f}x | "
              f"{max(t['peak_mb'] for t in turns):.0f} | {delta:.4f} |")  # fmt: skip


if __name__ == "__main__":
    main()
