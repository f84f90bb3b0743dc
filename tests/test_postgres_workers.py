"""Scale-out: two worker processes share one Optuna study through a real PostgreSQL server on loopback (and, on
one machine, through SQLite)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.storages import RetryHeartbeatStaleTrialCallback

from .conftest import write_reviews

# A PostgreSQL server and two sweep processes: tens of seconds.
pytestmark = pytest.mark.slow


def worker(storage: str, tmp_path: Path, study: str, n_trials: int, *extra: str, **popen) -> subprocess.Popen:
    """One scale-out worker, started as the docs say: `python -m sentiment_lora.train -m ...`."""
    args = [
        sys.executable, "-m", "sentiment_lora.train", "-m", "hparams_search=lora_optuna",
        "model=tiny", "data=csv", "data.path=reviews.csv", "trainer.epochs=2", "trainer.max_length=32",
        "trainer.progress=false", f"hydra.sweeper.storage={storage}", f"hydra.sweeper.study_name={study}",
        f"hydra.sweeper.n_trials={n_trials}", "hydra.sweeper.n_jobs=1", "hydra.sweeper.fail_interrupted=false",
        f"hydra.sweep.dir={tmp_path}/sweep", *extra,
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(args, cwd=tmp_path, env=env, stderr=subprocess.STDOUT, text=True, **popen)


@pytest.mark.parametrize("database", ["postgresql", "sqlite"])
def test_two_workers_share_one_study_and_stop_at_exactly_n_trials(request, tmp_path, database):
    storage = request.getfixturevalue("postgres_url") if database == "postgresql" else f"sqlite:///{tmp_path}/s.db"
    write_reviews(tmp_path / "reviews.csv", n=60)
    n_trials = 7
    workers = [worker(storage, tmp_path, "shared", n_trials, stdout=subprocess.PIPE) for _ in range(2)]
    outputs = [worker.communicate(timeout=600)[0] for worker in workers]
    for worker_, output in zip(workers, outputs, strict=True):
        assert worker_.returncode == 0, output[-3000:]

    trials = optuna.load_study(study_name="shared", storage=storage).trials
    numbers = [trial.number for trial in trials]
    assert len(trials) == n_trials and sorted(numbers) == list(range(n_trials))  # exact total, no duplicates
    assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in trials)
    # Continuous dropout and learning rate: two workers propose the same configuration only if they share a
    # random sequence.
    assert len({tuple(sorted(t.params.items())) for t in trials}) == n_trials
    run_dirs = sorted(p.name for p in (tmp_path / "sweep").glob("trial_*") if (p / "metrics.json").exists())
    assert run_dirs == sorted(f"trial_{n}" for n in range(n_trials))  # one run directory per trial
    assert len({t.user_attrs["run_dir"] for t in trials}) == n_trials


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_a_worker_killed_mid_trial_has_its_trial_failed_and_retried_by_the_other(postgres_url, tmp_path):
    write_reviews(tmp_path / "reviews.csv", n=60)
    n_trials = 6
    beats = ["hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=2", "hydra.sweeper.max_retry=1"]
    victim = worker(postgres_url, tmp_path, "killed", n_trials, *beats, stdout=subprocess.PIPE)
    with open(tmp_path / "survivor.log", "w") as log:
        survivor = worker(postgres_url, tmp_path, "killed", n_trials, *beats, stdout=log)
        for line in victim.stdout:
            if started := re.search(r"run dir .*/trial_(\d+) ", line):  # its first trial is training
                break
        victim.kill()  # SIGKILL: no handler runs, the trial stays RUNNING and its heartbeat stops
        victim.wait()
        assert started, "the victim never started a trial"
        assert survivor.wait(timeout=600) == 0, (tmp_path / "survivor.log").read_text()[-3000:]

    lost = int(started.group(1))
    trials = optuna.load_study(study_name="killed", storage=postgres_url).trials
    assert trials[lost].state == optuna.trial.TrialState.FAIL
    retried = {t.number: RetryHeartbeatStaleTrialCallback.retried_trial_number(t) for t in trials}
    retries = [number for number, original in retried.items() if original is not None]
    assert [retried[number] for number in retries] == [lost]
    assert trials[retries[0]].params == trials[lost].params
    assert len(trials) == n_trials + 1  # the retry stands in for the lost trial
    others = [t for t in trials if t.number != lost]
    assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in others)
