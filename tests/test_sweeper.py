"""The lora_optuna sweeper against a dummy task, in milliseconds (as Hydra's own plugin tests do): what a job
returns, raises or prunes becomes the trial's state; a persistent study resumes up to n_trials in total; the
job-side hook reports epochs and is pruned."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from sentiment_lora.trial import reporter_for

CONFIG = {"calling_file": __file__, "calling_module": None, "config_path": "sweeper_conf", "config_name": "dummy"}


def dummy_task(cfg) -> float:
    if cfg.outcome == "raise":
        raise ValueError(f"x={cfg.x} is bad")
    if cfg.outcome == "prune":
        raise optuna.TrialPruned("stopped early")
    if cfg.outcome == "report":  # the job-side hook, as the training loop uses it after each epoch
        hook = reporter_for(cfg, Path.cwd())
        for epoch in (1, 2, 3):
            if hook(epoch, {"accuracy": 0.1 * epoch, "loss": 1.0}):
                raise hook.stopped()
    return float(cfg.x)


def sweep(runner, tmp_path: Path, *overrides: str) -> optuna.Study:
    storage = f"sqlite:///{tmp_path}/study.db"
    with runner(**CONFIG, task_function=dummy_task, temp_dir=tmp_path / "sweep",
                overrides=[f"hydra.sweeper.storage={storage}", *overrides]):  # fmt: skip
        pass
    return optuna.load_study(study_name="dummy", storage=storage)


def test_returned_values_become_complete_trials(hydra_sweep_runner, tmp_path):
    study = sweep(hydra_sweep_runner, tmp_path)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    assert all(t.value == t.params["x"] for t in study.trials)
    assert study.best_value == max(t.params["x"] for t in study.trials)


def test_a_raising_job_becomes_a_failed_trial_with_its_error_and_the_sweep_goes_on(hydra_sweep_runner, tmp_path):
    study = sweep(hydra_sweep_runner, tmp_path, "outcome=raise")
    assert [t.state for t in study.trials] == [TrialState.FAIL] * 3
    assert all(t.user_attrs["error"] == f"ValueError: x={t.params['x']} is bad" for t in study.trials)


def test_too_many_failures_stop_the_sweep(hydra_sweep_runner, tmp_path):
    with pytest.raises(RuntimeError, match="max_failure_rate"):
        sweep(hydra_sweep_runner, tmp_path, "outcome=raise", "hydra.sweeper.max_failure_rate=0.5")


def test_a_pruned_job_becomes_a_pruned_trial(hydra_sweep_runner, tmp_path):
    study = sweep(hydra_sweep_runner, tmp_path, "outcome=prune")
    assert [t.state for t in study.trials] == [TrialState.PRUNED] * 3


def test_a_persistent_study_resumes_up_to_n_trials_in_total(hydra_sweep_runner, tmp_path):
    first = sweep(hydra_sweep_runner, tmp_path, "hydra.sweeper.n_trials=2")
    kept = {t.number: t.params for t in first.trials}
    study = sweep(hydra_sweep_runner, tmp_path, "hydra.sweeper.n_trials=4")
    assert [t.number for t in study.trials] == [0, 1, 2, 3]
    assert {n: study.trials[n].params for n in kept} == kept
    assert len(sweep(hydra_sweep_runner, tmp_path, "hydra.sweeper.n_trials=4").trials) == 4


def test_the_job_side_hook_reports_each_epoch_and_is_pruned(hydra_sweep_runner, tmp_path):
    prune_below_one = ["hydra/sweeper/pruner=threshold", "hydra.sweeper.pruner.lower=1.0"]
    study = sweep(hydra_sweep_runner, tmp_path, "outcome=report", *prune_below_one)
    for trial in study.trials:
        assert trial.state == TrialState.PRUNED
        assert trial.intermediate_values == {1: pytest.approx(0.1)}
        assert Path(trial.user_attrs["run_dir"]).is_dir()
