"""Configurations, not runs: replicates grouped, compared review by review, only ever against like.

Runs are grouped first by their evaluation sets (`eval_fingerprint`: runs tested on other reviews get their own
table, never a ranking with these), then by configuration (`config_id`: the config without the training seed).
Each configuration's row gives its seeds' mean and interval; the best configuration is the one with the highest
mean validation accuracy (selection on validation, never on test), and every other configuration is compared with
it, and with the reference row (TF-IDF) when there is one, on the test reviews (sentiment_lora.stats: paired test,
paired bootstrap interval, Holm's correction within each family of comparisons).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from sentiment_lora import methods
from sentiment_lora.analysis.stats import compare, holm, seed_summary, wilson_interval
from sentiment_lora.rundir.record import PREDICTIONS_FILE

ALPHA = 0.05


def correctness(run_dir: str | Path) -> tuple[np.ndarray, np.ndarray] | None:
    """(labels, 0/1 correctness) of a run's test predictions in data order, or None when it has none."""
    path = Path(run_dir) / PREDICTIONS_FILE
    if not path.is_file():
        return None
    frame = pd.read_csv(path).sort_values("row")
    labels = frame["label"].to_numpy(dtype=int)
    return labels, (frame["prediction"].to_numpy(dtype=int) == labels).astype(int)


def _describe(runs: pd.DataFrame) -> dict:
    first = runs.iloc[0]
    test, val = seed_summary(runs["test_acc"].tolist()), seed_summary(runs["val_acc"].tolist())
    return {
        "config": first["config_id"],
        "model": first["model"],
        "method": first.get("method"),
        "targets": first["targets"],
        "variant": first.get("variant"),
        "truncation": first.get("truncation"),
        "rank": first["rank"],
        "alpha": first["alpha"],
        "trainable": first["trainable"],
        "n_train": first.get("n_train"),
        "seeds": test["n"],
        "val_acc": val["mean"],
        "test_acc": test["mean"],
        "test_sd": test["sd"],
        # Several seeds: the t-interval of the mean over seeds; one seed: the Wilson interval over reviews.
        "test_low": test["low"] if test["n"] > 1 else first["test_low"],
        "test_high": test["high"] if test["n"] > 1 else first["test_high"],
        "state": first["state"],
    }


def _paired(rows: pd.DataFrame, matrices: dict, against: np.ndarray, prefix: str, skip: str | None) -> None:
    """Adds prefix_diff/_low/_high/_p (Holm-adjusted) columns: each row's test accuracy minus `against`'s."""
    results = {}
    for config in rows.index:
        if config != skip and config in matrices:
            results[config] = compare(matrices[config], against)
    adjusted = dict(zip(results, holm([r.p for r in results.values()]), strict=True))
    for column in ("diff", "low", "high", "p"):
        rows[f"{prefix}_{column}"] = np.nan
    for config, result in results.items():
        rows.loc[config, [f"{prefix}_diff", f"{prefix}_low", f"{prefix}_high", f"{prefix}_p"]] = [
            result.diff, result.low, result.high, adjusted[config]
        ]  # fmt: skip


def rank_group(runs: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """One evaluation group's runs (complete ones and references) -> one row per configuration."""
    notes: list[str] = []
    complete = runs[runs["state"] == "complete"]
    references = runs[runs["state"] == "reference"]
    rows = pd.DataFrame([_describe(group) for _, group in complete.groupby("config_id", sort=False)])
    if rows.empty:
        return rows, notes
    rows = rows.set_index("config", drop=False)
    matrices, labels = {}, None
    for config, group in complete.groupby("config_id", sort=False):
        loaded = [correctness(run) for run in group["run"]]
        if any(item is None for item in loaded):
            notes.append(f"configuration {config}: a run has no {PREDICTIONS_FILE}; it is not compared")
            continue
        if labels is None:
            labels = loaded[0][0]
        if any(not np.array_equal(item[0], labels) for item in loaded):
            notes.append(f"configuration {config}: test labels differ from the group's; it is not compared")
            continue
        matrices[config] = np.stack([item[1] for item in loaded])
    best = rows["val_acc"].idxmax()
    rows["best"] = rows.index == best
    if best in matrices:
        _paired(rows, matrices, matrices[best], "vs_best", skip=best)
        rows["tied_with_best"] = rows["best"] | (rows["vs_best_p"] >= ALPHA)
    reference = reference_for(references, complete)
    if reference is not None and (loaded := correctness(reference["run"])) is not None:
        if labels is not None and np.array_equal(loaded[0], labels):
            _paired(rows, matrices, loaded[1], "vs_reference", skip=None)
            rows.attrs["reference"] = {"model": reference["model"], "test_acc": reference["test_acc"]}
        else:
            notes.append(f"reference {reference['run']}: other test labels than the runs; not compared")
    rows["pareto"] = pareto(rows)
    return rows.sort_values("val_acc", ascending=False).reset_index(drop=True), notes


def usual_size(runs: pd.DataFrame):
    """The training size (n_train) most of the runs share, the largest on a tie; None when none records one."""
    sizes = runs["n_train"].dropna() if "n_train" in runs else pd.Series(dtype=float)
    if sizes.empty:
        return None
    counts = sizes.value_counts()
    return max(counts[counts == counts.max()].index)


def reference_for(references: pd.DataFrame, complete: pd.DataFrame) -> pd.Series | None:
    """The reference row (TF-IDF) to compare with: the one trained on as many reviews as most of the runs when
    references at several sizes are given (a learning curve), else the first."""
    if references.empty:
        return None
    size = usual_size(complete)
    same = references[references["n_train"] == size] if size is not None and "n_train" in references else references
    return (same if len(same) else references).iloc[0]


def pareto(rows: pd.DataFrame) -> pd.Series:
    """Rows (runs or configurations) no other row beats on validation accuracy without more trainable parameters."""
    marks = pd.Series(False, index=rows.index)
    for index, row in rows.iterrows():
        better = rows[
            (rows["val_acc"] >= row["val_acc"])
            & (rows["trainable"] <= row["trainable"])
            & ((rows["val_acc"] > row["val_acc"]) | (rows["trainable"] < row["trainable"]))
        ]
        marks[index] = better.empty
    return marks


def rank(runs: pd.DataFrame) -> tuple[list[tuple[str, pd.DataFrame]], list[str]]:
    """Per evaluation group (largest first): its configuration table."""
    tables, notes = [], []
    usable = runs[runs["state"].isin(["complete", "reference"]) & runs["eval_fingerprint"].notna()]
    groups = sorted(usable.groupby("eval_fingerprint"), key=lambda item: -len(item[1]))
    if len(groups) > 1:
        notes.append(
            f"{len(groups)} different evaluation sets: one table each; runs on different test reviews are never "
            "ranked together"
        )
    for fingerprint, group in groups:
        table, group_notes = rank_group(group)
        if not table.empty:
            tables.append((fingerprint, table))
        notes.extend(group_notes)
    return tables, notes


def run_config(run_dir: Path):
    """A run's composed config: its own .hydra/config.yaml, or its parent's for a seed_<n> replicate."""
    from omegaconf import OmegaConf

    for hydra_dir in (run_dir / ".hydra", run_dir.parent / ".hydra"):
        if (hydra_dir / "config.yaml").is_file():
            return OmegaConf.load(hydra_dir / "config.yaml")
    return None


def method_value(row, cfg) -> str:
    """A run's method as --effect method compares it: its name, and the budget it was sized to if any (a method at
    its defaults and at a parameter budget are two rows)."""
    from omegaconf import OmegaConf

    name = row.get("method") or methods.DEFAULT
    budget = OmegaConf.select(cfg, "method.budget", default=None)
    return str(name) if budget is None else f"{name} (budget {budget:,})"


def run_lr(cfg) -> float | None:
    """The lr a run trained at (methods.base.method_lr), None where its config does not say."""
    from omegaconf import OmegaConf

    lr = OmegaConf.select(cfg, "method.lr", default=None) or OmegaConf.select(cfg, "optimizer.lr", default=None)
    return None if lr is None else lr * OmegaConf.select(cfg, "method.lr_scale", default=1.0)


def chosen_on_validation(frame: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    """Where one method ran at several configurations beside the others (an lr grid: method.lr_scale), only its
    configuration with the best mean validation accuracy is compared; test accuracy never chooses it."""
    kept = []
    for (_, value), runs_of in frame.groupby(["group", "value_text"], sort=False):
        by_config = runs_of.groupby("config", sort=False)["val_acc"].mean()
        if len(by_config) > 1:
            best = by_config.fillna(-1.0).idxmax()
            runs_of = runs_of[runs_of["config"] == best]
            notes.append(f"{value}: lr {runs_of['lr'].iloc[0]} chosen on validation among {len(by_config)} "
                         "configurations")  # fmt: skip
        kept.append(runs_of)
    return pd.concat(kept)


def costs(runs_of: pd.DataFrame, correct: np.ndarray, prefix: str = "") -> dict:
    """What one side of a comparison is (its own targets, variant, rank and lr: value_* or baseline_*), and what it
    cost and scored beside its test accuracy: trainable parameters, mean
    validation accuracy, the test accuracy's 95% interval (Wilson over the test reviews for one seed, the
    t-interval over seeds for several), mean training seconds per epoch and the largest peak resident memory."""
    per_seed = correct.mean(axis=1)
    if len(per_seed) == 1:
        low, high = wilson_interval(int(correct.sum()), correct.shape[1])
    else:
        summary = seed_summary(per_seed.tolist())
        low, high = summary["low"], summary["high"]

    def column(name: str, how: str):
        values = pd.to_numeric(runs_of[name], errors="coerce") if name in runs_of else pd.Series(dtype=float)
        return None if values.isna().all() else getattr(values, how)()

    described = {f"{prefix or 'value_'}{key}": runs_of[key].iloc[0] if key in runs_of else None
                 for key in ("targets", "variant", "rank", "lr")}  # fmt: skip
    return described | {f"{prefix}{key}": value for key, value in {
        "trainable": column("trainable", "max"), "val_acc": column("val_acc", "mean"), "test_low": low,
        "test_high": high, "s_per_epoch": column("s_per_epoch", "mean"), "peak_rss_mb": column("peak_rss_mb", "max"),
    }.items()}  # fmt: skip


def effects(runs: pd.DataFrame, key: str) -> tuple[pd.DataFrame, list[str]]:
    """The effect of one config key, everything else held fixed: configurations that differ only in `key` (and the
    training seed) are paired on the same test reviews, each value against the group's baseline: the schema's
    default where the group has it (standard scaling, rank 4, q+v), else its smallest value.

    One row per comparison: the fixed part (targets, variant, rank), the two values, the difference in test
    accuracy with its paired bootstrap interval, and the paired test's p-value, Holm-adjusted over every comparison
    of the table (the family is "does `key` matter anywhere").

    `method` is the fine-tuning method (the row's `method`: metrics.json's, else the config's method.name, else
    lora; with its method.budget, a row of its own): each method against LoRA, with everything outside the method
    group fixed; a method run at several lrs (hparams_search=method_comparison) is compared at the one chosen on
    validation.
    """
    from omegaconf import OmegaConf

    from sentiment_lora.config import Config
    from sentiment_lora.rundir.record import config_digest

    def text(value) -> str:
        value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
        return "+".join(map(str, value)) if isinstance(value, list | tuple) else str(value)

    def natural(value: str) -> tuple:
        try:
            return (0, float(value), value)
        except ValueError:
            return (1, 0.0, value)

    # A method is its group plus what only it reads (LoRA's lora.*) and the prefix mode each method settles itself
    # (a probe always caches; with nothing frozen below, full, bitfit and ia3 run live whatever the recipe says).
    sections = tuple(method.config_section for method in methods.all_methods() if method.config_section)
    held_apart = ("method", *sections, "trainer.frozen_prefix") if key == "method" else (key,)
    notes, members = [], []
    for _, row in runs[runs["state"] == "complete"].iterrows():
        cfg = run_config(Path(row["run"]))
        found = correctness(row["run"])
        if cfg is None or found is None:
            notes.append(f"{row['run']}: no config or test predictions, left out of the {key} comparison")
            continue
        value = method_value(row, cfg) if key == "method" else OmegaConf.select(cfg, key, default=None)
        group = (row["eval_fingerprint"], config_digest(cfg, ignore=("trainer.seed", "seeds", *held_apart)))
        config = config_digest(cfg, ignore=("trainer.seed", "seeds"))
        members.append({**row.to_dict(), "group": group, "value": value, "correct": found[1], "config": config,
                        "lr": run_lr(cfg)})  # fmt: skip
    if not members:
        return pd.DataFrame(), [*notes, f"no complete run records {key}"]
    schema_default = OmegaConf.select(OmegaConf.structured(Config), key, default=None)
    default = methods.DEFAULT if key == "method" else text(schema_default)
    frame = pd.DataFrame(members)
    frame["value_text"] = frame["value"].map(text)
    if key == "method":
        frame = chosen_on_validation(frame, notes)
    rows = []
    for _, group in frame.groupby("group", sort=False):
        values = sorted(group["value_text"].unique(), key=lambda v: (v != default, *natural(v)))
        if len(values) < 2:
            continue
        matrices = {v: np.vstack(group.loc[group["value_text"] == v, "correct"].tolist()) for v in values}
        first = group[group["value_text"] == values[0]].iloc[0]  # the fixed part, described by the baseline's runs
        for value in values[1:]:
            result = compare(matrices[value], matrices[values[0]])
            baseline_runs = group[group["value_text"] == values[0]]
            fixed = {"targets": first["targets"], "variant": first["variant"], "rank": first["rank"]}
            rows.append({**fixed, "baseline": values[0], "value": value,
                         "seeds": f"{len(matrices[value])} vs {len(matrices[values[0]])}",
                         "test_acc": matrices[value].mean(), "baseline_acc": matrices[values[0]].mean(),
                         "diff": result.diff, "low": result.low, "high": result.high, "p": result.p,
                         **costs(group[group["value_text"] == value], matrices[value]),
                         **costs(baseline_runs, matrices[values[0]], "baseline_")})  # fmt: skip
    table = pd.DataFrame(rows)
    if table.empty:
        return table, [*notes, f"no two configurations differ only in {key}"]
    table["p_holm"] = holm(table["p"].tolist())
    table["supported"] = table["p_holm"] < ALPHA
    return table.sort_values("diff", ascending=False).reset_index(drop=True), notes
