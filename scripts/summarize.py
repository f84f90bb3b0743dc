#!/usr/bin/env python
"""Turn runs into a results table: markdown on stdout, CSV and PNG in the first input (a sweep directory) or
beside it (a run directory, which is never written into).

    python scripts/summarize.py outputs/multirun/2026-11-26_10-00-00
    python scripts/summarize.py outputs/multirun/a outputs/multirun/b outputs/baselines/tfidf
    python scripts/summarize.py --storage sqlite:///outputs/optuna/lora_optuna.db --study lora_optuna

First, one row per run (summary.csv): model, fine-tuning method (lora, linear_probe, bitfit, ia3, full),
targets, rank, alpha, trainable parameters (and % of total), n_train, val accuracy, test accuracy with its 95%
Wilson score interval, test F1, epochs run, wall time and state (complete/pruned/failed, or reference for a
baseline). Sorted by val accuracy; ★ marks the Pareto-optimal runs across methods.

Then, per evaluation set, one row per configuration (configurations.csv; replicates that differ only in
trainer.seed are one row): seeds, mean val and test accuracy, the test interval (t over seeds, or Wilson for one
seed), and test differences, review by review, to the best configuration (highest mean val accuracy) and to the
reference row, with 95% intervals and Holm-adjusted p-values (McNemar for one seed each, a paired permutation
test over seed-averaged reviews for replicates); "≈ best" marks configurations the data cannot tell from the best.
Runs tested on other reviews (another eval_fingerprint) get a table of their own. The plot (summary.png) shows the
largest table: every method on one log axis of trainable parameters (a marker per method, a colour per target
set), the Pareto front labelled, TF-IDF and the majority class as lines. --effect KEY tests one config key with
everything else fixed (--effect method: each method against LoRA). When runs differ in n_train, a learning curve
(learning_curve.png or --curve, learning_curve.csv): test accuracy per method and size, with the gaps to full
fine-tuning and to TF-IDF at each size, paired on the same test reviews. With --storage/--study, the study's
hyper-parameter importances (Optuna's fANOVA evaluator) are printed and written to importances.csv. Incomplete or
foreign directories are skipped with a note on stderr.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

import pandas as pd

from sentiment_lora.analysis.curve import curve_markdown, learning_curve, plot_curve
from sentiment_lora.analysis.ranking import effects, rank
from sentiment_lora.analysis.summary import (
    at_one_size,
    build_table,
    configurations_markdown,
    effects_markdown,
    majority_accuracy,
    plot,
    runs_as_configurations,
    to_markdown,
)
from sentiment_lora.credentials import masked, redacted
from sentiment_lora.errors import USER_ERROR_EXIT, UserError
from sentiment_lora.outputs import disk_problem, write_csv
from sentiment_lora.rundir.completed import check_readable_storage, run_holding

INTERRUPTED_EXIT = 128 + signal.SIGINT


def load_study(storage: str, study_name: str):
    """The study, or one line naming what is wrong: no such study, or a storage that cannot be opened (a server
    that is down, a wrong password, a missing driver: SQLAlchemy's and Optuna's errors run to a hundred lines)."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    try:
        return optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        raise UserError(f"no study '{study_name}' in {masked(storage)}") from None
    except (SQLAlchemyError, ImportError, OSError) as err:
        problem = redacted(str(getattr(err, "orig", None) or err).strip(), storage).splitlines()[0]
        raise UserError(f"--storage {masked(storage)}: cannot open it: {problem}") from None


def study_run_dirs(storage: str, study_name: str) -> list[Path]:
    """Run directories linked to the study's trials (each trial records its run_dir)."""
    check_readable_storage(storage)
    study = load_study(storage, study_name)
    dirs = [Path(t.user_attrs["run_dir"]) for t in study.get_trials(deepcopy=False) if "run_dir" in t.user_attrs]
    missing = len(study.trials) - len(dirs)
    if missing:
        print(f"note: {missing} trial(s) of '{study_name}' never reached a run directory", file=sys.stderr)
    return dirs


def importances(storage: str, study_name: str):
    """Hyper-parameter importances of a single-objective study (fANOVA, seeded), or None when it cannot have any."""
    import optuna
    import pandas as pd

    study = load_study(storage, study_name)
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(study.directions) > 1 or len(complete) < 2:
        return None
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    try:
        found = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except RuntimeError as err:  # fANOVA has nothing to apportion when every trial scored the same
        print(f"note: no hyper-parameter importances for '{study_name}': {err}", file=sys.stderr)
        return None
    return pd.Series(found, name="importance").rename_axis("parameter")


def output_paths(args: argparse.Namespace) -> tuple[Path, Path]:
    """(table CSV, plot PNG): the other outputs go beside them. By default beside the first input (in a sweep
    directory, or next to a run directory), never inside a run: a completed run is never rewritten."""
    for flag, path in (("--csv", args.csv), ("--plot", args.plot), ("--curve", args.curve)):
        if path is not None and (holder := run_holding(path)) is not None:
            raise UserError(f"{flag} {path}: is inside the run directory {holder}, which is never rewritten; write "
                            "it elsewhere")  # fmt: skip
    out_dir = args.paths[0] if args.paths and args.paths[0].is_dir() else Path("outputs")
    while (holder := run_holding(out_dir)) is not None:
        out_dir = holder.parent
    return args.csv or out_dir / "summary.csv", args.plot or out_dir / "summary.png"


def main(argv: list[str] | None = None) -> int:
    """The summary, with what the disk refuses (full, read-only) and Ctrl-C as one line: every file is written
    whole or not at all (outputs.write_csv, atomic_target), so a stopped summary leaves no partial file."""
    try:
        return summarize(argv)
    except KeyboardInterrupt:
        print("error: interrupted; the files written so far are whole, the rest were not written", file=sys.stderr)
        return INTERRUPTED_EXIT
    except OSError as err:
        problem = disk_problem(err, Path.cwd())
        if problem is None:
            raise
        print(f"error: {problem}; nothing half-written was left", file=sys.stderr)
        return USER_ERROR_EXIT


def check_figure_path(option: str, path: Path | None) -> None:
    """matplotlib writes the format a name's suffix says, and raises deep inside for one it lacks."""
    if path is None:
        return
    from matplotlib.figure import Figure

    formats = Figure().canvas.get_supported_filetypes()
    if path.suffix.lower().lstrip(".") not in formats:
        raise UserError(
            f"{option} {path}: matplotlib writes no '{path.suffix or '(no suffix)'}' figure; name a file ending in "
            f"{', '.join('.' + name for name in sorted(formats))}"
        )


def summarize(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="*", type=Path, help="sweep or run directories (searched recursively)")
    parser.add_argument("--storage", help="Optuna storage URL, e.g. sqlite:///outputs/optuna/lora_optuna.db")
    parser.add_argument("--study", help="study name in --storage")
    parser.add_argument("--csv", type=Path, help="CSV output (default: <first input>/summary.csv)")
    parser.add_argument("--plot", type=Path, help="PNG output (default: <first input>/summary.png)")
    parser.add_argument(
        "--curve",
        type=Path,
        help="learning-curve PNG, drawn whenever runs differ in n_train (default: <first input>/learning_curve.png)",
    )
    parser.add_argument(
        "--effect",
        action="append",
        default=[],
        metavar="KEY",
        help="config key whose effect to test, everything else fixed (e.g. lora.scaling, lora.rank; method: each "
        "fine-tuning method against LoRA); repeatable",
    )
    args = parser.parse_args(argv)
    try:
        check_figure_path("--plot", args.plot)
        check_figure_path("--curve", args.curve)
        csv_path, png_path = output_paths(args)
        paths = list(args.paths)
        if args.storage or args.study:
            if not (args.storage and args.study):
                raise UserError("--storage and --study go together")
            paths += study_run_dirs(args.storage, args.study)
        if not paths:
            raise UserError("nothing to summarize: give run/sweep directories or --storage with --study")
        table, notes = build_table(paths)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    for folder in {csv_path.parent, png_path.parent}:  # --csv elsewhere leaves the plot in outputs/
        folder.mkdir(parents=True, exist_ok=True)
    write_csv(table, csv_path, index=False)
    print(to_markdown(table))
    tables, rank_notes = rank(table)
    for note in rank_notes:
        print(f"note: {note}", file=sys.stderr)
    for fingerprint, configurations in tables:
        n_test = table.loc[table["eval_fingerprint"] == fingerprint, "test_n"].max()
        print(f"\n### Configurations tested on evaluation set {fingerprint} ({n_test:.0f} test reviews)\n")
        print(configurations_markdown(configurations))
    if tables:
        configs_path = csv_path.with_name("configurations.csv")
        all_configs = [t.assign(eval_fingerprint=fingerprint) for fingerprint, t in tables]
        write_csv(pd.concat(all_configs), configs_path, index=False)
        print(f"configurations: {configs_path}", file=sys.stderr)
    if tables:
        fingerprint, axis = tables[0]
        group = table[table["eval_fingerprint"] == fingerprint]
    else:
        axis, group = runs_as_configurations(table), table
    axis, size_note = at_one_size(axis, group[group["state"] == "complete"])
    if size_note:
        print(f"note: {size_note}", file=sys.stderr)
    majority = majority_accuracy(group)
    if majority is None:
        print("note: no run records its test labels (test_predictions.csv): the plot has no majority-class line",
              file=sys.stderr)  # fmt: skip
    plot(axis, png_path, majority)
    cells, curve_notes = learning_curve(table)
    for note in curve_notes:
        print(f"note: {note}", file=sys.stderr)
    curve_path = None
    if not cells.empty:
        curve_path = args.curve or png_path.with_name("learning_curve.png")
        curve_path.parent.mkdir(parents=True, exist_ok=True)
        write_csv(cells.drop(columns=["run_dirs"]), csv_path.with_name("learning_curve.csv"), index=False)
        plot_curve(cells, curve_path)
        print("\n### Learning curve: test accuracy against n_train, gaps paired on the same test reviews\n")
        print(curve_markdown(cells))
    elif args.curve:
        print("note: --curve: the runs do not differ in n_train; no learning curve", file=sys.stderr)
    for key in args.effect:
        found, effect_notes = effects(table, key)
        for note in effect_notes:
            print(f"note: {note}", file=sys.stderr)
        if not found.empty:
            write_csv(found, csv_path.with_name(f"effect_{key}.csv"), index=False)
            print(f"\n### Effect of {key}, everything else fixed (paired over the same test reviews)\n")
            print(effects_markdown(found))
    if args.storage and (found := importances(args.storage, args.study)) is not None:
        write_csv(found.to_frame(), csv_path.with_name("importances.csv"))
        print("\n### Hyper-parameter importances (fANOVA)\n\n" + found.to_frame().to_markdown(floatfmt=".3f"))
    curve = f"; learning curve {curve_path}" if curve_path else ""
    print(f"\n{len(table)} runs; table {csv_path}; plot {png_path}{curve}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
