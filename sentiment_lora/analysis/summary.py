"""Run directories (and optionally an Optuna study) in, one results table out: pandas rows, Pareto marks, a plot."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from sentiment_lora import methods
from sentiment_lora.analysis.ranking import pareto, usual_size
from sentiment_lora.analysis.stats import wilson_interval
from sentiment_lora.errors import UserError
from sentiment_lora.outputs import atomic_write
from sentiment_lora.rundir.record import METRICS_FILE, read_metrics

COLUMNS = [
    "run", "trial", "state", "model", "method", "targets", "variant", "rank", "alpha", "trainable", "trainable_pct",
    "n_train", "val_acc", "test_acc", "test_acc_ci95", "test_f1", "test_majority", "test_bal_acc", "test_f1_min",
    "epochs", "s_per_epoch", "peak_rss_mb", "time_s", "pareto",
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
            parent = hydra_dir.parent
            if not (parent / METRICS_FILE).exists() and not any(parent.glob(f"seed_*/{METRICS_FILE}")):
                notes.append(f"{parent}: no metrics.json (incomplete or still running), skipped")
        if not found:
            notes.append(f"{path}: no run directories found")
    return runs, notes


class Skipped(Exception):
    """A run directory whose metrics.json cannot give a row; the message says why, naming the file."""


def _section(metrics: dict, key: str) -> dict:
    # A section may be missing or null (a run written by an older or newer version, a hand-made file): blanks.
    value = metrics.get(key)
    return value if isinstance(value, dict) else {}


def method_columns(metrics: dict, method: str | None) -> dict:
    """variant, rank, alpha and targets of a row, from the method's section of metrics.json as the method reads it
    (methods.base.Method.table_columns); a method this install lacks gives its section's targets alone."""
    known = methods.recorded(method) if method else None
    section = _section(metrics, known.record_section if known is not None else method or "")
    if known is None:
        return {"variant": None, "rank": None, "alpha": None, "targets": section.get("targets")}
    return known.table_columns(section)


def method_of(metrics: dict, run_dir: Path) -> str | None:
    """The fine-tuning method of a run: `method` in metrics.json, else the run config's method.name, else the
    default method (runs written before the method group existed were all LoRA, head-only ones included). None for
    a reference row (TF-IDF), which is no fine-tuning of the encoder."""
    if metrics.get("status") == "reference":
        return None
    recorded = metrics.get("method")
    if isinstance(recorded, dict):  # a section rather than a name: its name
        recorded = recorded.get("name")
    if isinstance(recorded, str) and recorded:
        return recorded
    from omegaconf import OmegaConf

    from sentiment_lora.analysis.ranking import run_config

    cfg = run_config(Path(run_dir))
    configured = OmegaConf.select(cfg, "method.name", default=None) if cfg is not None else None
    return str(configured) if configured else methods.DEFAULT


# The numbers a row is built from, by section of metrics.json ("" for the top level).
NUMBERS = {
    "val": ("accuracy",),
    "test": ("accuracy", "n", "f1", "majority_accuracy", "balanced_accuracy", "f1_minority"),
    "params": ("trainable", "trainable_pct"),
    "split_sizes": ("train",),
    "peak_memory": ("rss_mb",),
    "": ("epochs_run", "time_s"),
}
RATES = ("accuracy", "f1", "majority_accuracy", "balanced_accuracy", "f1_minority")


def _check_numbers(metrics: dict, path: Path) -> None:
    """A number that is not one (a hand-edited "0.9", say) would fail deep in the arithmetic: skip the run."""
    for section, keys in NUMBERS.items():
        values = _section(metrics, section) if section else metrics
        for key in keys:
            value = values.get(key)
            name = f"{section}.{key}" if section else key
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise Skipped(f"{path}: {name} is {value!r}, not a number; skipped")
            # A rate outside [0, 1] (a hand-edited 7.5, NaN) would fail deep in the intervals' arithmetic.
            if value is not None and key in RATES and not 0 <= value <= 1:
                raise Skipped(f"{path}: {name} is {value!r}, not between 0 and 1; skipped")
            if value is not None and key == "n" and (value < 0 or not float(value).is_integer()):
                raise Skipped(f"{path}: {name} is {value!r}, not a count of reviews; skipped")


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
    _check_numbers(metrics, path)
    params, trial = _section(metrics, "params"), _section(metrics, "trial")
    val, test = _section(metrics, "val"), _section(metrics, "test")
    method = method_of(metrics, run_dir)
    columns = method_columns(metrics, method)
    ci, low, high = "", None, None
    if test.get("accuracy") is not None and test.get("n"):
        low, high = wilson_interval(round(test["accuracy"] * test["n"]), test["n"])
        ci = f"[{low:.3f}, {high:.3f}]"
    return {
        "run": str(run_dir),
        "trial": trial.get("number"),
        "state": metrics["status"],
        "model": _section(metrics, "model").get("name"),
        "method": method,
        "targets": "+".join(columns["targets"] or []) or None,
        "variant": columns["variant"],
        "rank": columns["rank"],
        "alpha": columns["alpha"],
        "trainable": params.get("trainable"),
        "trainable_pct": params.get("trainable_pct"),
        # The reviews trained on (split_sizes.train: data.n_train where it is set), the learning curve's x.
        "n_train": _section(metrics, "split_sizes").get("train"),
        "val_acc": val.get("accuracy"),
        "test_acc": test.get("accuracy"),
        "test_acc_ci95": ci,
        "test_low": low,
        "test_high": high,
        "test_n": test.get("n"),
        "test_f1": test.get("f1"),
        # What always predicting the larger class scores, and the scores that imbalance cannot inflate (runs
        # written before they were recorded leave them blank).
        "test_majority": test.get("majority_accuracy"),
        "test_bal_acc": test.get("balanced_accuracy"),
        "test_f1_min": test.get("f1_minority"),
        "seed": metrics.get("seed"),
        "truncation": _section(metrics, "data").get("truncation"),
        # Older records lack these: each such run is its own configuration, paired on its whole data.
        "config_id": metrics.get("config_id") or f"run {run_dir}",
        "eval_fingerprint": metrics.get("eval_fingerprint") or metrics.get("data_fingerprint"),
        "epochs": metrics.get("epochs_run"),
        "s_per_epoch": seconds_per_epoch(metrics),
        # The run's resident peak (metrics.json's peak_memory; runs written before it was recorded leave it blank).
        "peak_rss_mb": _section(metrics, "peak_memory").get("rss_mb"),
        "time_s": metrics.get("time_s"),
        "error": metrics.get("error"),
    }


def seconds_per_epoch(metrics: dict) -> float | None:
    """Mean training seconds of an epoch (history's train_time_s: without validation, test or the prefix cache)."""
    history = metrics.get("history") if isinstance(metrics.get("history"), list) else []
    times = [epoch.get("train_time_s") for epoch in history if isinstance(epoch, dict)]
    times = [t for t in times if isinstance(t, int | float) and not isinstance(t, bool) and t > 0]
    return sum(times) / len(times) if times else None


def mark_pareto(table: pd.DataFrame) -> pd.Series:
    """Completed runs that no other completed run beats on val accuracy without using more trainable parameters."""
    done = table[(table["state"] == "complete") & table["val_acc"].notna() & table["trainable"].notna()]
    return pareto(done).reindex(table.index, fill_value=False)


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
    for column in ("val_acc", "test_acc", "test_f1", "test_majority", "test_bal_acc", "test_f1_min"):
        shown[column] = shown[column].map(lambda v: "" if pd.isna(v) else f"{v:.4f}")
    shown["rank"] = shown["rank"].map(lambda v: "" if pd.isna(v) else str(int(v)))
    shown["alpha"] = shown["alpha"].map(lambda v: "" if pd.isna(v) else f"{v:g}")
    shown["method"] = shown["method"].fillna("")
    shown["targets"] = shown["targets"].fillna("")
    shown["variant"] = shown["variant"].fillna("")
    shown["n_train"] = shown["n_train"].map(lambda v: "" if pd.isna(v) else f"{int(v):,}")
    shown["trainable"] = shown["trainable"].map(lambda v: "" if pd.isna(v) else f"{int(v):,}")
    shown["trainable_pct"] = shown["trainable_pct"].map(lambda v: "" if pd.isna(v) else f"{v:.3f}")
    for column in ("time_s", "s_per_epoch", "peak_rss_mb"):
        shown[column] = shown[column].map(lambda v: "" if pd.isna(v) else f"{v:.0f}")
    shown["epochs"] = shown["epochs"].map(lambda v: "" if pd.isna(v) else str(int(v)))
    return shown.to_markdown(index=False)


CONFIG_COLUMNS = {
    "config": "config", "model": "model", "method": "method", "targets": "targets", "variant": "variant",
    "truncation": "truncation", "rank": "r",
    "alpha": "alpha", "trainable": "trainable", "n_train": "n_train", "seeds": "seeds",
    "val_acc": "val acc", "test_acc": "test acc", "test_ci": "test 95% CI", "test_sd": "sd",
    "vs_best": "Δ best [95% CI]", "vs_best_p": "p (Holm)", "tied_with_best": "≈ best",
    "vs_reference": "Δ reference [95% CI]", "vs_reference_p": "p ref (Holm)", "pareto": "pareto",
}  # fmt: skip


def _number(value, spec: str) -> str:
    return "" if value is None or pd.isna(value) else format(value, spec)


def _difference(row, prefix: str) -> str:
    if pd.isna(row.get(f"{prefix}_diff", float("nan"))):
        return ""
    points = [100 * row[f"{prefix}_{key}"] for key in ("diff", "low", "high")]
    return "{:+.1f} [{:+.1f}, {:+.1f}]".format(*points)


def configurations_markdown(table: pd.DataFrame) -> str:
    """One evaluation group's configuration table (ranking.rank_group) as markdown; differences in points."""
    shown = pd.DataFrame(index=table.index)
    shown["config"] = table["config"].map(lambda v: str(v)[:8])  # config_id: what else differs is in its runs' config
    for column in ("model", "method", "targets", "variant", "truncation"):
        shown[column] = table.get(column, pd.Series(index=table.index, dtype=object)).fillna("")
    shown["rank"] = table["rank"].map(lambda v: _number(v, ".0f"))
    shown["alpha"] = table["alpha"].map(lambda v: _number(v, "g"))
    shown["trainable"] = table["trainable"].map(lambda v: _number(v, ",.0f"))
    shown["n_train"] = table.get("n_train", pd.Series(index=table.index, dtype=float)).map(lambda v: _number(v, ",.0f"))
    shown["seeds"] = table["seeds"]
    shown["val_acc"] = table["val_acc"].map(lambda v: _number(v, ".4f"))
    shown["test_acc"] = table["test_acc"].map(lambda v: _number(v, ".4f"))
    bounds = zip(table["test_low"], table["test_high"], strict=True)
    shown["test_ci"] = [f"[{_number(low, '.3f')}, {_number(high, '.3f')}]" for low, high in bounds]
    shown["test_sd"] = table["test_sd"].map(lambda v: _number(v, ".4f"))
    for prefix in ("vs_best", "vs_reference"):
        shown[prefix] = [_difference(row, prefix) for _, row in table.iterrows()]
        column = table.get(f"{prefix}_p", pd.Series(index=table.index, dtype=float))
        shown[f"{prefix}_p"] = column.map(lambda v: _number(v, ".3g"))
    tied = table.get("tied_with_best", pd.Series(False, index=table.index))
    pairs = zip(table["best"], tied, strict=True)
    shown["tied_with_best"] = ["best" if best else ("yes" if tie else "no") for best, tie in pairs]
    shown["pareto"] = table["pareto"].map({True: "★", False: ""})
    return shown.rename(columns=CONFIG_COLUMNS).to_markdown(index=False)


def runs_as_configurations(table: pd.DataFrame) -> pd.DataFrame:
    """Completed runs shaped like a configuration table (one seed each, Wilson intervals), for the plot when no
    run records the evaluation set it was tested on."""
    runs = table[table["state"] == "complete"].assign(seeds=1)
    runs.attrs["reference"] = next(
        (
            {"model": row["model"], "test_acc": row["test_acc"]}
            for _, row in table.iterrows()
            if row["state"] == "reference"
        ),
        None,
    )
    return runs


def at_one_size(configurations: pd.DataFrame, runs: pd.DataFrame) -> tuple[pd.DataFrame, str | None]:
    """The axis plot compares methods at one training size: when configurations differ in n_train (a learning
    curve beside a study), those at the size most runs share, with the Pareto front drawn again among them; the
    note says so. Otherwise the table as it is."""
    if "n_train" not in configurations or configurations["n_train"].dropna().nunique() < 2:
        return configurations, None
    size = usual_size(runs)
    kept = configurations[configurations["n_train"] == size].copy()
    kept["pareto"] = pareto(kept)
    kept.attrs = dict(configurations.attrs)
    sizes = ", ".join(f"{int(v):,}" for v in sorted(configurations["n_train"].dropna().unique()))
    note = f"runs trained on {sizes} reviews: the accuracy plot shows n_train={int(size):,}"
    return kept, note + " (the learning curve has every size)"


# One marker per method (colours are the target sets), so 40 points stay apart without a label each; a method this
# install does not register gets OTHER_MARKER.
OTHER_MARKER = "X"


def method_marker(method: str) -> str:
    known = methods.recorded(method)
    return known.marker if known is not None else OTHER_MARKER


def method_order(method: str) -> tuple:
    """The methods in the registry's order (LoRA first), any other after them by name."""
    names = methods.names()
    return (names.index(method), "") if method in names else (len(names), method)


def majority_accuracy(runs: pd.DataFrame) -> float | None:
    """The accuracy of always answering the test set's most frequent label, from the first run (or reference)
    that recorded its test labels (metrics.json's test.majority_accuracy, else test_predictions.csv); None when
    none did."""
    from sentiment_lora.analysis.ranking import correctness

    recorded = runs["test_majority"].dropna() if "test_majority" in runs else pd.Series(dtype=float)
    if not recorded.empty:
        return float(recorded.iloc[0])
    for run in runs["run"]:
        found = correctness(run)
        if found is not None and found[0].size:
            share = float(found[0].mean())
            return max(share, 1 - share)
    return None


def point_label(row) -> str:
    """A front point's label, as its method writes it (LoRA: targets, rank and variant; others: name and targets)."""
    method = methods.DEFAULT if pd.isna(row.get("method")) else row["method"]
    known = methods.recorded(method)
    if known is None:
        return str(method).replace("_", " ") + (f" {row['targets']}" if pd.notna(row.get("targets")) else "")
    return known.point_label(row)


def draw_axis(table: pd.DataFrame, majority: float | None = None):
    """The figure of plot(): returned, not saved, so a test can read what is drawn."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    # Constrained layout makes room for a legend outside the axes, where it cannot hide a point.
    fig, ax = plt.subplots(figsize=(10, 5.5), layout="constrained")
    rows = table[table["trainable"].notna() & table["test_acc"].notna()].copy()
    recorded = rows["method"] if "method" in rows else pd.Series(methods.DEFAULT, index=rows.index)
    rows["method"] = recorded.fillna(methods.DEFAULT)
    # Colour: the target set (LoRA's modules, a method's own where it records them); black for a method without
    # any, which its marker names.
    rows["colour_key"] = rows["targets"].fillna("")
    keys = sorted(key for key in rows["colour_key"].unique() if key)
    colours = {"": "black"} | {key: plt.cm.tab20(index % 20) for index, key in enumerate(keys)}
    for (method, key), group in rows.groupby(["method", "colour_key"], sort=True):
        low = (group["test_acc"] - group["test_low"]).clip(lower=0).fillna(0)
        high = (group["test_high"] - group["test_acc"]).clip(lower=0).fillna(0)
        marker = method_marker(method)
        ax.errorbar(group["trainable"], group["test_acc"], yerr=[low, high], fmt=marker, capsize=2, markersize=6,
                    alpha=0.85, color=colours[key], zorder=3)  # fmt: skip
    handles = [
        Line2D([], [], linestyle="none", marker=method_marker(method), color="black", label=method)
        for method in sorted(rows["method"].unique(), key=method_order)
    ]
    handles += [Line2D([], [], linestyle="none", marker="o", color=colours[key], label=key) for key in keys]
    # Only the Pareto front (selected on validation) is labelled; the others are told apart by marker and colour.
    front = rows[rows["pareto"].astype(bool)].sort_values("trainable")
    if len(front) > 1:
        ax.plot(front["trainable"], front["test_acc"], color="tab:red", linestyle=":", zorder=2)
    if len(front):
        handles.append(Line2D([], [], color="tab:red", linestyle=":", label="Pareto front (val), labelled"))
    labels = [ax.text(row["trainable"], row["test_acc"], point_label(row), fontsize=7) for _, row in front.iterrows()]
    reference = table.attrs.get("reference")
    if reference:
        line = ax.axhline(reference["test_acc"], color="gray", linestyle="--")
        handles.append(Line2D([], [], color=line.get_color(), linestyle="--",
                              label=f"{reference['model']} (test {reference['test_acc']:.3f})"))  # fmt: skip
    if majority is not None:
        ax.axhline(majority, color="black", linestyle="-.", linewidth=1)
        handles.append(Line2D([], [], color="black", linestyle="-.", label=f"majority class (test {majority:.3f})"))
    else:
        handles.append(Line2D([], [], linestyle="none", label="majority class: no test labels recorded"))
    if not rows.empty:
        ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel("test accuracy (mean over seeds, 95% CI)")
    ax.set_title("Accuracy against trainable parameters, every method")
    ax.grid(True, which="both", alpha=0.3)
    fig.legend(handles=handles, loc="outside right upper", fontsize=8)
    if labels:
        # Front points a factor of two apart on the log axis still collide; adjustText moves the labels off each
        # other and off the points. A fixed iteration count (not its default time limit) keeps the file
        # reproducible; its jitter is seeded.
        from adjustText import adjust_text

        adjust_text(labels, x=rows["trainable"].to_numpy(), y=rows["test_acc"].to_numpy(), ax=ax, iter_lim=300)
    return fig


def plot(table: pd.DataFrame, path: Path, majority: float | None = None) -> None:
    """Test accuracy (mean over seeds, 95% interval) against trainable parameters, every method on one log axis:
    one marker per method, one colour per target set, the Pareto front (on validation) drawn and labelled (no
    other point is), the reference's test accuracy and the majority class as lines."""
    import matplotlib.pyplot as plt

    fig = draw_axis(table, majority)
    with atomic_write(path) as tmp:  # a full disk leaves no partial image
        fig.savefig(tmp, dpi=120, format=Path(path).suffix.lstrip(".").lower() or None)
    plt.close(fig)


def effects_markdown(table: pd.DataFrame) -> str:
    """ranking.effects as markdown, one row per value: each fixed part's baseline first (the row the others are
    paired against), then its comparisons; differences in points, Holm-adjusted p, whether the data supports one,
    and what each side cost (trainable parameters, seconds per training epoch, peak resident MiB)."""
    rows = []
    fixed = ["targets", "variant", "rank", "baseline"]
    for _, comparisons in table.groupby(fixed, sort=False, dropna=False):
        first = comparisons.iloc[0]
        rows.append(_effect_side(first, "baseline_", first["baseline"], first["baseline_acc"], seeds=None))
        for _, row in comparisons.iterrows():
            rows.append(_effect_side(row, "", row["value"], row["test_acc"], seeds=row["seeds"]))
    return pd.DataFrame(rows).to_markdown(index=False)


def _effect_side(row, prefix: str, value: str, test_acc: float, seeds: str | None) -> dict:
    """One side of an effects row as a markdown row; the baseline's (seeds None) has no difference of its own."""
    interval = (row.get(f"{prefix}test_low"), row.get(f"{prefix}test_high"))
    test = f"{test_acc:.4f}" + ("" if any(v is None or pd.isna(v) for v in interval) else
                                " [{:.4f}, {:.4f}]".format(*interval))  # fmt: skip
    difference = "" if seeds is None else "{:+.1f} [{:+.1f}, {:+.1f}]".format(
        *(100 * row[key] for key in ("diff", "low", "high")))  # fmt: skip
    own = prefix or "value_"  # each side's own targets, variant and rank (a method's differ from the baseline's)

    def described(key: str):
        value = row.get(f"{own}{key}", row.get(key))
        return None if value is None or pd.isna(value) else value

    return {
        "targets": described("targets") or "",
        "variant": described("variant") or "",
        "r": _number(described("rank"), ".0f"),
        "value": value if seeds is not None else f"{value} (baseline)",
        "lr": _number(described("lr"), ".3g"),
        "trainable": _number(row.get(f"{prefix}trainable"), ",.0f"),
        "seeds": seeds.split(" vs ")[0] if seeds else row["seeds"].split(" vs ")[1],
        "val acc": _number(row.get(f"{prefix}val_acc"), ".4f"),
        "test acc [95% CI]": test,
        "Δ points vs baseline [95% CI]": difference,
        "p (Holm)": "" if seeds is None else _number(row["p_holm"], ".3g"),
        "supported": "" if seeds is None else ("yes" if row["supported"] else "no"),
        "s/epoch": _number(row.get(f"{prefix}s_per_epoch"), ".3g"),
        "peak MiB": _number(row.get(f"{prefix}peak_rss_mb"), ",.0f"),
    }
