"""The lora_optuna sweeper against a dummy task, in milliseconds (as Hydra's own plugin tests do): what a job
returns, raises or prunes becomes the trial's state; a persistent study resumes up to n_trials in total; the
job-side hook reports epochs and is pruned."""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from sentiment_lora.train import cli
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
    assert study.metric_names == ["val_accuracy"]  # the config's objectives name the study's values (dashboard)


def failed_sweep(runner, tmp_path: Path, capsys, *overrides: str) -> tuple[optuna.Study, list[str]]:
    """A sweep whose trials fail: it ends with exit status 1 and one error line; the study and the stderr lines."""
    with pytest.raises(SystemExit) as exit_info:
        sweep(runner, tmp_path, "outcome=raise", *overrides)
    assert exit_info.value.code == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    # Hydra's own line for each failed job, then the sweep's (log handlers of earlier tests may add noise here).
    assert [line for line in lines if line.startswith("error: ")] == lines[-1:], lines
    return optuna.load_study(study_name="dummy", storage=f"sqlite:///{tmp_path}/study.db"), lines


def test_a_raising_job_becomes_a_failed_trial_with_its_error_and_the_sweep_goes_on(hydra_sweep_runner, tmp_path):
    study = sweep(hydra_sweep_runner, tmp_path, "outcome=raise")  # max_failure_rate=1.0: every failure tolerated
    assert [t.state for t in study.trials] == [TrialState.FAIL] * 3
    assert all(t.user_attrs["error"] == f"ValueError: x={t.params['x']} is bad" for t in study.trials)


def test_too_many_failures_stop_the_sweep_with_one_line(hydra_sweep_runner, tmp_path, capsys):
    study, lines = failed_sweep(hydra_sweep_runner, tmp_path, capsys, "hydra.sweeper.max_failure_rate=0.5")
    assert [t.state for t in study.trials] == [TrialState.FAIL]  # stopped at the first: 1 of 1 is above 0.5
    assert lines[-1].startswith(
        "error: sweep stopped: 1 of 1 trials failed, above hydra.sweeper.max_failure_rate=0.5; each FAIL trial's "
        "error is in its 'error' user attribute (study 'dummy' in sqlite:///"
    ), lines


@pytest.mark.parametrize("value", [0, -3])
def test_n_trials_below_one_is_one_error_line_before_any_study_is_made(hydra_sweep_runner, tmp_path, capsys, value):
    with pytest.raises(SystemExit) as exit_info:
        sweep(hydra_sweep_runner, tmp_path, f"hydra.sweeper.n_trials={value}")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: config hydra.sweeper.n_trials: must be 1 or more, got {value}"
    ]
    assert not (tmp_path / "study.db").exists() or optuna.get_all_study_names(f"sqlite:///{tmp_path}/study.db") == []


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


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_a_resumed_study_draws_new_parameters_reproducibly_from_the_seed_and_trial_number(
    hydra_sweep_runner, tmp_path, sampler
):
    # A continuous x: two trials can share a value only if the sampler's random sequence repeats.
    space = [f"hydra/sweeper/sampler={sampler}", "hydra.sweeper.sampler.seed=0", "x=interval(0,1)"]
    sweep(hydra_sweep_runner, tmp_path / "resumed", "hydra.sweeper.n_trials=2", *space)
    resumed = [t.params["x"] for t in sweep(hydra_sweep_runner, tmp_path / "resumed", "hydra.sweeper.n_trials=5",
                                            *space).trials]  # fmt: skip
    assert len(set(resumed)) == 5
    # In the random (start-up) phase, a trial's parameters depend on the seed and its number alone.
    in_one_go = sweep(hydra_sweep_runner, tmp_path / "one_go", "hydra.sweeper.n_trials=5", *space)
    assert [t.params["x"] for t in in_one_go.trials] == resumed


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_dead_workers_trial_goes_stale_is_failed_and_retried_with_its_parameters(hydra_sweep_runner, tmp_path):
    beats = ["hydra.sweeper.fail_interrupted=false", "hydra.sweeper.heartbeat_interval=1",
             "hydra.sweeper.grace_period=1", "hydra.sweeper.max_retry=1", "x=interval(0,1)"]  # fmt: skip
    sweep(hydra_sweep_runner, tmp_path, "hydra.sweeper.n_trials=2", *beats)
    # A worker that asked for trial 2, beat once and died.
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/study.db", heartbeat_interval=1)
    dead = optuna.load_study(study_name="dummy", storage=storage).ask()
    lost = dead.suggest_float("x", 0, 1)
    storage.record_heartbeat(dead._trial_id)
    # Its last beat an hour ago by the database's own clock: stale however fast the next sweep starts. A beat
    # recorded now goes stale only once grace_period has passed on the wall clock, so whether the next sweep's
    # first stale check or a later one fails it (and whether the retry is trial 3 or 4) was a race.
    beat = sqlalchemy.table("trial_heartbeats", sqlalchemy.column("trial_id"),
                            sqlalchemy.column("heartbeat", sqlalchemy.DateTime))  # fmt: skip
    with storage.engine.begin() as connection:
        now = connection.execute(sqlalchemy.select(sqlalchemy.func.now())).scalar()
        past = now.replace(tzinfo=None) - datetime.timedelta(hours=1)
        connection.execute(beat.update().where(beat.c.trial_id == dead._trial_id).values(heartbeat=past))

    trials = sweep(hydra_sweep_runner, tmp_path, "hydra.sweeper.n_trials=4", *beats).trials
    # The first stale check fails trial 2 and queues its retry, which runs first (trial 3); then one new trial.
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2 + [TrialState.FAIL] + [TrialState.COMPLETE] * 2
    retry = trials[3]
    assert optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(retry) == 2
    assert retry.params == {"x": lost} and retry.value == lost
    assert optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(trials[4]) is None


@pytest.mark.parametrize("key, value", [("heartbeat_interval", 0), ("grace_period", -1), ("max_retry", -1)])
def test_bad_heartbeat_keys_are_one_error_line(hydra_sweep_runner, tmp_path, capsys, key, value):
    with pytest.raises(SystemExit) as exit_info:
        sweep(hydra_sweep_runner, tmp_path, f"hydra.sweeper.{key}={value}")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith(f"error: config hydra.sweeper.{key}: ")


def cli_sweep(monkeypatch, capsys, tmp_path: Path, *args: str) -> tuple[int, list[str]]:
    """`python -m sentiment_lora.train -m hparams_search=lora_optuna ARGS` in this process, through Hydra's own
    error reporting; returns the exit status and the lines on stderr."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["sentiment_lora.train", "-m", "hparams_search=lora_optuna", "model=tiny", *args])
    with pytest.raises(SystemExit) as exit_info:
        cli()
    return exit_info.value.code, capsys.readouterr().err.splitlines()


@pytest.mark.parametrize(
    "storage",
    ["foo://x", "postgresql://user:secret@127.0.0.1:1/optuna", "sqlite:///{tmp}/reviews.csv", "sqlite:///{tmp}/f/x.db"],
    ids=["unknown-dialect", "unreachable-postgres", "not-a-database", "under-a-file"],
)
def test_a_storage_that_cannot_be_opened_is_one_error_line(monkeypatch, capsys, tmp_path, storage):
    (tmp_path / "reviews.csv").write_text("text,label\nfine,1\n")
    (tmp_path / "f").write_text("a file, not a folder")
    storage = storage.format(tmp=tmp_path)
    code, err = cli_sweep(monkeypatch, capsys, tmp_path, f"hydra.sweeper.storage={storage}")
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: config hydra.sweeper.storage: cannot open {storage.replace('secret', '***')}: ")


def test_a_sweep_directory_that_cannot_be_made_is_one_error_line_and_uses_no_trial(monkeypatch, capsys, tmp_path):
    (tmp_path / "f").write_text("a file, not a folder")
    storage = f"sqlite:///{tmp_path}/study.db"
    code, err = cli_sweep(monkeypatch, capsys, tmp_path, f"hydra.sweeper.storage={storage}",
                          f"hydra.sweep.dir={tmp_path}/f/sweep")  # fmt: skip
    assert code == 2 and err == [f"error: config hydra.sweep.dir: cannot create {tmp_path}/f/sweep: Not a directory"]
    assert optuna.get_all_study_names(storage) == []


@pytest.mark.parametrize(
    "storage, pgpassword, expected",
    [
        ("mysql+pymysql://me:Pa55word@127.0.0.1:1/optuna", None,
         "mysql+pymysql://me:***@127.0.0.1:1/optuna holds a password, which Hydra would save in every trial's "
         ".hydra/hydra.yaml; give the whole URL as ${oc.env:VAR}, which Hydra saves unresolved (docs/sweeps.md)"),
        ("postgresql://me:Pa55word@127.0.0.1:1/optuna", "another",
         "postgresql://me:***@127.0.0.1:1/optuna holds a password other than PGPASSWORD's; keep one: drop it from "
         "the URL (PGPASSWORD or ~/.pgpass gives it), or give the whole URL as ${oc.env:VAR}"),
    ],
    ids=["not-postgresql", "other-pgpassword"],
)  # fmt: skip
def test_a_storage_password_that_cannot_be_kept_out_of_the_saved_configs_is_one_error_line(
    monkeypatch, capsys, tmp_path, storage, pgpassword, expected
):
    if pgpassword:
        monkeypatch.setenv("PGPASSWORD", pgpassword)
    code, err = cli_sweep(monkeypatch, capsys, tmp_path, f"hydra.sweeper.storage={storage}")
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: config hydra.sweeper.storage: {expected}"), err
    assert "Pa55word" not in err[0] and not (tmp_path / "outputs").exists()  # no sweep folder, no study


def test_a_password_in_the_tracking_uri_stops_a_sweep_before_its_study_is_made(monkeypatch, capsys, tmp_path):
    code, err = cli_sweep(monkeypatch, capsys, tmp_path, f"hydra.sweeper.storage=sqlite:///{tmp_path}/study.db",
                          "logger=mlflow", "logger.mlflow.tracking_uri=http://me:Pa55word@127.0.0.1:1")  # fmt: skip
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("error: config logger.mlflow.tracking_uri: http://me:***@127.0.0.1:1 holds a password")
    assert not (tmp_path / "study.db").exists() and not (tmp_path / "outputs").exists()
