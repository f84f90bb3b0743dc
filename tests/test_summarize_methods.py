"""summarize.py across fine-tuning methods, on fabricated run directories in test_summarize.py's format (plus
the fields newer runs record: method, seed, config_id, eval_fingerprint, split_sizes, test_predictions.csv, the
run's .hydra/config.yaml): the method column, the one-axis plot, --effect method, learning curves, and TF-IDF at
the harness's n_train."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from sentiment_lora.analysis.summary import build_table, draw_axis, point_label, row_of
from sentiment_lora.rundir.record import config_id

from .test_summarize import summarize_here

LABELS = np.array([1, 0] * 50)  # 100 test reviews, balanced: the majority class scores 0.5
TRAINABLE = {"linear_probe": 385, "bitfit": 3_457, "ia3": 5_761, "full": 22_713_985}


def write_run(root: Path, name: str, *, method: str = "lora", targets=("q", "v"), rank: int = 4, trainable=None,
              val: float = 0.8, correct: int = 80, seed: int = 1, n_train: int = 1600, record_method: bool = True,
              status: str = "complete", lr: float = 1e-3, predictions: bool = True) -> Path:  # fmt: skip
    """A run directory: metrics.json in the trainer's format, its config, and test predictions whose first
    `correct` of the 100 reviews are right."""
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    lora = {"rank": rank, "alpha": 16, "targets": list(targets)}
    cfg = OmegaConf.create({"method": {"name": method}, "lora": lora, "data": {"n_train": n_train},
                            "optimizer": {"lr": lr}, "trainer": {"seed": seed}})  # fmt: skip
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    if trainable is None:
        trainable = TRAINABLE.get(method, 1000 * rank * len(targets))
    accuracy = correct / LABELS.size
    metrics = {"status": status, "model": {"name": "tiny"}, "lora": lora,
               "trial": {"number": None, "id": None}, "epochs_run": 2, "time_s": 1.5, "seed": seed,
               "params": {"trainable": trainable, "total": 22_713_985, "trainable_pct": trainable / 227_139.85},
               "val": {"accuracy": val}, "test": {"accuracy": accuracy, "f1": accuracy, "n": int(LABELS.size)},
               "config_id": config_id(cfg), "eval_fingerprint": "E1",
               "split_sizes": {"train": n_train, "val": 50, "test": int(LABELS.size)},
               "history": [{"epoch": 1, "train_time_s": 10.0 * rank}, {"epoch": 2, "train_time_s": 12.0 * rank}],
               "peak_memory": {"rss_mb": 100.0 * rank + seed, "since": "run start"}}  # fmt: skip
    if record_method:
        metrics["method"] = method
    if status == "reference":
        metrics |= {"model": {"name": "tfidf-logreg"}, "lora": {"rank": None, "alpha": None, "targets": []}}
    (run / "metrics.json").write_text(json.dumps(metrics))
    if predictions:
        right = np.arange(LABELS.size) < correct
        predicted = np.where(right, LABELS, 1 - LABELS)
        pd.DataFrame({"label": LABELS, "prob": 0.1 + 0.8 * predicted, "prediction": predicted}).to_csv(
            run / "test_predictions.csv", index_label="row"
        )
    return run


def test_the_method_comes_from_metrics_then_the_config_then_lora(tmp_path):
    recorded = write_run(tmp_path, "recorded", method="bitfit")
    configured = write_run(tmp_path, "configured", method="full", record_method=False)
    older = write_run(tmp_path, "older", method="ia3", record_method=False)
    (older / ".hydra" / "config.yaml").unlink()  # a run from before the method group: no method anywhere
    head = write_run(tmp_path, "head", targets=("head",), record_method=False)
    tfidf = write_run(tmp_path, "tfidf", status="reference", record_method=False)
    rows = {path.name: row_of(path) for path in (recorded, configured, older, head, tfidf)}
    assert {name: row["method"] for name, row in rows.items()} == {
        "recorded": "bitfit", "configured": "full", "older": "lora", "head": "lora", "tfidf": None}  # fmt: skip
    # LoRA's rank, alpha and variant describe LoRA runs only; a head-only LoRA run stays lora on the head.
    assert (
        rows["recorded"]["rank"] is None and rows["recorded"]["alpha"] is None and rows["recorded"]["variant"] is None
    )
    assert rows["recorded"]["targets"] is None and rows["head"]["targets"] == "head" and rows["head"]["rank"] == 4
    assert rows["recorded"]["n_train"] == 1600


def test_the_run_and_configuration_tables_have_a_method_column(tmp_path, capsys):
    for method in ("lora", "linear_probe", "full"):
        write_run(tmp_path / "sweep", method, method=method)
    code, out, err = summarize_here(capsys, tmp_path / "sweep")
    assert code == 0, err
    table = pd.read_csv(tmp_path / "sweep" / "summary.csv")
    assert sorted(table["method"]) == ["full", "linear_probe", "lora"]
    configs = pd.read_csv(tmp_path / "sweep" / "configurations.csv")
    assert sorted(configs["method"]) == ["full", "linear_probe", "lora"] and set(configs["n_train"]) == {1600}
    header = [cell.strip() for cell in out.splitlines()[0].split("|")]
    assert {"method", "n_train"} <= set(header)


FORTY = [  # (method, targets, rank, trainable, val accuracy, test reviews right of 100)
    *[
        ("lora", targets, rank, (1 + index) * rank * 1000, 0.80 + 0.004 * index + 0.002 * rank, 80 + index)
        for index, targets in enumerate(
            [("q",), ("k",), ("v",), ("output",), ("ffn",), ("q", "v"), ("q", "k", "v"), ("all",), ("head",)]
        )
        for rank in (2, 4, 8, 16)
    ],  # fmt: skip
    ("linear_probe", (), 4, 385, 0.70, 70),
    ("bitfit", (), 4, 3_457, 0.83, 83),
    ("ia3", (), 4, 5_761, 0.84, 84),
    ("full", (), 4, 22_713_985, 0.90, 90),
]


def test_forty_methods_on_one_log_axis_label_only_the_pareto_front(tmp_path):
    from sentiment_lora.analysis.ranking import rank

    assert len(FORTY) == 40
    for index, (method, targets, rank_, trainable, val, correct) in enumerate(FORTY):
        write_run(tmp_path / "sweep", f"run{index}", method=method, targets=targets, rank=rank_, trainable=trainable,
                  val=val, correct=correct, predictions=False)  # fmt: skip
    runs, _ = build_table([tmp_path / "sweep"])
    (_, configurations), *_ = rank(runs)[0]
    assert len(configurations) == 40
    configurations.attrs["reference"] = {"model": "tfidf-logreg", "test_acc": 0.86}
    fig = draw_axis(configurations, majority=0.5)
    ax = fig.axes[0]
    front = configurations[configurations["pareto"]]
    assert 1 < len(front) < 40
    assert sorted(text.get_text() for text in ax.texts) == sorted(point_label(row) for _, row in front.iterrows())
    assert "full" in [text.get_text() for text in ax.texts]  # the best on validation is on the front
    assert ax.get_xscale() == "log" and ax.get_legend() is None and len(fig.legends) == 1
    legend = [text.get_text() for text in fig.legends[0].get_texts()]
    assert {"lora", "linear_probe", "bitfit", "ia3", "full", "q+v", "head"} <= set(legend)
    assert "tfidf-logreg (test 0.860)" in legend and "majority class (test 0.500)" in legend
    # One marker per method: every point of a method is drawn with its marker, and the methods' markers differ.
    markers = {}
    for line in ax.lines:
        if line.get_marker() not in (None, "None", "", "none") and len(line.get_xdata()):
            for x in line.get_xdata():
                markers.setdefault(line.get_marker(), set()).add(int(x))
    assert {385} == markers["s"] and {22_713_985} == markers["P"] and {3_457} == markers["^"]
    fig.canvas.draw()  # the legend sits outside the axes: it cannot hide a point
    renderer = fig.canvas.get_renderer()
    legend_box, axes_box = fig.legends[0].get_window_extent(renderer), ax.get_window_extent(renderer)
    assert legend_box.x0 >= axes_box.x1
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_the_majority_line_comes_from_the_test_labels_or_the_log_says_why_not(tmp_path, capsys):
    imbalanced = np.array([1] * 70 + [0] * 30)
    run = write_run(tmp_path / "sweep", "a")
    write_run(tmp_path / "sweep", "b", method="full")
    frame = pd.read_csv(run / "test_predictions.csv")
    frame.assign(label=imbalanced).to_csv(run / "test_predictions.csv", index=False)
    from sentiment_lora.analysis.summary import majority_accuracy

    runs, _ = build_table([tmp_path / "sweep"])
    assert majority_accuracy(runs.sort_values("run")) == pytest.approx(0.7)
    for name in ("a", "b"):
        (tmp_path / "sweep" / name / "test_predictions.csv").unlink()
    code, out, err = summarize_here(capsys, tmp_path / "sweep")
    assert code == 0 and "no run records its test labels (test_predictions.csv)" in err
    runs, _ = build_table([tmp_path / "sweep"])
    fig = draw_axis(runs.assign(seeds=1), majority=None)
    assert "majority class: no test labels recorded" in [t.get_text() for t in fig.legends[0].get_texts()]
    assert all(line.get_linestyle() != "-." for line in fig.axes[0].lines)


def test_effect_method_pairs_each_method_with_lora_on_the_same_reviews(tmp_path, capsys):
    for seed in (1, 2):
        write_run(tmp_path / "sweep", f"lora{seed}", seed=seed, correct=85)
        write_run(tmp_path / "sweep", f"probe{seed}", method="linear_probe", seed=seed, correct=70)
        write_run(tmp_path / "sweep", f"full{seed}", method="full", seed=seed, correct=90)
    write_run(tmp_path / "sweep", "other_lr", method="bitfit", lr=5e-3, correct=60)  # differs in more: unpaired
    code, out, err = summarize_here(capsys, tmp_path / "sweep", "--effect", "method")
    assert code == 0, err
    table = pd.read_csv(tmp_path / "sweep" / "effect_method.csv").set_index("value")
    assert sorted(table.index) == ["full", "linear_probe"] and set(table["baseline"]) == {"lora"}
    assert table.loc["full", "diff"] == pytest.approx(0.05) and table.loc["linear_probe", "diff"] == pytest.approx(
        -0.15
    )
    assert table.loc["full", "seeds"] == "2 vs 2" and table.loc["linear_probe", "supported"]
    # What each side cost: seconds per training epoch (the mean of the history's), the largest peak over seeds.
    assert table.loc["full", "s_per_epoch"] == pytest.approx(44.0) and table.loc["full", "peak_rss_mb"] == 402
    assert table.loc["full", "baseline_trainable"] == 8000 and table.loc["full", "trainable"] == TRAINABLE["full"]
    assert table.loc["full", "test_low"] == table.loc["full", "test_high"] == 0.90  # two equal seeds: no spread
    rows = {line.split("|")[4].strip(): line for line in out.splitlines() if line.count("|") > 10}
    assert "Effect of method" in out and {"lora (baseline)", "full", "linear_probe"} <= set(rows)
    assert "+5.0 [" in rows["full"] and "0.8500" in rows["lora (baseline)"]
    # Each side described by its own columns: full fine-tuning has no rank, LoRA's baseline has 4.
    assert pd.isna(table.loc["full", "value_rank"]) and table.loc["full", "baseline_rank"] == 4
    assert table.loc["full", "value_lr"] == table.loc["full", "baseline_lr"] == 1e-3


SIZES = (100, 400, 1600)


def learning_runs(root: Path) -> None:
    """LoRA, the linear probe and full fine-tuning at three sizes, 2 seeds each, and TF-IDF at each size."""
    right = {"lora": (70, 80, 88), "linear_probe": (72, 75, 78), "full": (65, 82, 92), "tfidf": (74, 80, 85)}
    for index, size in enumerate(SIZES):
        write_run(root, f"tfidf_n{size}", status="reference", n_train=size, correct=right["tfidf"][index])
        for method in ("lora", "linear_probe", "full"):
            for seed in (1, 2):
                write_run(root, f"{method}_n{size}_s{seed}", method=method, n_train=size, seed=seed,
                          correct=right[method][index], val=0.6 + right[method][index] / 1000)  # fmt: skip


def test_a_learning_curve_per_method_with_gaps_to_full_and_tfidf(tmp_path, capsys):
    learning_runs(tmp_path / "curve")
    code, out, err = summarize_here(capsys, tmp_path / "curve")
    assert code == 0, err
    cells = pd.read_csv(tmp_path / "curve" / "learning_curve.csv")
    assert len(cells) == 4 * len(SIZES) and set(cells["method"]) == {"lora", "linear_probe", "full", "tfidf"}
    cells = cells.set_index(["method", "n_train"])
    assert cells.loc[("lora", 400), "runs"] == 2 and cells.loc[("lora", 400), "seeds"] == "1,2"
    assert cells.loc[("tfidf", 400), "runs"] == 1 and cells.loc[("lora", 400), "test_n"] == 100
    assert cells.loc[("lora", 1600), "test_acc"] == pytest.approx(0.88)
    # Gaps review by review at the same size: LoRA 88 right against full's 92 and TF-IDF's 85 at 1,600 reviews.
    assert cells.loc[("lora", 1600), "vs_full_diff"] == pytest.approx(-0.04)
    assert cells.loc[("lora", 100), "vs_full_diff"] == pytest.approx(0.05)
    assert cells.loc[("lora", 1600), "vs_tfidf_diff"] == pytest.approx(0.03)
    assert cells.loc[("lora", 100), "vs_tfidf_diff"] == pytest.approx(-0.04)
    assert np.isnan(cells.loc[("full", 400), "vs_full_diff"]) and np.isnan(cells.loc[("tfidf", 400), "vs_tfidf_diff"])
    assert cells.loc[("full", 400), "vs_tfidf_p"] <= 1 and cells["vs_full_p"].notna().sum() == 3 * len(SIZES)
    assert (tmp_path / "curve" / "learning_curve.png").is_file()
    assert "### Learning curve" in out and "| Δ full, points [95% CI]" in out
    # The accuracy plot stays at one size (Pareto on validation among its runs); the log says which.
    assert "the accuracy plot shows n_train=1,600 (the learning curve has every size)" in err
    configs = pd.read_csv(tmp_path / "curve" / "configurations.csv")
    assert set(configs["n_train"]) == set(SIZES)


def test_the_curve_plot_draws_one_line_per_method_against_log_n_train(tmp_path):
    from sentiment_lora.analysis.curve import draw_curve, learning_curve

    learning_runs(tmp_path / "curve")
    runs, _ = build_table([tmp_path / "curve"])
    cells, notes = learning_curve(runs)
    fig = draw_curve(cells)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and [tick.get_text() for tick in ax.get_xticklabels()] == ["100", "400", "1,600"]
    lines = {container.get_label(): container.lines[0] for container in ax.containers}  # errorbar's data lines
    assert set(lines) == {"lora q+v r4", "linear probe", "full", "tfidf"}
    assert list(lines["full"].get_xdata()) == list(SIZES) and lines["tfidf"].get_linestyle() == "--"
    assert list(lines["lora q+v r4"].get_ydata()) == pytest.approx([0.70, 0.80, 0.88])
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_runs_at_one_size_have_no_learning_curve(tmp_path, capsys):
    write_run(tmp_path / "sweep", "a")
    write_run(tmp_path / "sweep", "b", method="full")
    code, out, err = summarize_here(capsys, tmp_path / "sweep", "--curve", tmp_path / "curve.png")
    assert code == 0 and "Learning curve" not in out and not (tmp_path / "curve.png").exists()
    assert "--curve: the runs do not differ in n_train" in err


def baseline_main():
    import importlib.util

    from .conftest import REPO

    spec = importlib.util.spec_from_file_location("baseline_tfidf_script", REPO / "scripts" / "baseline_tfidf.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script.main


@pytest.mark.slow
def test_tfidf_takes_the_harness_n_train_and_keeps_the_evaluation_sets(tmp_path, capsys, monkeypatch):
    from .conftest import write_reviews

    reviews = write_reviews(tmp_path / "r.csv", n=120)
    data = ["data=csv", f"data.path={reviews}", "data.n_val=20", "data.n_test=20"]
    main = baseline_main()
    monkeypatch.chdir(tmp_path)
    assert main([*data, "--n-train", "40"]) == 0
    assert main([*data, "data.n_train=80", "--out", str(tmp_path / "n80")]) == 0
    small = json.loads((tmp_path / "outputs" / "baselines" / "tfidf_n40" / "metrics.json").read_text())
    large = json.loads((tmp_path / "n80" / "metrics.json").read_text())
    assert small["split_sizes"] == {"train": 40, "val": 20, "test": 20} and large["split_sizes"]["train"] == 80
    assert small["data"]["n_train"] == 40 and small["eval_fingerprint"] == large["eval_fingerprint"]
    assert small["data_fingerprint"] != large["data_fingerprint"]
    code, out, err = summarize_here(capsys, tmp_path / "outputs" / "baselines" / "tfidf_n40", tmp_path / "n80")
    assert code == 0, err
    curve = pd.read_csv(tmp_path / "outputs" / "baselines" / "learning_curve.csv")  # beside the first input, a run
    assert list(curve["n_train"]) == [40, 80] and set(curve["method"]) == {"tfidf"}
    assert main([*data, "data.n_train=80", "--n-train", "40", "--out", str(tmp_path / "both")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "give the training size once" in lines[0] and not (tmp_path / "both").exists()


def test_the_baseline_folder_follows_the_run_rules(tmp_path, capsys):
    from .conftest import write_reviews

    reviews = write_reviews(tmp_path / "r.csv", n=80)
    data = ["data=csv", f"data.path={reviews}", "data.n_val=20", "data.n_test=20"]
    main, out = baseline_main(), tmp_path / "base"
    assert main([*data, "--out", str(out)]) == 0
    capsys.readouterr()

    def files(folder):
        return {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()}

    kept = files(out)
    assert main([*data, "--out", str(out)]) == 0  # the same configuration: nothing to do
    assert f"{out} already holds this configuration's baseline" in capsys.readouterr().err and files(out) == kept
    assert main([*data, "data.n_train=40", "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: --out {out}: holds a TF-IDF baseline of another configuration (data.n_train None -> 40), and a run "
        f"is never overwritten; choose another --out, or move {out} aside"
    )
    assert files(out) == kept

    run_dir = tmp_path / "run"  # a training run's directory, and a file, are no baseline folders either
    run_dir.mkdir()
    (run_dir / "metrics.json").write_text(json.dumps({"status": "complete", "test": {"accuracy": 0.9}}))
    (tmp_path / "file").write_text("mine")
    cases = {
        run_dir: f"--out {run_dir}: holds a training run (status 'complete'), which is never rewritten",
        run_dir / "sub": f"--out {run_dir / 'sub'}: is inside the run directory {run_dir}",
        tmp_path / "file": f"--out {tmp_path / 'file'}: {tmp_path / 'file'} is a file, not a folder",
    }
    for target, expected in cases.items():
        assert main([*data, "--out", str(target)]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {expected}"), lines
    assert sorted(path.name for path in run_dir.iterdir()) == ["metrics.json"]
    assert (tmp_path / "file").read_text() == "mine"


def test_a_peft_methods_point_label_shows_its_size_as_an_integer():
    row = pd.Series({"method": "hra", "rank": 8.0, "targets": "q+v"})  # a pandas column of sizes holds floats
    assert point_label(row) == "HRA rank=8"
