"""Configuration tables from hand-made runs: replicates grouped, paired tests against the best (chosen on
validation) and the reference, Holm's correction, and different evaluation sets never ranked together."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sentiment_lora.analysis.ranking import rank

LABELS = np.array([1, 0] * 50)  # 100 test reviews


def make_run(tmp_path, name, correct, **fields) -> dict:
    """A run directory holding only test_predictions.csv whose correctness is `correct`, plus its table row."""
    run = tmp_path / name
    run.mkdir()
    correct = np.asarray(correct)
    predictions = np.where(correct == 1, LABELS, 1 - LABELS)
    pd.DataFrame({"label": LABELS, "prob": predictions * 0.8 + 0.1, "prediction": predictions}).to_csv(
        run / "test_predictions.csv", index_label="row"
    )
    row = {
        "run": str(run),
        "state": "complete",
        "eval_fingerprint": "E1",
        "model": "tiny",
        "targets": "q+v",
        "rank": 4,
        "alpha": 16,
        "trainable": 100,
        "test_acc": correct.mean(),
        "test_low": 0.0,
        "test_high": 1.0,
    }
    return row | fields  # fmt: skip


def correct_with(only_first: int, only_second: int, both: int = 80) -> tuple[np.ndarray, np.ndarray]:
    neither = 100 - both - only_first - only_second
    first = [1] * both + [1] * only_first + [0] * only_second + [0] * neither
    second = [1] * both + [0] * only_first + [1] * only_second + [0] * neither
    return np.array(first), np.array(second)


def test_one_seed_each_mcnemar_against_the_validation_best_with_holm(tmp_path):
    a, b = correct_with(only_first=10, only_second=2)
    c = a.copy()
    c[[0, 95]] = 1 - c[[0, 95]]  # one review lost, one gained: no evidence of a difference
    runs = pd.DataFrame([
        make_run(tmp_path, "a", a, config_id="A", val_acc=0.90, trainable=300),
        make_run(tmp_path, "b", b, config_id="B", val_acc=0.80, trainable=100),
        make_run(tmp_path, "c", c, config_id="C", val_acc=0.85, trainable=200),
    ])  # fmt: skip
    (fingerprint, table), *_ = rank(runs)[0]
    table = table.set_index("config")
    assert fingerprint == "E1" and table.loc["A", "best"] and table.loc["A", "seeds"] == 1
    assert table.loc["B", "vs_best_diff"] == pytest.approx(-0.08)
    # Raw exact McNemar p: 2 * (1 + 12 + 66) / 4096 for B (10 vs 2 discordant), 1.0 for C (1 vs 1);
    # Holm multiplies the smaller by 2 and keeps the larger at least as large.
    assert table.loc["B", "vs_best_p"] == pytest.approx(2 * 2 * 79 / 4096)
    assert table.loc["C", "vs_best_p"] == pytest.approx(1.0)
    assert table["tied_with_best"].all()  # after correction neither difference is significant at 0.05
    assert list(table["pareto"]) == [True, True, True]  # A best val, B fewest parameters, C between


def test_replicates_are_one_row_with_mean_sd_and_t_interval(tmp_path):
    good, bad = correct_with(only_first=30, only_second=0, both=60)
    runs = pd.DataFrame([
        *[make_run(tmp_path, f"a{s}", good, config_id="A", val_acc=v) for s, v in ((1, 0.9), (2, 0.92), (3, 0.94))],
        *[make_run(tmp_path, f"b{s}", bad, config_id="B", val_acc=0.6) for s in (1, 2)],
    ])  # fmt: skip
    table = rank(runs)[0][0][1].set_index("config")
    assert table.loc["A", "seeds"] == 3 and table.loc["B", "seeds"] == 2
    assert table.loc["A", "val_acc"] == pytest.approx(0.92) and table.loc["A", "test_acc"] == pytest.approx(0.9)
    assert table.loc["A", "test_sd"] == 0 and table.loc["A", "test_low"] == pytest.approx(0.9)
    assert table.loc["B", "vs_best_diff"] == pytest.approx(-0.3)
    assert table.loc["B", "vs_best_p"] < 0.001 and not table.loc["B", "tied_with_best"]


def test_the_reference_row_is_compared_with_every_configuration(tmp_path):
    a, ref = correct_with(only_first=12, only_second=1)
    runs = pd.DataFrame([
        make_run(tmp_path, "a", a, config_id="A", val_acc=0.9),
        make_run(tmp_path, "ref", ref, config_id=None, val_acc=0.85, state="reference", model="tfidf-logreg"),
    ])  # fmt: skip
    table = rank(runs)[0][0][1]
    assert len(table) == 1 and table.attrs["reference"]["model"] == "tfidf-logreg"
    assert table.loc[0, "vs_reference_diff"] == pytest.approx(0.11)
    assert table.loc[0, "vs_reference_p"] == pytest.approx(2 * 14 / 2**13)  # 2 * P(X <= 1), X ~ Bin(13, 1/2)


def test_runs_on_other_evaluation_sets_get_their_own_table(tmp_path):
    a, b = correct_with(only_first=5, only_second=5)
    runs = pd.DataFrame([
        make_run(tmp_path, "a", a, config_id="A", val_acc=0.9),
        make_run(tmp_path, "b", b, config_id="B", val_acc=0.8),
        make_run(tmp_path, "x", a, config_id="X", val_acc=0.99, eval_fingerprint="E2"),
    ])  # fmt: skip
    tables, notes = rank(runs)
    assert [fingerprint for fingerprint, _ in tables] == ["E1", "E2"]
    assert set(tables[0][1]["config"]) == {"A", "B"} and list(tables[1][1]["config"]) == ["X"]
    assert any("different evaluation sets" in note for note in notes)


def test_effects_pair_configurations_that_differ_only_in_the_key(tmp_path):
    from omegaconf import OmegaConf

    from sentiment_lora.analysis.ranking import effects

    rows = []
    strong, weak = correct_with(only_first=15, only_second=1)
    settings = [  # (targets, scaling, seed, correctness): the scaling matters for q+v only
        ("qv", "standard", 1, weak), ("qv", "rslora", 1, strong),
        ("qv", "standard", 2, weak), ("qv", "rslora", 2, strong),
        ("all", "standard", 1, strong), ("all", "rslora", 1, strong),
        ("head", "rslora", 1, weak),  # nothing to pair it with
    ]  # fmt: skip
    for index, (targets, scaling, seed, correct) in enumerate(settings):
        row = make_run(tmp_path, f"run{index}", correct, targets=targets, variant=scaling, val_acc=0.8)
        cfg = {"lora": {"targets": targets, "scaling": scaling, "rank": 4}, "trainer": {"seed": seed}}
        (tmp_path / f"run{index}" / ".hydra").mkdir()
        OmegaConf.save(OmegaConf.create(cfg), tmp_path / f"run{index}" / ".hydra" / "config.yaml")
        rows.append(row)
    table, notes = effects(pd.DataFrame(rows), "lora.scaling")
    assert len(table) == 2 and not notes
    table = table.set_index("targets")
    assert (table.loc["qv", "value"], table.loc["qv", "baseline"], table.loc["qv", "seeds"]) == (
        "rslora",
        "standard",
        "2 vs 2",
    )
    assert table.loc["qv", "diff"] == pytest.approx(0.14) and table.loc["qv", "supported"]
    assert table.loc["all", "diff"] == 0 and table.loc["all", "p"] == 1 and not table.loc["all", "supported"]
    assert effects(pd.DataFrame(rows), "lora.rank")[0].empty  # every run has rank 4: nothing to compare
