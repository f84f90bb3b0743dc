"""Sweeps on tiny random-init models: grid, Optuna presets, resume to exactly n_trials, pruning, failures."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
from omegaconf import OmegaConf

from sentiment_lora.train import cli

from .conftest import REPO, run_cli, write_reviews

TINY = ["model=tiny", "trainer.max_length=32", "trainer.batch_size=16", "trainer.progress=false", "data=csv"]

# Multi-trial sweeps through the real CLI and tiny models: seconds each.
pytestmark = pytest.mark.slow


@pytest.fixture
def sweep_env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    write_reviews(tmp_path / "reviews.csv", n=60)
    return tmp_path


def multirun(monkeypatch, args: list[str]) -> int:
    """`python -m sentiment_lora.train -m ARGS`, in this process; returns the exit code (0 when none)."""
    monkeypatch.setattr(sys, "argv", ["sentiment_lora.train", "-m", *TINY, "data.path=reviews.csv", *args])
    try:
        cli()
    except SystemExit as exit_info:
        return int(exit_info.code or 0)
    return 0


def optuna_args(tmp: Path, preset: str, n_trials: int, *extra: str) -> list[str]:
    return [
        f"hparams_search={preset}",
        f"hydra.sweeper.storage=sqlite:///{tmp}/study.db",
        f"hydra.sweeper.n_trials={n_trials}",
        f"hydra.sweep.dir={tmp}/sweep",
        *extra,
    ]


def run_metrics(sweep_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/metrics.json"))]


def load(tmp: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp}/study.db")


def test_grid_multirun_runs_every_combination(sweep_env, monkeypatch):
    code = multirun(monkeypatch, ["trainer.epochs=1", "lora.rank=1,2", "lora/targets=qv,qkv",
                                  f"hydra.sweep.dir={sweep_env}/grid"])  # fmt: skip
    assert code == 0
    runs = run_metrics(sweep_env / "grid")
    assert sorted((m["lora"]["rank"], "+".join(m["lora"]["targets"])) for m in runs) == [
        (1, "q+k+v"), (1, "q+v"), (2, "q+k+v"), (2, "q+v")]  # fmt: skip
    assert all(m["status"] == "complete" for m in runs)


def test_optuna_preset_links_trials_to_runs_and_reports_epochs(sweep_env, monkeypatch):
    assert multirun(monkeypatch, optuna_args(sweep_env, "lora_optuna", 3, "trainer.epochs=2")) == 0
    study = load(sweep_env, "lora_optuna")
    assert len(study.trials) == 3
    for trial in study.trials:
        assert trial.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        metrics = json.loads((Path(trial.user_attrs["run_dir"]) / "metrics.json").read_text())
        assert metrics["trial"]["number"] == trial.number
        assert metrics["lora"]["rank"] == trial.params["lora.rank"]
        assert "+".join(metrics["lora"]["targets"]) == {
            "qv": "q+v", "qkv": "q+k+v", "qkvo": "q+k+v+output", "attn_ffn": "q+k+v+output+ffn",
            "all": "q+k+v+output+ffn+head"}[trial.params["lora/targets"]]  # fmt: skip
        assert trial.intermediate_values[1] == metrics["history"][0]["val_accuracy"]
        if trial.state == optuna.trial.TrialState.COMPLETE:
            assert trial.value == metrics["val"]["accuracy"]
    results = OmegaConf.load(sweep_env / "sweep" / "optimization_results.yaml")
    assert results.trials.COMPLETE + results.trials.PRUNED == 3
    # The study alone is enough for summarize.py: each trial points at its run directory.
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "summarize.py"), "--storage", f"sqlite:///{sweep_env}/study.db",
         "--study", "lora_optuna", "--csv", str(sweep_env / "t.csv"), "--plot", str(sweep_env / "t.png")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert sorted(pd.read_csv(sweep_env / "t.csv")["trial"]) == [0, 1, 2]


def test_rerunning_continues_the_study_up_to_n_trials_in_total(sweep_env, monkeypatch):
    args = ["trainer.epochs=1"]
    assert multirun(monkeypatch, optuna_args(sweep_env, "lora_optuna", 2, *args)) == 0
    first = {t.number: t.params for t in load(sweep_env, "lora_optuna").trials}
    assert multirun(monkeypatch, optuna_args(sweep_env, "lora_optuna", 5, *args)) == 0
    study = load(sweep_env, "lora_optuna")
    assert [t.number for t in study.trials] == [0, 1, 2, 3, 4]
    assert {n: study.trials[n].params for n in first} == first  # finished trials are kept, not repeated
    assert multirun(monkeypatch, optuna_args(sweep_env, "lora_optuna", 5, *args)) == 0
    assert len(load(sweep_env, "lora_optuna").trials) == 5
    assert len(list((sweep_env / "sweep").glob("*/metrics.json"))) == 5


def test_an_interrupted_trial_is_failed_on_restart_not_waited_for(sweep_env, monkeypatch):
    assert multirun(monkeypatch, optuna_args(sweep_env, "lora_optuna", 1, "trainer.epochs=1")) == 0
    load(sweep_env, "lora_optuna").ask()  # a trial left RUNNING, as by a killed sweep
    assert multirun(monkeypatch, optuna_args(sweep_env, "lora_optuna", 3, "trainer.epochs=1")) == 0
    states = [t.state for t in load(sweep_env, "lora_optuna").trials]
    assert states[1] == optuna.trial.TrialState.FAIL and len(states) == 3


def test_pruned_trials_are_recorded_as_pruned_with_their_last_value(sweep_env, monkeypatch):
    prune_all = "hydra/sweeper/pruner=threshold hydra.sweeper.pruner.lower=1.1"
    assert multirun(monkeypatch, optuna_args(sweep_env, "lora_optuna", 2, "trainer.epochs=3", *prune_all.split())) == 0
    study = load(sweep_env, "lora_optuna")
    for trial in study.trials:
        assert trial.state == optuna.trial.TrialState.PRUNED
        assert list(trial.intermediate_values) == [1]
        metrics = json.loads((Path(trial.user_attrs["run_dir"]) / "metrics.json").read_text())
        assert metrics["status"] == "pruned" and metrics["epochs_run"] == 1
        assert "test" not in metrics  # a pruned run never touches the test split


def test_failing_trials_are_recorded_and_the_sweep_goes_on(sweep_env, monkeypatch):
    args = optuna_args(sweep_env, "lora_optuna", 6, "trainer.epochs=1", "lora.rank=choice(0,4)",
                       "hydra.sweeper.max_failure_rate=1.0")  # fmt: skip
    assert multirun(monkeypatch, args) == 0
    trials = load(sweep_env, "lora_optuna").trials
    assert len(trials) == 6
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert failed and len(failed) < 6  # both kinds occur with this seed
    for trial in trials:
        assert (trial.state == optuna.trial.TrialState.FAIL) == (trial.params["lora.rank"] == 0)
    for trial in failed:
        assert "lora.rank" in trial.user_attrs["error"]
        metrics = json.loads((Path(trial.user_attrs["run_dir"]) / "metrics.json").read_text())
        assert metrics["status"] == "failed" and "lora.rank" in metrics["error"]


def test_too_many_failures_stop_the_sweep(sweep_env, monkeypatch):
    args = optuna_args(sweep_env, "lora_optuna", 4, "trainer.epochs=1", "lora.rank=0",
                       "hydra.sweeper.max_failure_rate=0.5")  # fmt: skip
    assert multirun(monkeypatch, args) != 0
    assert [t.state for t in load(sweep_env, "lora_optuna").trials] == [optuna.trial.TrialState.FAIL]


def test_pareto_preset_returns_accuracy_and_trainable_params(sweep_env, monkeypatch):
    assert multirun(monkeypatch, optuna_args(sweep_env, "lora_pareto", 3, "trainer.epochs=1")) == 0
    study = load(sweep_env, "lora_pareto")
    assert len(study.directions) == 2 and len(study.trials) == 3
    for trial in study.trials:
        metrics = json.loads((Path(trial.user_attrs["run_dir"]) / "metrics.json").read_text())
        assert trial.values == [metrics["val"]["accuracy"], metrics["params"]["trainable"]]
    results = OmegaConf.load(sweep_env / "sweep" / "optimization_results.yaml")
    assert {entry.trial for entry in results.pareto_front} == {t.number for t in study.best_trials}


LAUNCHERS = {
    "basic": [],
    "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
    # The submission path of hydra/launcher=slurm (submitit pickles each job for another process), on one machine.
    "submitit_local": ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"],
}


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_every_launcher_runs_trials_as_a_user_starts_it(sweep_env, launcher):
    args = optuna_args(sweep_env, "lora_optuna", 2, "hydra.sweeper.n_jobs=2", *LAUNCHERS[launcher])
    done = run_cli(["-m", *TINY, "trainer.epochs=1", "data.path=reviews.csv", *args], cwd=sweep_env)
    assert done.returncode == 0, done.stderr[-3000:]
    trials = load(sweep_env, "lora_optuna").trials
    assert len(trials) == 2 and all(1 in t.intermediate_values for t in trials)  # each job reopened its trial
    assert len({t.user_attrs["run_dir"] for t in trials}) == 2
    if launcher == "submitit_local":
        # What a SLURM node would unpickle: the task function by its importable name, not `__main__`'s copy.
        submitted = sorted((sweep_env / "sweep" / ".submitit").glob("*/*_submitted.pkl"))
        task_function = pickle.loads(submitted[0].read_bytes()).function.task_function
        assert task_function.__module__ == "sentiment_lora.train"


def test_grid_sampler_covers_the_grid_once(sweep_env, monkeypatch):
    args = optuna_args(sweep_env, "lora_optuna", 20, "trainer.epochs=1", "hydra/sweeper/sampler=grid",
                       "hydra.sweeper.params=null", "lora.rank=choice(1,2)", "lora/targets=choice(qv,qkv)")  # fmt: skip
    assert multirun(monkeypatch, args) == 0
    trials = load(sweep_env, "lora_optuna").trials
    assert sorted((t.params["lora.rank"], t.params["lora/targets"]) for t in trials) == [
        (1, "qkv"), (1, "qv"), (2, "qkv"), (2, "qv")]  # fmt: skip


def test_a_launcher_failure_leaves_no_trial_running(sweep_env, monkeypatch):
    from hydra._internal.core_plugins.basic_launcher import BasicLauncher

    def broken_launch(self, job_overrides, initial_job_idx):
        raise RuntimeError("cluster unavailable")

    monkeypatch.setattr(BasicLauncher, "launch", broken_launch)
    assert multirun(monkeypatch, optuna_args(sweep_env, "lora_optuna", 3, "trainer.epochs=1")) != 0
    trials = load(sweep_env, "lora_optuna").trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.FAIL]
    assert trials[0].user_attrs["error"] == "launcher: RuntimeError: cluster unavailable"


def test_a_new_study_in_another_studys_sweep_dir_is_refused_before_its_first_trial(sweep_env, monkeypatch, capsys):
    args = optuna_args(sweep_env, "lora_optuna", 1, "trainer.epochs=1")
    assert multirun(monkeypatch, args) == 0
    trial_dir = sweep_env / "sweep" / "trial_0"
    kept = {path.name: path.read_bytes() for path in trial_dir.iterdir() if path.is_file()}
    capsys.readouterr()
    assert multirun(monkeypatch, [*args, "hydra.sweeper.study_name=other"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: config hydra.sweep.dir: {sweep_env}/sweep holds trial folders of another study (trial_0) that study "
        "'other' would overwrite; give this study its own hydra.sweep.dir, or continue the other one with its "
        "hydra.sweeper.storage and study_name"
    ]
    assert optuna.get_all_study_names(f"sqlite:///{sweep_env}/study.db") == ["lora_optuna"]  # "other" not created
    assert {path.name: path.read_bytes() for path in trial_dir.iterdir() if path.is_file()} == kept
    assert load(sweep_env, "lora_optuna").trials[0].user_attrs["run_dir"] == str(trial_dir)
    # The same study, continued into its own folder, still gets new trials.
    assert multirun(monkeypatch, optuna_args(sweep_env, "lora_optuna", 2, "trainer.epochs=1")) == 0
    assert [t.number for t in load(sweep_env, "lora_optuna").trials] == [0, 1]
