"""Run directories (and optionally an Optuna study) in, one results table out: pandas rows, Pareto marks, a plot."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
from scipy.stats import binomtest

from sentiment_lora.errors import UserError
from sentiment_lora.results import METRICS_FILE, read_metrics

COLUMNS = [
    "run", "trial", "state", "model", "targets", "rank", "alpha", "trainable", "trainable_pct", "val_acc",
    "test_acc", "test_acc_ci95", "test_f1", "epochs", "time_s", "pareto",
]  # fmt: skip


def find_runs(paths: Iterable[Path]) -> tuple[list[Path], list[str]]:
    """Run directories under the given paths (a run directory holds metrics.json), and notes on skipped ones."""
    runs, notes = [], []
    for path in paths:
        path = Path(path)
        if not path.exists():
            notes.append(f"{path}: does not exist")
            continue
        if (path / METRICS_FILE).is_file():
            runs.append(path)
            continue
        found = sorted(p.parent for p in path.rglob(METRICS_FILE))
        runs.extend(found)
        for hydra_dir in sorted(path.rglob(".hydra")):
            if not (hydra_dir.parent / METRICS_FILE).exists():
                notes.append(f"{hydra_dir.parent}: no metrics.json (incomplete or still running), skipped")
        if not found:
            notes.append(f"{path}: no run directories found")
    return runs, notes


def wilson_interval(correct: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval for an accuracy of correct/n (sound for small n and accuracies near 1)."""
    interval = binomtest(correct, n).proportion_ci(confidence_level=0.95, method="wilson")
    return interval.low, interval.high


class Skipped(Exception):
    """A run directory whose metrics.json cannot give a row; the message says why, naming the file."""


def _section(metrics: dict, key: str) -> dict:
    # A section may be missing or null (a run written by an older or newer version, a hand-made file): blanks.
    value = metrics.get(key)
    return value if isinstance(value, dict) else {}


def row_of(run_dir: Path) -> dict:
    """One table row; raises Skipped when metrics.json is unreadable, not JSON, or not a run's record."""
    path = Path(run_dir) / METRICS_FILE
    try:
        metrics = read_metrics(run_dir)
    except json.JSONDecodeError:
        raise Skipped(f"metrics.json is not valid JSON: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise Skipped(f"cannot read {path}: {err}") from None
    if not isinstance(metrics, dict) or metrics.get("status") not in ("complete", "pruned", "failed", "reference"):
        raise Skipped(f"{path} is not a sentiment-lora run (or a dry run), skipped")
    lora, params, trial = _section(metrics, "lora"), _section(metrics, "params"), _section(metrics, "trial")
    val, test = _section(metrics, "val"), _section(metrics, "test")
    ci = ""
    if test.get("accuracy") is not None and test.get("n"):
        low, high = wilson_interval(round(test["accuracy"] * test["n"]), test["n"])
        ci = f"[{low:.3f}, {high:.3f}]"
    return {
        "run": str(run_dir),
        "trial": trial.get("number"),
        "state": metrics["status"],
        "model": _section(metrics, "model").get("name"),
        "targets": "+".join(lora.get("targets") or []) or None,
        "rank": lora.get("rank"),
        "alpha": lora.get("alpha"),
        "trainable": params.get("trainable"),
        "trainable_pct": params.get("trainable_pct"),
        "val_acc": val.get("accuracy"),
        "test_acc": test.get("accuracy"),
        "test_acc_ci95": ci,
        "test_f1": test.get("f1"),
        "epochs": metrics.get("epochs_run"),
        "time_s": metrics.get("time_s"),
        "error": metrics.get("error"),
    }


def mark_pareto(table: pd.DataFrame) -> pd.Series:
    """Completed runs that no other completed run beats on val accuracy without using more trainable parameters."""
    done = table[(table["state"] == "complete") & table["val_acc"].notna() & table["trainable"].notna()]
    marks = pd.Series(False, index=table.index)
    for index, row in done.iterrows():
        better = done[
            (done["val_acc"] >= row["val_acc"])
            & (done["trainable"] <= row["trainable"])
            & ((done["val_acc"] > row["val_acc"]) | (done["trainable"] < row["trainable"]))
        ]
        marks[index] = better.empty
    return marks


def build_table(paths: Iterable[Path]) -> tuple[pd.DataFrame, list[str]]:
    runs, notes = find_runs(paths)
    # A sweep directory and its study (or overlapping paths) name the same runs: one row each.
    runs = list(dict.fromkeys(run.resolve() for run in runs))
    rows = []
    for run in runs:
        try:
            rows.append(row_of(run))
        except Skipped as skipped:
            notes.append(str(skipped))
    if not rows:
        raise UserError("no runs to summarize in " + ", ".join(map(str, paths)) + (f" ({notes[0]})" if notes else ""))
    table = pd.DataFrame(rows)
    table["pareto"] = mark_pareto(table)
    order = {"reference": 0, "complete": 1, "pruned": 2, "failed": 3}
    table = table.sort_values(
        ["val_acc", "state"], ascending=[False, True], key=lambda c: c.map(order) if c.name == "state" else c
    )
    return table.reset_index(drop=True), notes


def to_markdown(table: pd.DataFrame) -> str:
    shown = table[[c for c in COLUMNS if c != "run"]].copy()
    shown["pareto"] = shown["pareto"].map({True: "★", False: ""})
    shown["trial"] = shown["trial"].map(lambda v: "" if pd.isna(v) else str(int(v)))
    for column in ("val_acc", "test_acc", "test_f1"):
        shown[column] = shown[column].map(lambda v: "" if pd.isna(v) else f"{v:.4f}")
    shown["rank"] = shown["rank"].map(lambda v: "" if pd.isna(v) else str(int(v)))
    shown["alpha"] = shown["alpha"].map(lambda v: "" if pd.isna(v) else f"{v:g}")
    shown["targets"] = shown["targets"].fillna("")
    shown["trainable"] = shown["trainable"].map(lambda v: "" if pd.isna(v) else f"{int(v):,}")
    shown["trainable_pct"] = shown["trainable_pct"].map(lambda v: "" if pd.isna(v) else f"{v:.3f}")
    shown["time_s"] = shown["time_s"].map(lambda v: "" if pd.isna(v) else f"{v:.0f}")
    shown["epochs"] = shown["epochs"].map(lambda v: "" if pd.isna(v) else str(int(v)))
    return shown.to_markdown(index=False)


def plot(table: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    runs = table[(table["state"] == "complete") & table["trainable"].notna() & table["val_acc"].notna()]
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.scatter(runs["trainable"], runs["val_acc"], label="val accuracy", color="tab:blue", zorder=3)
    if runs["test_acc"].notna().any():
        ax.scatter(runs["trainable"], runs["test_acc"], label="test accuracy", color="tab:orange", marker="x", zorder=3)
    front = runs[runs["pareto"]].sort_values("trainable")
    if not front.empty:
        ax.step(front["trainable"], front["val_acc"], where="post", color="tab:red", label="Pareto front (val)")
    for _, row in runs.iterrows():
        targets = "" if pd.isna(row["targets"]) else row["targets"]
        label = f"{targets} r{int(row['rank'])}" if pd.notna(row["rank"]) else targets
        ax.annotate(label, (row["trainable"], row["val_acc"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    for _, row in table[table["state"] == "reference"].iterrows():
        ax.axhline(row["test_acc"], color="gray", linestyle="--", label=f"{row['model']} (test)")
    if not runs.empty:
        ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel("accuracy")
    ax.set_title("Accuracy against trainable parameters")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
