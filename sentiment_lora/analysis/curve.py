"""Learning curves: test accuracy against the training size (data.n_train) per method, and the gaps that matter.

Runs that differ in n_train but share their evaluation sets (the pool draws the test and validation reviews before
the training sample, so eval_fingerprint does not change with n_train) make a curve per series: a method with the
rest of its configuration (model, LoRA targets, rank, ...) fixed, TF-IDF (the reference rows) beside them. At each
size, each series is compared review by review with full fine-tuning and with TF-IDF at the same size, with the
tests of sentiment_lora.stats (McNemar for one seed each, paired permutation over seed-averaged reviews for
replicates; paired bootstrap intervals; Holm within each column).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from sentiment_lora import methods
from sentiment_lora.analysis.ranking import correctness, run_config
from sentiment_lora.analysis.stats import compare, holm, seed_summary
from sentiment_lora.analysis.summary import method_marker, method_order, point_label
from sentiment_lora.outputs import atomic_write
from sentiment_lora.rundir.record import PREDICTIONS_FILE, config_digest

REFERENCE = "tfidf"  # the method column of reference rows on the curve


def _method(row) -> str:
    return methods.DEFAULT if pd.isna(row.get("method")) else row["method"]


def _series_key(row) -> tuple:
    """What a curve joins over sizes: the run's config without its training size and seed (describing columns for
    a run without a config, and the model for a reference row)."""
    if row["state"] == "reference":
        return ("reference", row["model"])
    cfg = run_config(Path(row["run"]))
    if cfg is not None:
        return ("config", config_digest(cfg, ignore=("trainer.seed", "seeds", "data.n_train")))
    return ("described", *(str(row.get(key)) for key in ("model", "method", "targets", "variant", "rank", "alpha")))


def _cell(runs: pd.DataFrame) -> dict:
    first = runs.iloc[0]
    test, val = seed_summary(runs["test_acc"].tolist()), seed_summary(runs["val_acc"].dropna().tolist() or [np.nan])
    seeds = sorted({int(seed) for seed in runs["seed"].dropna()}) if "seed" in runs else []
    return {
        "method": REFERENCE if first["state"] == "reference" else _method(first),
        "n_train": int(first["n_train"]),
        "runs": test["n"],
        "seeds": ",".join(map(str, seeds)),
        "test_n": first.get("test_n"),
        "val_acc": val["mean"],
        "test_acc": test["mean"],
        # Several seeds: the t-interval of the mean over seeds; one: the Wilson interval over reviews.
        "test_low": test["low"] if test["n"] > 1 else first.get("test_low"),
        "test_high": test["high"] if test["n"] > 1 else first.get("test_high"),
        "run_dirs": list(runs["run"]),
    }


def _correct(run_dirs: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """(labels, seeds x reviews correctness) of a cell's runs, or None when one lacks predictions or they were
    tested on other labels."""
    loaded = [correctness(run) for run in run_dirs]
    if any(item is None for item in loaded) or any(not np.array_equal(item[0], loaded[0][0]) for item in loaded):
        return None
    return loaded[0][0], np.stack([item[1] for item in loaded])


def _gaps(cells: pd.DataFrame, against: str, prefix: str, notes: list[str]) -> None:
    """prefix_diff/_low/_high/_p (Holm over the column): each cell minus the `against` method's cell of the same
    size (the one best on validation if several), paired on the same reviews."""
    for column in ("diff", "low", "high", "p"):
        cells[f"{prefix}_{column}"] = np.nan
    results = {}
    for _, at_size in cells.groupby("n_train"):
        candidates = at_size[at_size["method"] == against]
        if candidates.empty:
            continue
        base_index = candidates["val_acc"].fillna(-1).idxmax()
        base = _correct(cells.loc[base_index, "run_dirs"])
        if base is None:
            notes.append(f"{against} at n_train={cells.loc[base_index, 'n_train']}: no {PREDICTIONS_FILE}; no gaps")
            continue
        for index in at_size.index:
            if index == base_index:
                continue
            found = _correct(cells.loc[index, "run_dirs"])
            if found is None or not np.array_equal(found[0], base[0]):
                notes.append(f"{cells.loc[index, 'series']} at n_train={cells.loc[index, 'n_train']}: no "
                             f"{PREDICTIONS_FILE} or other test labels than {against}'s; not compared")  # fmt: skip
                continue
            results[index] = compare(found[1], base[1])
    adjusted = holm([result.p for result in results.values()])
    for (index, result), p in zip(results.items(), adjusted, strict=True):
        cells.loc[index, [f"{prefix}_diff", f"{prefix}_low", f"{prefix}_high", f"{prefix}_p"]] = [
            result.diff, result.low, result.high, p
        ]  # fmt: skip


def learning_curve(runs: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """One row per (series, n_train) when the complete and reference runs of one evaluation set differ in n_train;
    an empty table when they do not. Columns: series, method, n_train, runs, seeds, test_n, val/test accuracy,
    the test interval, and the gaps to full fine-tuning (vs_full_*) and to TF-IDF (vs_tfidf_*)."""
    notes: list[str] = []
    usable = runs[runs["state"].isin(["complete", "reference"]) & runs["n_train"].notna() & runs["test_acc"].notna()]
    if usable.empty:
        return pd.DataFrame(), notes
    groups = usable.groupby(usable["eval_fingerprint"].fillna("?"))
    fingerprint, usable = max(groups, key=lambda item: len(item[1]))
    if len(groups) > 1:
        notes.append(f"learning curve: the {len(usable)} runs on evaluation set {fingerprint} only; the others were "
                     "tested on other reviews")  # fmt: skip
    if usable["n_train"].nunique() < 2:
        return pd.DataFrame(), notes
    usable = usable.assign(series_key=[_series_key(row) for _, row in usable.iterrows()])
    cells = []
    for key, series in usable.groupby("series_key", sort=False):
        first = series.iloc[0]
        label = REFERENCE if first["state"] == "reference" else point_label(first)
        if _method(first) == methods.DEFAULT and first["state"] != "reference":
            label = f"{methods.DEFAULT} {label}"  # on the axis plot the marker says it; here the legend must
        for _, at_size in series.groupby("n_train"):
            cells.append({"series": label, "series_key": key, **_cell(at_size)})
    cells = pd.DataFrame(cells)
    # Two series with the same label (two LoRA configurations differing in, say, lr): their config ids tell apart.
    for label, same in cells.groupby("series"):
        if same["series_key"].nunique() > 1:
            for key in same["series_key"].unique():
                cells.loc[cells["series_key"] == key, "series"] = f"{label} ({str(key[-1])[:8]})"
    for ceiling in (method.name for method in methods.all_methods() if method.is_ceiling):
        _gaps(cells, ceiling, f"vs_{ceiling}", notes)  # full fine-tuning: what every cheaper method is measured by
    _gaps(cells, REFERENCE, "vs_tfidf", notes)
    cells["eval_fingerprint"] = fingerprint
    order = cells["method"].map(lambda m: method_order(m) if m != REFERENCE else (99, ""))
    cells = cells.assign(order=order).sort_values(["order", "series", "n_train"]).drop(columns=["order", "series_key"])
    return cells.reset_index(drop=True), notes


def _gap(row, prefix: str) -> str:
    if pd.isna(row[f"{prefix}_diff"]):
        return ""
    return "{:+.1f} [{:+.1f}, {:+.1f}]".format(*(100 * row[f"{prefix}_{key}"] for key in ("diff", "low", "high")))


def curve_markdown(cells: pd.DataFrame) -> str:
    """The learning-curve table: test accuracy per (series, n_train) with runs, seeds, the interval and the gaps
    to full fine-tuning and TF-IDF in points (Holm-adjusted p)."""

    def number(value, spec: str) -> str:
        return "" if value is None or pd.isna(value) else format(value, spec)

    shown = pd.DataFrame(
        {
            "series": cells["series"],
            "method": cells["method"],
            "n_train": cells["n_train"].map(lambda v: f"{v:,}"),
            "runs": cells["runs"],
            "seeds": cells["seeds"],
            "test n": cells["test_n"].map(lambda v: number(v, ".0f")),
            "test acc": cells["test_acc"].map(lambda v: number(v, ".4f")),
            "test 95% CI": [
                f"[{number(lo, '.3f')}, {number(hi, '.3f')}]"
                for lo, hi in zip(cells["test_low"], cells["test_high"], strict=True)
            ],  # fmt: skip
            "Δ full, points [95% CI]": [_gap(row, "vs_full") for _, row in cells.iterrows()],
            "p full (Holm)": cells["vs_full_p"].map(lambda v: number(v, ".3g")),
            "Δ TF-IDF, points [95% CI]": [_gap(row, "vs_tfidf") for _, row in cells.iterrows()],
            "p TF-IDF (Holm)": cells["vs_tfidf_p"].map(lambda v: number(v, ".3g")),
        }
    )
    return shown.to_markdown(index=False)


def draw_curve(cells: pd.DataFrame):
    """Test accuracy (95% interval) against n_train (log x): one line per series, its method's marker; TF-IDF
    dashed. Returned, not saved, so a test can read what is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5), layout="constrained")
    for index, (label, series) in enumerate(cells.groupby("series", sort=False)):
        series = series.sort_values("n_train")
        method = series["method"].iloc[0]
        low = (series["test_acc"] - series["test_low"]).clip(lower=0).fillna(0)
        high = (series["test_high"] - series["test_acc"]).clip(lower=0).fillna(0)
        reference = method == REFERENCE
        marker = "x" if reference else method_marker(method)
        colour = "gray" if reference else plt.cm.tab10(index % 10)
        ax.errorbar(series["n_train"], series["test_acc"], yerr=[low, high], capsize=3, label=label, marker=marker,
                    linestyle="--" if reference else "-", color=colour)  # fmt: skip
    ax.set_xscale("log")
    sizes = sorted(cells["n_train"].unique())
    ax.set_xticks(sizes, [f"{size:,}" for size in sizes])
    ax.minorticks_off()
    ax.set_xlabel("training reviews, n_train (log scale)")
    ax.set_ylabel("test accuracy (mean over seeds, 95% CI)")
    ax.set_title("Learning curves: the same test reviews at every size")
    ax.grid(True, alpha=0.3)
    fig.legend(loc="outside right upper", fontsize=8)
    return fig


def plot_curve(cells: pd.DataFrame, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = draw_curve(cells)
    with atomic_write(path) as tmp:  # a full disk leaves no partial image
        fig.savefig(tmp, dpi=120, format=Path(path).suffix.lstrip(".").lower() or None)
    plt.close(fig)
