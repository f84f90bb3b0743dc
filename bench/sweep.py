"""Sweep wall time: the same Optuna search through the plain path and through sentiment-lora's fast path.

    python bench/sweep.py                       # both, 8 trials each
    python bench/sweep.py --paths fast --trials 4

plain: the lora_optuna sweeper without pruning (`hparams_search=bench_plain hydra.sweeper.pruner=null`), speed levers
       off.
fast:  the lora_optuna sweeper with median pruning (`hparams_search=bench_fast`), length-grouped batches, attention
       dropout off, frozen-prefix caching.
Both search bench/conf/hparams_search/bench_plain.yaml's space (rank, alpha, target preset incl. head-only,
top_layers, learning rate) with Optuna's random sampler, seed 1234, on the same IMDB sample: its draws do not
depend on results, so both paths get the same parameters trial for trial (printed and checked: the ratio compares
the same work, less what the fast path prunes). Each path runs as one
`python -m sentiment_lora.train -m ...` process, timed from start to exit, so imports, data preparation and every
trial are counted. Results are read back from each trial's metrics.json.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sentiment_lora import methods
from sentiment_lora.rundir.record import METRICS_FILE, read_metrics

BENCH_CONF = Path(__file__).resolve().parent / "conf"


def run_sweep(path: str, trials: int, data: list[str], out: Path) -> dict:
    command = [
        sys.executable,
        "-m",
        "sentiment_lora.train",
        "-m",
        f"hydra.searchpath=[file://{BENCH_CONF}]",
        f"hparams_search=bench_{path}",
        f"hydra.sweeper.n_trials={trials}",
        f"hydra.sweep.dir={out}",
        *data,
    ]
    if path == "fast":
        command.append(f"hydra.sweeper.storage=sqlite:///{out}/study.db")
    else:
        command.append("hydra.sweeper.pruner=null")
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"error: the {path} sweep failed:\n{done.stderr[-3000:]}")
    found = sorted(out.glob(f"*/{METRICS_FILE}"), key=lambda p: int("".join(filter(str.isdigit, p.parent.name))))
    trials_run = [read_metrics(p.parent) for p in found]
    complete = [t for t in trials_run if t["status"] == "complete"]
    best = max(complete, key=lambda t: t["val"]["accuracy"])
    adapters = methods.get(methods.DEFAULT).record_section  # the presets sweep the default method's keys
    return {
        "wall_s": wall,
        "complete": len(complete),
        "pruned": sum(t["status"] == "pruned" for t in trials_run),
        "failed": sum(t["status"] == "failed" for t in trials_run),
        "epochs": sum(t.get("epochs_run", 0) for t in trials_run),
        "best_val": best["val"]["accuracy"],
        "best": f"r{best[adapters]['rank']} a{best[adapters]['alpha']:g} {'+'.join(best[adapters]['targets'])} "
        f"top{best[adapters]['top_layers']}",
        "params": [trial_params(t) for t in trials_run],
        "trials": [
            f"{t['status']} {'+'.join(t[adapters]['targets'])} top{t[adapters]['top_layers']} "
            f"val {((t.get('val') or {}).get('accuracy') or float('nan')):.3f} {t.get('time_s', 0):.0f}s"
            for t in trials_run
        ],
    }


def trial_params(record: dict) -> tuple:
    """What the sampler chose for a trial, from its metrics.json."""
    lora = record[methods.get(methods.DEFAULT).record_section]
    lr = round(record["optimizer"]["lr"], 9)
    return lora["rank"], lora["alpha"], "+".join(lora["targets"]), lora["top_layers"], lr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--paths", default="plain,fast", help="comma-separated: plain, fast; ratios are vs the first")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--model", default="minilm", help="model config (conf/model)")
    parser.add_argument("--data-csv", type=Path, help="a CSV (text,label) instead of the IMDB draw")
    parser.add_argument("--n-train", type=int, default=240, help="training reviews, drawn balanced")
    parser.add_argument("--n-val", type=int, default=120, help="validation reviews")
    parser.add_argument("--n-test", type=int, default=40, help="test reviews")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="keep the sweep directories here instead of a temporary folder")
    parser.add_argument("--override", action="append", default=[], help="extra override for both sweeps")
    opts = parser.parse_args()
    data = [
        f"model={opts.model}",
        *(["data=csv", f"data.path={opts.data_csv.resolve()}"] if opts.data_csv else []),
        f"data.n_train={opts.n_train}",
        f"data.n_val={opts.n_val}",
        f"data.n_test={opts.n_test}",
        f"trainer.max_length={opts.max_length}",
        f"trainer.epochs={opts.epochs}",
        *opts.override,
    ]
    print(f"# {opts.trials} trials, {' '.join(data)}", flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        root = opts.keep or Path(scratch)
        for path in opts.paths.split(","):
            results[path] = run_sweep(path, opts.trials, data, root / path)
            print(f"  {path}: {results[path]}", flush=True)
    params = [r["params"] for r in results.values()]
    same = all(p == params[0] for p in params)
    print(f"same parameters trial for trial: {'yes' if same else 'NO'} ({len(params[0])} trials)")
    if not same:
        for path, r in results.items():
            print(f"  {path}: {r['params']}")
    base = results[next(iter(results))]["wall_s"]
    print("\n| path | wall s | speed-up | complete | pruned | failed | epochs run | best val acc | best trial |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for path, r in results.items():
        print(
            f"| {path} | {r['wall_s']:.0f} | {base / r['wall_s']:.2f}x | {r['complete']} | {r['pruned']} | "
            f"{r['failed']} | {r['epochs']} | {r['best_val']:.3f} | {r['best']} |"
        )


if __name__ == "__main__":
    main()
