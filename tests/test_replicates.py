"""Seed replicates inside an Optuna trial: one run per seed under the trial's directory, the trial's value is the
mean over the seeds, and the pruner sees only the first seed's epochs."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from .test_sweeps import load, multirun, optuna_args, sweep_env  # noqa: F401  (sweep_env is a fixture)

pytestmark = pytest.mark.slow


def test_an_optuna_trial_with_seeds_returns_the_mean_of_its_seed_runs(sweep_env, monkeypatch):  # noqa: F811
    args = optuna_args(sweep_env, "lora_optuna", 2, "trainer.epochs=2", "seeds=[1,2]", "hydra.sweeper.pruner=null")
    assert multirun(monkeypatch, args) == 0
    for trial in load(sweep_env, "lora_optuna").trials:
        run_dir = Path(trial.user_attrs["run_dir"])
        seeds = [json.loads((run_dir / f"seed_{s}" / "metrics.json").read_text()) for s in (1, 2)]
        assert [m["seed"] for m in seeds] == [1, 2]
        assert trial.value == pytest.approx(sum(m["val"]["accuracy"] for m in seeds) / 2)
        assert trial.intermediate_values == {e: seeds[0]["history"][e - 1]["val_accuracy"] for e in (1, 2)}


def test_a_pruned_first_seed_prunes_the_trial_before_the_other_seeds_run(sweep_env, monkeypatch):  # noqa: F811
    prune_all = ["hydra/sweeper/pruner=threshold", "hydra.sweeper.pruner.lower=1.1"]
    args = optuna_args(sweep_env, "lora_optuna", 1, "trainer.epochs=2", "seeds=[1,2]", *prune_all)
    assert multirun(monkeypatch, args) == 0
    (trial,) = load(sweep_env, "lora_optuna").trials
    assert trial.state == optuna.trial.TrialState.PRUNED
    run_dir = Path(trial.user_attrs["run_dir"])
    assert json.loads((run_dir / "seed_1" / "metrics.json").read_text())["status"] == "pruned"
    assert not (run_dir / "seed_2").exists()
