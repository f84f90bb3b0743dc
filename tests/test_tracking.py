"""The logger group (tensorboard, mlflow, many): what a run logs, read back with each backend's own reader and
compared with the run's metrics.json; statuses of pruned and failed runs; a sweep's trials in one experiment.

Tests that need the `track` extra skip without it; CI installs it."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import optuna
import pytest

from sentiment_lora import tracking
from sentiment_lora.errors import UserError
from sentiment_lora.run import train
from sentiment_lora.rundir.files import write_json_atomic
from sentiment_lora.rundir.record import config_id, read_metrics
from sentiment_lora.train import cli

from .conftest import REPO, TINY_FAST, compose_config, run_cli, write_reviews

HISTORY_KEYS = ("train_loss", "val_accuracy", "val_loss", "train_time_s", "train_samples_per_s", "time_s")


@pytest.fixture
def run_env(tmp_path, monkeypatch):
    """A working directory with reviews.csv and a run directory, run/; relative logger paths land under it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    write_reviews(tmp_path / "reviews.csv", n=60)
    (tmp_path / "run").mkdir()
    return tmp_path


def tiny(*overrides: str):
    return compose_config([*TINY_FAST, "data=csv", "data.path=reviews.csv", *overrides])


class StopAfterFirstEpoch:
    """A pruner's epoch hook in miniature, remembering how tracking.tracked told it the run ended."""

    def __call__(self, epoch, val, entry=None):
        return True

    def stopped(self):
        return optuna.TrialPruned("stopped after epoch 1")

    def finish(self, status, record):
        self.finished = (status, record)


# ---- the config group: no extra needed ----


@pytest.mark.parametrize("option, backends", [("tensorboard", {"tensorboard"}), ("mlflow", {"mlflow"}),
                                             ("many", {"tensorboard", "mlflow"})])  # fmt: skip
def test_each_logger_option_composes_against_the_schema(option, backends):
    logger = compose_config([f"logger={option}"]).logger
    assert {name for name in ("tensorboard", "mlflow") if logger[name] is not None} == backends
    assert logger.experiment is None
    if "tensorboard" in backends:
        assert logger.tensorboard.dir == "outputs/tensorboard"
    if "mlflow" in backends:
        assert logger.mlflow.tracking_uri == "sqlite:///outputs/mlflow.db"


def test_logging_does_not_change_the_config_id():
    assert config_id(compose_config(["logger=many", "logger.experiment=x"])) == config_id(compose_config([]))


def test_logging_is_off_by_default_and_a_misspelt_key_is_rejected():
    from hydra.errors import ConfigCompositionException

    assert compose_config([]).logger is None
    assert tracking.open_loggers(compose_config([]), Path("unused")) == []
    with pytest.raises(ConfigCompositionException, match="trackinguri"):
        compose_config(["logger=mlflow", "logger.mlflow.trackinguri=x"])


def test_the_entry_point_imports_no_backend():
    code = ("import sys, sentiment_lora.train; "
            "print(sorted(m for m in ('mlflow', 'tensorboard', 'optuna_dashboard') if m in sys.modules))")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("option, module", [("tensorboard", "tensorboard"), ("mlflow", "mlflow")])
def test_a_logger_without_its_extra_is_one_error_line_and_leaves_no_run(monkeypatch, capsys, run_env, option, module):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if the extra were not installed
    monkeypatch.setattr(sys, "argv", ["sentiment_lora.train", *TINY_FAST, "data=csv", "data.path=reviews.csv",
                                      f"logger={option}"])  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        cli()
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert exit_info.value.code == 2
    assert lines == [f"error: logger={option} needs the track extra: pip install -e '.[track]' "
                     f"(import of {module} halted; None in sys.modules)"]  # fmt: skip
    runs = run_env / "outputs" / "runs"
    assert not runs.exists() or not any(runs.iterdir()), "the failed run left a directory behind"


def tracking_cli(monkeypatch, capsys, uri: str) -> tuple[int, list[str]]:
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # an unreachable server: fail at once
    monkeypatch.setattr(sys, "argv", ["sentiment_lora.train", *TINY_FAST, "data=csv", "data.path=reviews.csv",
                                      "logger=mlflow", f"logger.mlflow.tracking_uri={uri}"])  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        cli()
    return exit_info.value.code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_a_password_written_in_the_tracking_uri_is_refused_in_one_line_and_leaves_no_run(monkeypatch, capsys, run_env):
    code, lines = tracking_cli(monkeypatch, capsys, "http://me:Pa55word@127.0.0.1:1")
    assert code == 2 and lines == [
        "error: config logger.mlflow.tracking_uri: http://me:***@127.0.0.1:1 holds a password, which Hydra saves in "
        "the run's .hydra/ files; drop it from the URI and set MLFLOW_TRACKING_PASSWORD (an MLflow server) or "
        "PGPASSWORD or ~/.pgpass (a PostgreSQL store), or give the URI as ${oc.env:VAR} (docs/tracking.md)"
    ]
    runs = run_env / "outputs" / "runs"
    assert not runs.exists() or not any(runs.iterdir()), "the refused run left a directory behind"


def test_a_tracking_uri_from_the_environment_is_masked_in_params_and_errors(monkeypatch, capsys, run_env):
    monkeypatch.setenv("SLORA_TEST_TRACKING_URI", "http://me:Pa55word@127.0.0.1:1")
    params = tracking.flat_params(tiny("logger=mlflow", "logger.mlflow.tracking_uri=${oc.env:SLORA_TEST_TRACKING_URI}"))
    assert params["logger.mlflow.tracking_uri"] == "http://me:***@127.0.0.1:1"
    code, lines = tracking_cli(monkeypatch, capsys, "${oc.env:SLORA_TEST_TRACKING_URI}")
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: config logger.mlflow.tracking_uri: cannot log to http://me:***@127.0.0.1:1: ")
    assert "Pa55word" not in lines[0]


def test_a_resumed_run_logs_the_epochs_before_its_checkpoint_at_the_end(tmp_path):
    class Recorder:
        def __init__(self):
            self.epochs, self.finished = [], None

        def log_epoch(self, epoch, metrics):
            self.epochs.append((epoch, metrics))

        def finish(self, status, final, step, error):
            self.finished = (status, final, step, error)

    history = [{"epoch": e, "train_loss": 1.0 / e, "val_accuracy": 0.5 + e / 10, "val_loss": 0.7} for e in (1, 2, 3)]
    test = {"accuracy": 0.75, "roc_auc": float("nan"), "n": 8}
    record = {"status": "complete", "history": history, "epochs_run": 3, "val": {"accuracy": 0.8, "epoch": 3},
              "test": test, "params": {"trainable": 10, "total": 100}}  # fmt: skip
    write_json_atomic(tmp_path / "metrics.json", record)
    recorder = Recorder()
    hook = tracking.RunHook(None, [recorder])
    assert hook(3, {"accuracy": 0.8, "loss": 0.7, "f1": 0.5, "n": 8}, history[2]) is False  # the one live epoch
    hook.finish(tmp_path, "complete")
    assert [epoch for epoch, _ in recorder.epochs] == [3, 1, 2]
    assert recorder.epochs[0][1] == {"epoch/val_accuracy": 0.8, "epoch/val_loss": 0.7, "epoch/val_f1": 0.5,
                                     "epoch/train_loss": 1 / 3}  # fmt: skip
    status, final, step, error = recorder.finished
    assert (status, step, error) == ("complete", 3, None)
    # The undefined ROC AUC (null in metrics.json) is left out, as is the test set's size.
    assert final == {"selected_epoch": 3, "test/accuracy": 0.75, "val/accuracy": 0.8, "params/trainable": 10,
                     "params/total": 100, "epochs_run": 3}  # fmt: skip


# ---- the backends, read back ----


def test_tensorboard_scalars_per_epoch_and_final_equal_metrics_json(run_env):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(tiny("logger=tensorboard", "trainer.epochs=3"), run_env / "run")
    record = read_metrics(run_env / "run")
    events = EventAccumulator(str(run_env / "outputs" / "tensorboard" / "sentiment-lora" / "run"))
    events.Reload()
    for key in HISTORY_KEYS:
        scalars = events.Scalars(f"epoch/{key}")
        assert [s.step for s in scalars] == [1, 2, 3]
        assert [s.value for s in scalars] == pytest.approx([e[key] for e in record["history"]], rel=1e-6)  # float32
    for key in ("accuracy", "f1", "roc_auc", "loss"):
        (final,) = events.Scalars(f"test/{key}")
        assert (final.step, final.value) == (3, pytest.approx(record["test"][key], rel=1e-6))
    assert events.Scalars("selected_epoch")[0].value == record["val"]["epoch"]
    assert events.Scalars("params/trainable")[0].value == record["params"]["trainable"]
    assert events.Scalars("params/lora")[0].value == record["params"]["by_group"]["lora"]
    texts = {tag: events.Tensors(tag)[0].tensor_proto.string_val[0].decode() for tag in events.Tags()["tensors"]
             if tag.endswith("/text_summary")}  # fmt: skip
    assert texts["status/text_summary"] == "complete"
    assert "    lora.rank: 4" in texts["config/text_summary"].splitlines()
    assert set(events.PluginTagToContent("hparams")) >= {"_hparams_/session_start_info", "_hparams_/experiment"}


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory):
    """One SQLite store for the module's MLflow tests (creating MLflow's tables takes seconds); each test logs to
    an experiment of its own."""
    pytest.importorskip("mlflow")
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


def mlflow_runs(store: str, experiment: str) -> list:
    from mlflow.tracking import MlflowClient

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*noload.*", category=DeprecationWarning)  # as MlflowLogger does
        client = MlflowClient(store)
        found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id], order_by=["attributes.run_name"]) if found else []


def test_mlflow_run_has_the_config_epochs_final_metrics_and_status_of_metrics_json(run_env, mlflow_store):
    from mlflow.tracking import MlflowClient

    logger = ["logger=mlflow", f"logger.mlflow.tracking_uri={mlflow_store}", "logger.experiment=complete"]
    train(tiny(*logger, "lora.rank=2"), run_env / "run")
    record = read_metrics(run_env / "run")
    (run,) = mlflow_runs(mlflow_store, "complete")
    assert (run.info.run_name, run.info.status) == ("run", "FINISHED")
    assert run.data.tags["status"] == "complete" and run.data.tags["run_dir"] == str(run_env / "run")
    assert run.data.tags["config_id"] == record["config_id"]
    params = run.data.params
    assert (params["lora.rank"], params["lora.targets"], params["model.name"]) == ("2", '["q", "v"]', "tiny")
    assert params["optimizer.lr"] == "0.01" and params["trainer.progress"] == "false"
    client = MlflowClient(mlflow_store)
    for key in HISTORY_KEYS:
        history = client.get_metric_history(run.info.run_id, f"epoch/{key}")
        assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [
            (e["epoch"], e[key]) for e in record["history"]]  # fmt: skip
    metrics = run.data.metrics
    assert {key: metrics[f"test/{key}"] for key in ("accuracy", "f1", "roc_auc")} == {
        key: record["test"][key] for key in ("accuracy", "f1", "roc_auc")}  # fmt: skip
    assert metrics["val/accuracy"] == record["val"]["accuracy"] and metrics["selected_epoch"] == record["val"]["epoch"]
    assert metrics["params/trainable"] == record["params"]["trainable"]
    assert metrics["params/total"] == record["params"]["total"]
    assert metrics["params/lora"] == record["params"]["by_group"]["lora"]
    assert metrics["params/head"] == record["params"]["by_group"]["head"]


def test_a_pruned_run_is_killed_with_its_status_and_the_hook_hears_its_record(run_env, mlflow_store):
    logger = ["logger=mlflow", f"logger.mlflow.tracking_uri={mlflow_store}", "logger.experiment=pruned"]
    hook = StopAfterFirstEpoch()
    with pytest.raises(optuna.TrialPruned):
        train(tiny(*logger, "trainer.epochs=3"), run_env / "run", hook)
    (run,) = mlflow_runs(mlflow_store, "pruned")
    assert (run.info.status, run.data.tags["status"]) == ("KILLED", "pruned")
    assert "test/accuracy" not in run.data.metrics and run.data.metrics["epochs_run"] == 1
    status, record = hook.finished
    assert status == "pruned" and record == read_metrics(run_env / "run") and record["status"] == "pruned"
    assert run.data.metrics["params/trainable"] == record["params"]["trainable"]


def test_a_failed_run_is_failed_with_its_error(run_env, mlflow_store):
    logger = ["logger=mlflow", f"logger.mlflow.tracking_uri={mlflow_store}", "logger.experiment=failed"]
    with pytest.raises(UserError, match="max_length"):
        train(tiny(*logger, "trainer.max_length=1000"), run_env / "run")  # the tiny model has 512 positions
    (run,) = mlflow_runs(mlflow_store, "failed")
    assert (run.info.status, run.data.tags["status"]) == ("FAILED", "failed")
    assert run.data.tags["error"].startswith("UserError: config trainer.max_length: 1000 exceeds")


def test_a_file_store_uri_is_one_config_line(run_env):
    pytest.importorskip("mlflow")
    with pytest.raises(UserError, match=r"^config logger.mlflow.tracking_uri: cannot log to file:./mlruns: "):
        train(tiny("logger=mlflow", "logger.mlflow.tracking_uri=file:./mlruns"), run_env / "run")


@pytest.mark.slow
def test_a_sweep_logs_one_run_per_trial_in_one_experiment_and_trial_outcomes(run_env, monkeypatch):
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    storage = f"sqlite:///{run_env}/study.db"
    monkeypatch.setattr(sys, "argv", [
        "sentiment_lora.train", "-m", *TINY_FAST, "data=csv", "data.path=reviews.csv", "hparams_search=lora_optuna",
        f"hydra.sweeper.storage={storage}", "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={run_env}/sweep",
        "logger=many"])  # fmt: skip
    try:
        cli()
    except SystemExit as exit_info:
        assert not exit_info.code
    study = optuna.load_study(study_name="lora_optuna", storage=storage)
    runs = mlflow_runs(f"sqlite:///{run_env}/outputs/mlflow.db", "lora_optuna")
    assert [run.info.run_name for run in runs] == ["trial_0", "trial_1"]
    for trial, run in zip(study.trials, runs, strict=True):
        record = read_metrics(Path(trial.user_attrs["run_dir"]))
        assert trial.state == optuna.trial.TrialState.COMPLETE and run.info.status == "FINISHED"
        assert run.data.tags["trial_number"] == str(trial.number)
        assert run.data.params["lora.rank"] == str(trial.params["lora.rank"])
        assert run.data.metrics["test/accuracy"] == record["test"]["accuracy"]
        # What optuna-dashboard shows beside the parameters.
        assert trial.user_attrs["trainable_params"] == record["params"]["trainable"]
        assert trial.user_attrs["test_accuracy"] == record["test"]["accuracy"]
        assert trial.user_attrs["selected_epoch"] == record["val"]["epoch"]
        json.dumps(trial.user_attrs, allow_nan=False)
        events = EventAccumulator(str(run_env / "outputs" / "tensorboard" / "lora_optuna" / f"trial_{trial.number}"))
        events.Reload()
        assert [s.value for s in events.Scalars("epoch/val_accuracy")] == pytest.approx(
            list(trial.intermediate_values.values()), rel=1e-6)  # fmt: skip
    assert study.metric_names == ["val_accuracy"]


@pytest.mark.slow
def test_parallel_trials_share_a_new_mlflow_database(run_env):
    # Two joblib workers open a store that does not exist yet: without a lock, both create MLflow's tables and one
    # trial fails ("duplicate column name").
    pytest.importorskip("mlflow")
    args = ["-m", *TINY_FAST, "trainer.epochs=1", "data=csv", "data.path=reviews.csv", "hparams_search=lora_optuna",
            f"hydra.sweeper.storage=sqlite:///{run_env}/study.db", "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2",
            "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={run_env}/sweep",
            "logger=mlflow"]  # fmt: skip
    done = run_cli(args, cwd=run_env)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = mlflow_runs(f"sqlite:///{run_env}/outputs/mlflow.db", "lora_optuna")
    assert sorted((run.info.run_name, run.info.status) for run in runs) == [("trial_0", "FINISHED"),
                                                                             ("trial_1", "FINISHED")]  # fmt: skip
