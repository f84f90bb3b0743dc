"""scripts/summarize.py on a fixture of run directories: rows, order, Pareto marks, CSV, PNG, notes, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pandas as pd
import pytest

from sentiment_lora.summary import wilson_interval

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
    from sentiment_lora import data as data_lib
    from sentiment_lora.config import DataConfig

    splits = data_lib.load_splits(DataConfig(name="csv", source="csv", path=str(csv_path)))
    assert metrics["data_fingerprint"] == data_lib.fingerprint(splits)
    table = summarize(tmp_path / "base", cwd=tmp_path)
    assert table.returncode == 0 and "reference" in table.stdout and "tfidf-logreg" in table.stdout


@pytest.mark.slow
def test_overlapping_inputs_give_one_row_per_run(sweep_dir, tmp_path):
    done = summarize(sweep_dir, sweep_dir / "a", sweep_dir / "b", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert sorted(pd.read_csv(sweep_dir / "summary.csv")["run"].map(lambda p: Path(p).name)) == list("abcdef")
