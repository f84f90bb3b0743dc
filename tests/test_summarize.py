"""scripts/summarize.py on a fixture of run directories: rows, order, Pareto marks, CSV, PNG, notes, errors."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pandas as pd
import pytest

from sentiment_lora.analysis.stats import wilson_interval

from .conftest import REPO

# (name, status, targets, rank, trainable, val accuracy, test accuracy)
RUNS = [
    ("a", "complete", ["q", "v"], 4, 1000, 0.80, 0.79),
    ("b", "complete", ["q", "k", "v"], 8, 3000, 0.85, 0.84),  # Pareto: best accuracy
    ("c", "complete", ["q"], 1, 500, 0.80, 0.78),  # Pareto: as accurate as a with fewer parameters
    ("d", "complete", ["ffn"], 4, 5000, 0.82, 0.80),  # dominated by b
    ("e", "pruned", ["v"], 2, 200, 0.60, None),
    ("f", "failed", ["q", "v"], 0, None, None, None),
]


def write_run(root: Path, name, status, targets, rank, trainable, val, test) -> None:
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    metrics = {"status": status, "model": {"name": "tiny"}, "lora": {"rank": rank, "alpha": 16, "targets": targets},
               "trial": {"number": ord(name) - ord("a"), "id": None}, "epochs_run": 2, "time_s": 1.5}  # fmt: skip
    if trainable is not None:
        metrics["params"] = {"trainable": trainable, "total": 100_000, "trainable_pct": trainable / 1000}
    if val is not None:
        metrics["val"] = {"accuracy": val}
    if test is not None:
        metrics["test"] = {"accuracy": test, "f1": test, "n": 200}
    if status == "failed":
        metrics["error"] = "UserError: config lora.rank: must be >= 1, got 0"
    (run / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture
def sweep_dir(tmp_path):
    for run in RUNS:
        write_run(tmp_path / "sweep", *run)
    (tmp_path / "sweep" / "g" / ".hydra").mkdir(parents=True)  # incomplete: no metrics.json
    (tmp_path / "sweep" / "h").mkdir()
    (tmp_path / "sweep" / "h" / "metrics.json").write_text('{"something": "else"}')  # foreign
    return tmp_path / "sweep"


def summarize(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "summarize.py"), *map(str, args)],
                          cwd=cwd, capture_output=True, text=True, timeout=120)  # fmt: skip


@pytest.mark.slow
def test_table_rows_order_pareto_csv_and_plot(sweep_dir, tmp_path):
    done = summarize(sweep_dir, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(sweep_dir / "summary.csv")
    assert list(table["run"].map(lambda p: Path(p).name)) == ["b", "d", "a", "c", "e", "f"]
    assert dict(zip(table["run"].map(lambda p: Path(p).name), table["pareto"], strict=True)) == {
        "a": False, "b": True, "c": True, "d": False, "e": False, "f": False}  # fmt: skip
    assert list(table["state"]) == ["complete", "complete", "complete", "complete", "pruned", "failed"]
    low, high = wilson_interval(168, 200)
    assert table.loc[0, "test_acc_ci95"] == f"[{low:.3f}, {high:.3f}]"
    assert "lora.rank" in table.loc[5, "error"]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 2 + len(RUNS) and "★" in lines[2] and "q+k+v" in lines[2]
    assert "g: no metrics.json" in done.stderr and "h/" not in done.stdout
    image = matplotlib.image.imread(sweep_dir / "summary.png")
    assert image.shape[0] > 200 and image.shape[1] > 300 and image[..., :3].std() > 0.01  # a drawn picture


def test_wilson_interval_is_the_textbook_value():
    low, high = wilson_interval(8, 10)  # Wilson 95% for 8/10: (0.4902, 0.9433)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)


@pytest.mark.slow
def test_empty_input_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    done = summarize(tmp_path / "empty", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error: no runs to summarize") and "Traceback" not in done.stderr
    done = summarize(cwd=tmp_path)
    assert done.returncode == 2 and "nothing to summarize" in done.stderr


@pytest.mark.slow
def test_baseline_row_uses_the_same_split(tmp_path):
    from .conftest import write_reviews

    csv_path = write_reviews(tmp_path / "r.csv", n=60)
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "baseline_tfidf.py"), "data=csv",
                           f"data.path={csv_path}", "--out", str(tmp_path / "base")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    metrics = json.loads((tmp_path / "base" / "metrics.json").read_text())
    assert metrics["status"] == "reference" and metrics["split_sizes"] == {"train": 48, "val": 6, "test": 6}
    from sentiment_lora.config import DataConfig
    from sentiment_lora.data import pipeline as data_lib

    splits = data_lib.load_splits(DataConfig(name="csv", source="csv", path=str(csv_path)))
    assert metrics["data_fingerprint"] == data_lib.fingerprint(splits)
    table = summarize(tmp_path / "base", cwd=tmp_path)
    assert table.returncode == 0 and "reference" in table.stdout and "tfidf-logreg" in table.stdout


@pytest.mark.slow
def test_overlapping_inputs_give_one_row_per_run(sweep_dir, tmp_path):
    done = summarize(sweep_dir, sweep_dir / "a", sweep_dir / "b", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert sorted(pd.read_csv(sweep_dir / "summary.csv")["run"].map(lambda p: Path(p).name)) == list("abcdef")


def summarize_here(capsys, *args) -> tuple[int, str, str]:
    """scripts/summarize.py's main in this process (no interpreter start-up): exit code, stdout, stderr."""
    spec = importlib.util.spec_from_file_location("summarize_script", REPO / "scripts" / "summarize.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    code = script.main([str(arg) for arg in args])
    out, err = capsys.readouterr()
    return code, out, err


COMPLETE = {"status": "complete", "model": {"name": "tiny"}, "lora": {"rank": 4, "alpha": 16, "targets": ["q"]},
            "params": {"trainable": 500, "total": 100_000, "trainable_pct": 0.5}, "val": {"accuracy": 0.8},
            "test": {"accuracy": 0.75, "f1": 0.7, "n": 40}, "epochs_run": 2, "time_s": 3.0}  # fmt: skip


@pytest.mark.parametrize("section", ["lora", "params", "val", "test", "model", "trial"])
def test_a_run_with_a_null_or_missing_section_is_a_row_with_blanks(tmp_path, capsys, section):
    runs = {"whole": COMPLETE, "null": {**COMPLETE, section: None}}
    runs["missing"] = {key: value for key, value in COMPLETE.items() if key != section}
    for name, metrics in runs.items():
        (tmp_path / "sweep" / name).mkdir(parents=True)
        (tmp_path / "sweep" / name / "metrics.json").write_text(json.dumps(metrics))
    code, out, err = summarize_here(capsys, tmp_path / "sweep")
    assert code == 0, err
    assert "Traceback" not in err
    table = pd.read_csv(tmp_path / "sweep" / "summary.csv")
    table.index = table["run"].map(lambda p: Path(p).name)
    assert set(table.index) == set(runs) and (tmp_path / "sweep" / "summary.png").exists()
    blank = {"lora": ["targets", "rank", "alpha"], "params": ["trainable", "trainable_pct"], "val": ["val_acc"],
             "test": ["test_acc", "test_f1"], "model": ["model"], "trial": ["trial"]}[section]  # fmt: skip
    assert table.loc[["null", "missing"], blank].isna().all().all()
    assert (table["state"] == "complete").all() and len(out.strip().splitlines()) == 2 + len(runs)


def test_a_truncated_metrics_json_is_reported_as_invalid_json(tmp_path, capsys):
    for name in ("good", "cut"):
        (tmp_path / "sweep" / name).mkdir(parents=True)
        (tmp_path / "sweep" / name / "metrics.json").write_text(json.dumps(COMPLETE))
    cut = tmp_path / "sweep" / "cut" / "metrics.json"
    cut.write_text(json.dumps(COMPLETE)[:40])
    code, out, err = summarize_here(capsys, tmp_path / "sweep")
    assert code == 0
    assert f"note: metrics.json is not valid JSON: {cut}" in err.splitlines() and "not a sentiment-lora run" not in err
    assert "good" in pd.read_csv(tmp_path / "sweep" / "summary.csv")["run"].iloc[0]
    code, out, err = summarize_here(capsys, cut.parent)  # nothing else to summarize: an error naming the file
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and f"not valid JSON: {cut}" in lines[0]


@pytest.mark.parametrize("section, key, value", [("test", "accuracy", "0.9"), ("val", "accuracy", "high"),
                                                ("test", "n", "40"), ("params", "trainable", True)])  # fmt: skip
def test_a_metrics_json_with_a_number_that_is_not_one_is_skipped_with_a_note(tmp_path, capsys, section, key, value):
    for name in ("good", "bad"):
        (tmp_path / "sweep" / name).mkdir(parents=True)
        (tmp_path / "sweep" / name / "metrics.json").write_text(json.dumps(COMPLETE))
    bad = tmp_path / "sweep" / "bad" / "metrics.json"
    bad.write_text(json.dumps({**COMPLETE, section: {**COMPLETE[section], key: value}}))
    code, out, err = summarize_here(capsys, tmp_path / "sweep")
    assert code == 0, err
    assert f"note: {bad}: {section}.{key} is {value!r}, not a number; skipped" in err.splitlines(), err
    assert [Path(run).name for run in pd.read_csv(tmp_path / "sweep" / "summary.csv")["run"]] == ["good"]
    code, out, err = summarize_here(capsys, bad.parent)  # nothing else to summarize: one error line naming it
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and f"{bad}: {section}.{key} is {value!r}, not a number" in lines[0], err


def test_an_unreachable_postgresql_storage_is_one_line_without_its_password(capsys):
    pytest.importorskip("psycopg")
    code, out, err = summarize_here(capsys, "--storage", "postgresql://me:Pa55word@127.0.0.1:1/optuna", "--study", "s")
    lines = err.strip().splitlines()
    assert code == 2 and not out and len(lines) == 1, err
    assert lines[0].startswith("error: --storage postgresql://me:***@127.0.0.1:1/optuna: cannot open it: "), lines
    assert "Pa55word" not in err


def test_a_storage_url_naming_a_missing_sqlite_file_is_an_error_that_creates_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for url in (f"sqlite:///{tmp_path}/typo.db", "sqlite:///rel/typo.db"):
        code, out, err = summarize_here(capsys, "--storage", url, "--study", "lora_optuna")
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: --storage") and "typo.db" in lines[0]
        assert not out
    assert list(tmp_path.iterdir()) == []  # no database, no folder, no summary


@pytest.mark.slow
def test_a_grid_with_seed_replicates_becomes_one_row_per_configuration_with_paired_tests(tmp_path, monkeypatch):
    from sentiment_lora.train import cli

    from .conftest import TINY_FAST, write_reviews

    reviews = write_reviews(tmp_path / "reviews.csv", n=120)
    data = ["data=csv", f"data.path={reviews}"]
    monkeypatch.chdir(tmp_path)
    grid = ["lora.rank=1,2", "trainer.seed=1,2", f"hydra.sweep.dir={tmp_path}/grid"]
    monkeypatch.setattr(sys, "argv", ["train", "-m", *TINY_FAST, *data, "trainer.epochs=1", *grid])
    cli()  # Hydra's multirun returns normally; a failed sweep would raise SystemExit
    base = subprocess.run([sys.executable, str(REPO / "scripts" / "baseline_tfidf.py"), *data, "--out",
                           str(tmp_path / "tfidf")], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert base.returncode == 0, base.stderr
    done = summarize(tmp_path / "grid", tmp_path / "tfidf", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    configs = pd.read_csv(tmp_path / "grid" / "configurations.csv")
    assert sorted(configs["rank"]) == [1, 2] and list(configs["seeds"]) == [2, 2]
    assert configs["best"].sum() == 1 and configs["vs_reference_p"].notna().all()
    other = configs[~configs["best"]].iloc[0]
    assert -1 <= other["vs_best_low"] <= other["vs_best_diff"] <= other["vs_best_high"] <= 1
    assert "Configurations tested on evaluation set" in done.stdout and "Δ best" in done.stdout


def test_importances_of_a_study_come_from_optunas_evaluator(tmp_path):
    import optuna

    spec = importlib.util.spec_from_file_location("summarize_script", REPO / "scripts" / "summarize.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    storage = f"sqlite:///{tmp_path}/s.db"
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    study.optimize(lambda t: t.suggest_float("lr", 0, 1) * 10 + t.suggest_int("rank", 1, 2) * 0.01, n_trials=12)
    found = script.importances(storage, "s")
    assert set(found.index) == {"lr", "rank"} and found["lr"] > found["rank"]
    assert found.sum() == pytest.approx(1.0)


def test_importances_of_a_study_whose_trials_all_scored_the_same_are_a_note_not_a_crash(tmp_path, capsys):
    import optuna

    spec = importlib.util.spec_from_file_location("summarize_script", REPO / "scripts" / "summarize.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    storage = f"sqlite:///{tmp_path}/s.db"
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    study.optimize(lambda t: 0.5 + 0 * t.suggest_float("lr", 0, 1), n_trials=4)  # every trial at chance
    assert script.importances(storage, "s") is None
    assert "no hyper-parameter importances" in capsys.readouterr().err


def test_summarize_never_writes_into_a_run_directory(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "runs" / "R"
    write_run(tmp_path / "runs", "R", "complete", ["q", "v"], 4, 1000, 0.80, 0.79)
    before = {path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file()}
    # An output named inside the run (its own files included), given directly or through a folder in it: refused.
    for flag, target in (("--csv", "metrics.json"), ("--csv", "test_predictions.csv"), ("--plot", "s.png"),
                         ("--curve", ".hydra/curve.png")):  # fmt: skip
        code, out, err = summarize_here(capsys, run_dir, flag, run_dir / target)
        assert (
            code == 2
            and not out
            and err.strip()
            == (
                f"error: {flag} {run_dir / target}: is inside the run directory {run_dir}, which is never rewritten; "
                "write it elsewhere"
            )
        )
    # By default, the outputs go beside the run, not into it.
    code, _, err = summarize_here(capsys, run_dir)
    assert code == 0, err
    assert {path: path.read_bytes() for path in run_dir.rglob("*") if path.is_file()} == before
    assert (tmp_path / "runs" / "summary.csv").is_file() and (tmp_path / "runs" / "summary.png").is_file()
