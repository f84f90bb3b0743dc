"""No password reaches a file the harness writes or a line it prints: a PostgreSQL-backed sweep whose storage URL
holds one (and whose MLflow store's does, through ${oc.env:...}), then predict --storage, export and summarize
--storage, with every file under the working folder and every line of output searched for it. The masking helpers
are checked on their own too."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from omegaconf import OmegaConf

from sentiment_lora import credentials

from .conftest import REPO, write_reviews


def test_masking_helpers_hide_every_form_of_the_password():
    url = "postgresql+psycopg://me:p%40ss@db.example:5432/optuna?sslmode=require"
    assert credentials.password_of(url) == "p@ss"
    assert credentials.masked(url) == "postgresql+psycopg://me:***@db.example:5432/optuna?sslmode=require"
    assert credentials.without_password(url) == "postgresql+psycopg://me@db.example:5432/optuna?sslmode=require"
    assert credentials.masked("sqlite:///outputs/optuna/x.db") == "sqlite:///outputs/optuna/x.db"
    assert credentials.masked("not a url") == "not a url" and credentials.masked(3) == 3
    message = f"could not connect to {url}: password p@ss (p%40ss) rejected"
    assert credentials.redacted(message, url) == (
        "could not connect to postgresql+psycopg://me:***@db.example:5432/optuna?sslmode=require: password *** (***) "
        "rejected"
    )
    assert credentials.masked_override("a.uri='http://u:pw@h:5000/x'") == "a.uri=http://u:***@h:5000/x"
    assert credentials.masked_override("lora.rank=4") == "lora.rank=4"
    assert credentials.masked_values({"a": ["http://u:pw@h"], "b": 1}) == {"a": ["http://u:***@h"], "b": 1}


def _env(**extra: str) -> dict[str, str]:
    """The test's environment without PGPASSWORD: the password must come from where each command is given it."""
    env = {key: value for key, value in os.environ.items() if key not in ("PGPASSWORD", "PGPASSFILE")}
    return {**env, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **extra}


def _run(args: list, cwd: Path, env: dict, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env, input=stdin, capture_output=True,
                          text=True, timeout=600)  # fmt: skip


def _sweep(tmp_path: Path, env: dict, storage: str, n_trials: int) -> subprocess.CompletedProcess:
    return _run(["-m", "sentiment_lora.train", "-m", "hparams_search=lora_optuna", "model=tiny", "data=csv",
                 "data.path=reviews.csv", "trainer.epochs=1", "trainer.max_length=32", "trainer.progress=false",
                 f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=secret",
                 f"hydra.sweeper.n_trials={n_trials}", f"hydra.sweep.dir={tmp_path}/sweep", "logger=many",
                 "logger.tensorboard.dir=tensorboard", "logger.mlflow.tracking_uri=${oc.env:SLORA_TEST_MLFLOW_URI}"],
                tmp_path, env)  # fmt: skip


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_no_file_written_and_no_line_printed_holds_the_password(postgres, tmp_path):
    pytest.importorskip("psycopg")
    pytest.importorskip("mlflow")
    pytest.importorskip("tensorboard")
    secret, storage = postgres.password, postgres.password_url()
    bare = f"postgresql://slora@127.0.0.1:{postgres.port}/slora"
    write_reviews(tmp_path / "reviews.csv", n=60)
    env = _env(SLORA_TEST_MLFLOW_URI=postgres.password_url("slora_mlflow"), SLORA_TEST_DB_URL=storage)
    done: list[subprocess.CompletedProcess] = []

    def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
        done.append(result)
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
        return result

    # A sweep with the password in its storage URL: the jobs reopen their trials (they record run_dir) from the
    # URL without it, which is what their saved configs hold; the results file shows it masked.
    ok(_sweep(tmp_path, env, storage, 2))
    trials = optuna.load_study(study_name="secret", storage=storage).trials
    assert len(trials) == 2 and all(Path(t.user_attrs["run_dir"]).is_dir() for t in trials)
    saved = OmegaConf.load(tmp_path / "sweep" / "trial_0" / ".hydra" / "hydra.yaml").hydra
    assert saved.sweeper.storage == bare and f"hydra.sweeper.storage='{bare}'" in saved.overrides.hydra
    results = OmegaConf.load(tmp_path / "sweep" / "optimization_results.yaml")
    assert results.storage == f"postgresql://slora:***@127.0.0.1:{postgres.port}/slora"
    # The same study continued with the URL from the environment: Hydra saves the interpolation unresolved.
    ok(_sweep(tmp_path, env, "${oc.env:SLORA_TEST_DB_URL}", 3))
    saved = OmegaConf.load(tmp_path / "sweep" / "trial_2" / ".hydra" / "hydra.yaml").hydra
    assert OmegaConf.to_container(saved.sweeper)["storage"] == "${oc.env:SLORA_TEST_DB_URL}"
    task = OmegaConf.load(tmp_path / "sweep" / "trial_2" / ".hydra" / "config.yaml")
    assert OmegaConf.to_container(task.logger.mlflow)["tracking_uri"] == "${oc.env:SLORA_TEST_MLFLOW_URI}"
    assert OmegaConf.load(tmp_path / "sweep" / "optimization_results.yaml").storage == results.storage

    # Using the study: predict, export, summarize; and the errors that name the storage.
    scored = ok(_run(["-m", "sentiment_lora.predict", "--storage", storage, "--study", "secret"], tmp_path, env,
                     "a wonderful film\n"))  # fmt: skip
    assert scored.stdout.startswith("row,text_prefix,prob,prediction")
    best = optuna.load_study(study_name="secret", storage=storage).best_trial.user_attrs["run_dir"]
    ok(_run(["-m", "sentiment_lora.export", best, tmp_path / "exported"], tmp_path, env))
    ok(_run([REPO / "scripts" / "summarize.py", "--storage", storage, "--study", "secret", "--csv",
             tmp_path / "summary" / "summary.csv"], tmp_path, env))  # fmt: skip
    for args, expected in (
        (["--storage", storage, "--study", "nope"], "error: --study nope: no such study in postgresql://slora:***@"),
        (["--storage", storage.replace(secret, secret + "x"), "--study", "secret"],
         "error: --storage postgresql://slora:***@"),
    ):  # fmt: skip
        refused = _run(["-m", "sentiment_lora.predict", *args], tmp_path, env, "fine\n")
        done.append(refused)
        assert refused.returncode == 2 and refused.stderr.startswith(expected), refused.stderr
    # The ways docs/sweeps.md gives to keep the password out of the URL: libpq reads PGPASSWORD and ~/.pgpass.
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"127.0.0.1:{postgres.port}:*:slora:{secret}\n")
    pgpass.chmod(0o600)
    for extra in ({"PGPASSWORD": secret}, {"PGPASSFILE": str(pgpass)}):
        done.append(_run(["-m", "sentiment_lora.predict", "--storage", bare, "--study", "secret"], tmp_path,
                         {**env, **extra}, "a wonderful film\n"))  # fmt: skip
        assert done[-1].returncode == 0 and done[-1].stdout == scored.stdout, done[-1].stderr
    pgpass.unlink()  # the one file here that holds the password on purpose

    # MLflow logged each trial's config with the store's URI masked.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(postgres.password_url("slora_mlflow"))
    runs = client.search_runs([client.get_experiment_by_name("secret").experiment_id])
    assert len(runs) == 3
    masked_store = f"postgresql://slora:***@127.0.0.1:{postgres.port}/slora_mlflow"
    for run in runs:
        assert run.data.params["logger.mlflow.tracking_uri"] == masked_store
        assert not [value for value in (*run.data.params.values(), *run.data.tags.values()) if secret in value]

    leaked = [path for path in tmp_path.rglob("*") if path.is_file() and secret.encode() in path.read_bytes()]
    assert leaked == []
    assert (tmp_path / "exported" / "README.md").is_file() and any((tmp_path / "tensorboard").rglob("events.*"))
    lines = [line for result in done for line in (result.stdout + result.stderr).splitlines()]
    assert [line for line in lines if secret in line] == []
