"""hydra/launcher=slurm against a real single-node SLURM cluster (scripts/slurm_cluster.sh; .ci/run starts one):
grids as job arrays, Optuna trials as jobs, sweep workers as jobs sharing a PostgreSQL study, and the faults a
scheduler produces (a job that dies hard, scancel, requeue, the time limit).

Faults are injected by tests/fault_site (a sitecustomize on the jobs' PYTHONPATH, read from SLORA_TEST_FAULT):
the product has no fault hooks."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from sentiment_lora.run import train

from .conftest import REPO, TINY_FAST, compose_config, write_reviews

FAULT_SITE = REPO / "tests" / "fault_site"


def _cluster_problem() -> str | None:
    if not os.environ.get("SLURM_CONF"):
        return "no SLURM cluster: SLURM_CONF is unset (start one with scripts/slurm_cluster.sh start)"
    if shutil.which("sinfo") is None:
        return "no SLURM cluster: sinfo is not installed"
    try:
        answer = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return f"no SLURM cluster: sinfo (SLURM_CONF={os.environ['SLURM_CONF']}) did not answer in 20 s"
    if answer.returncode != 0 or not answer.stdout.strip():
        return f"no SLURM cluster answers: sinfo says {answer.stderr.strip()[:200]!r}"
    return None


_PROBLEM = _cluster_problem()
if _PROBLEM and os.environ.get("CI") and os.environ.get("SLURM_CONF"):
    raise RuntimeError(f"CI started a cluster, but {_PROBLEM}")

# Each test bounds its own waits (TIMEOUT_S); pytest-timeout is the last resort for anything else that hangs.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.slurm,
    pytest.mark.timeout(480),
    pytest.mark.skipif(_PROBLEM is not None, reason=str(_PROBLEM)),
]

# Small jobs that fit the one CI node: one CPU, 1 GB, no GPU; 10 min, so submitit's USR2 comes at 8 min, never.
LAUNCHER = [
    "hydra/launcher=slurm",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.gpus_per_node=0",
    "hydra.launcher.mem_gb=1",
    "hydra.launcher.timeout_min=10",
]
# trainer.progress left at its default: a job's log must get no progress bar by itself.
TINY = [*(arg for arg in TINY_FAST if not arg.startswith("trainer.progress=")), "trainer.precision=fp32", "data=csv"]
TIMEOUT_S = 240  # any one sweep; then the test fails, its jobs cancelled, instead of hanging CI


def sweep(tmp_path: Path, *args: str, fault: str | None = None, env: dict | None = None) -> subprocess.Popen:
    """`python -m sentiment_lora.train -m ARGS` on the submitting node (here), its jobs on the cluster."""
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    environment["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(FAULT_SITE), str(REPO), os.environ.get("PYTHONPATH")])
    )
    if fault:
        environment["SLORA_TEST_FAULT"] = fault
    log = open(tmp_path / "sweep.log", "w")  # noqa: SIM115 - closed by finish()
    return subprocess.Popen(
        [sys.executable, "-m", "sentiment_lora.train", "-m", *args, f"data.path={tmp_path}/reviews.csv"],
        cwd=tmp_path, env=environment, stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip


def release_requeued() -> None:
    """SLURM holds a requeued job for about two minutes (Reason=BeginTime) before it may start again; the tests
    start it at once instead of waiting."""
    listed = subprocess.run(["squeue", "-h", "-o", "%i %r"], capture_output=True, text=True, timeout=30).stdout
    for job, reason in (line.split(maxsplit=1) for line in listed.splitlines() if " " in line):
        if reason.strip() == "BeginTime":
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], capture_output=True, timeout=30)


def finish(process: subprocess.Popen, tmp_path: Path, timeout: int = TIMEOUT_S) -> tuple[int, str]:
    """Wait for a sweep; past the timeout, kill it and cancel its jobs, and fail."""
    deadline = time.monotonic() + timeout
    try:
        while process.poll() is None:
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(process.args, timeout)
            release_requeued()
            time.sleep(1)
        code = process.returncode
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        cancel_jobs_of(tmp_path)
        pytest.fail(f"sweep still running after {timeout} s:\n{(tmp_path / 'sweep.log').read_text()[-3000:]}")
    return code, (tmp_path / "sweep.log").read_text()


def cancel_jobs_of(tmp_path: Path) -> None:
    """scancel every job whose folder is under tmp_path (submitit names each job's folder by its id)."""
    ids = {p.name.split("_")[0] for p in tmp_path.glob("**/.submitit/*") if p.is_dir()}
    if ids:
        subprocess.run(["scancel", *sorted(ids)], capture_output=True, timeout=30)


def wait_for_file(path: Path, process: subprocess.Popen, tmp_path: Path, timeout: int = 180) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            cancel_jobs_of(tmp_path)
            process.kill()
            pytest.fail(f"{path} never appeared:\n{(tmp_path / 'sweep.log').read_text()[-3000:]}")
        time.sleep(0.5)
    time.sleep(0.2)  # written in one go; let it land
    return path.read_text().strip()


def metrics_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def numbers(metrics: dict) -> tuple:
    """What an uninterrupted run and a resumed one must share (timings differ)."""
    history = [{k: v for k, v in epoch.items() if not k.endswith("_s")} for epoch in metrics["history"]]
    return history, metrics["val"], metrics["test"]


@pytest.fixture
def reviews(tmp_path: Path) -> Path:
    return write_reviews(tmp_path / "reviews.csv", n=60)


def test_a_grid_runs_as_a_job_array_and_summarize_tabulates_it(tmp_path, reviews):
    code, log = finish(sweep(tmp_path, *LAUNCHER, *TINY, "lora.rank=2,4", f"hydra.sweep.dir={tmp_path}/grid"), tmp_path)
    assert code == 0, log[-3000:]
    assert "SLURM jobs " in log
    job_ids = {p.name for p in (tmp_path / "grid" / ".submitit").iterdir() if p.is_dir() and "_" in p.name}
    assert len(job_ids) == 2 and len({name.split("_")[0] for name in job_ids}) == 1  # one array, two tasks
    runs = {int(p.name): metrics_of(p) for p in (tmp_path / "grid").iterdir() if (p / "metrics.json").exists()}
    assert sorted((n, m["lora"]["rank"], m["status"]) for n, m in runs.items()) == [
        (0, 2, "complete"),
        (1, 4, "complete"),
    ]
    job = next((tmp_path / "grid" / ".submitit").glob("*_0"))
    assert f"run dir {tmp_path}/grid/0" in next(job.glob("*_log.out")).read_text()  # the log says where the run is
    assert "\r" not in next(job.glob("*_log.err")).read_text()  # no progress bar in a log file

    table = subprocess.run([sys.executable, str(REPO / "scripts" / "summarize.py"), str(tmp_path / "grid"),
                            "--csv", str(tmp_path / "grid.csv"), "--plot", str(tmp_path / "grid.png")],
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert table.returncode == 0, table.stderr[-2000:]
    import pandas as pd

    rows = pd.read_csv(tmp_path / "grid.csv")
    assert sorted(zip(rows["rank"], rows["val_acc"], rows["state"], strict=True)) == sorted(
        (m["lora"]["rank"], m["val"]["accuracy"], "complete") for m in runs.values()
    )


def optuna_args(tmp_path: Path, n_trials: int, *extra: str) -> list[str]:
    return [
        "hparams_search=lora_optuna", *LAUNCHER, *TINY, f"hydra.sweeper.n_trials={n_trials}",
        f"hydra.sweeper.storage=sqlite:///{tmp_path}/study.db", "hydra.sweeper.study_name=s",
        f"hydra.sweep.dir={tmp_path}/sweep", *extra,
    ]  # fmt: skip


def test_optuna_trials_as_jobs_and_a_job_that_dies_hard_becomes_a_fail_trial(tmp_path, reviews):
    # Trial 0's job exits hard (os._exit, no result) after its first epoch; the sweep records it and goes on.
    # Before hydra/launcher=slurm waited on each job itself, this stopped the whole sweep with a traceback
    # (UncompletedJobError out of the batch), and without accounting it waited forever.
    args = optuna_args(tmp_path, 3, "hydra.sweeper.n_jobs=3", "hydra.sweeper.max_failure_rate=0.5")
    code, log = finish(sweep(tmp_path, *args, fault="exit:trial_0:1"), tmp_path)
    assert code == 0, log[-3000:]
    trials = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/study.db").trials
    assert [t.state for t in trials][0] == TrialState.FAIL and len(trials) == 3
    assert "UncompletedJobError" in trials[0].user_attrs["error"] and "FAILED" in trials[0].user_attrs["error"]
    assert not (Path(trials[0].user_attrs["run_dir"]) / "metrics.json").exists()
    for trial in trials[1:]:  # as locally: each job reopened its trial, reported its epochs, was told or pruned
        assert trial.state in (TrialState.COMPLETE, TrialState.PRUNED)
        metrics = metrics_of(Path(trial.user_attrs["run_dir"]))
        assert metrics["trial"]["number"] == trial.number
        assert trial.intermediate_values[1] == metrics["history"][0]["val_accuracy"]
        if trial.state == TrialState.COMPLETE:
            assert trial.value == metrics["val"]["accuracy"]


def test_a_job_that_sacct_never_reports_is_lost_not_waited_on(tmp_path, reviews):
    # An sacct that cannot reach the accounting, as on a cluster without slurmdbd: submitit alone would wait forever
    # for the job that died hard.
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sacct").write_text("#!/bin/sh\necho 'sacct: error: accounting storage is disabled' >&2\nexit 1\n")
    (fake / "sacct").chmod(0o755)
    env = {"PATH": f"{fake}{os.pathsep}{os.environ['PATH']}"}
    args = [*LAUNCHER, *TINY, "hydra.launcher.lost_after_s=10", f"hydra.sweep.dir={tmp_path}/grid"]
    code, log = finish(sweep(tmp_path, *args, fault="exit:0:1", env=env), tmp_path)
    assert code != 0
    assert "JobLost" in log and "no final state in the accounting" in log


def test_sweep_workers_as_a_job_array_share_one_postgresql_study(tmp_path, reviews, postgres_url):
    n_trials, study = 4, "workers"
    worker = [
        sys.executable, "-m", "sentiment_lora.train", "-m", "hparams_search=lora_optuna", *TINY,
        f"data.path={tmp_path}/reviews.csv", f"hydra.sweeper.storage={postgres_url}",
        f"hydra.sweeper.study_name={study}", f"hydra.sweeper.n_trials={n_trials}",
        "hydra.sweeper.fail_interrupted=false", f"hydra.sweep.dir={tmp_path}/sweep",
    ]  # fmt: skip
    environment = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    submitted = subprocess.run(
        ["sbatch", "--parsable", "--wait", "--array=0-1", "--cpus-per-task=1", "--mem=1G", "--time=10",
         f"--output={tmp_path}/worker_%a.log", "--wrap", " ".join(worker)],
        cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=TIMEOUT_S,
    )  # fmt: skip
    logs = "\n".join(p.read_text()[-1500:] for p in sorted(tmp_path.glob("worker_*.log")))
    assert submitted.returncode == 0, submitted.stderr + logs
    job = submitted.stdout.strip().split(";")[0]
    accounted = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job, "-o", "JobID,State"], capture_output=True,
                               text=True, timeout=30).stdout.split()  # fmt: skip
    assert sorted(accounted) == [f"{job}_0|COMPLETED", f"{job}_1|COMPLETED"]

    trials = optuna.load_study(study_name=study, storage=postgres_url).trials
    assert len(trials) == n_trials and sorted(t.number for t in trials) == list(range(n_trials))
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)  # none RUNNING, none lost
    assert len({tuple(sorted(t.params.items())) for t in trials}) == n_trials


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_a_cancelled_trial_job_fails_its_trial_and_is_retried(tmp_path, reviews):
    args = optuna_args(tmp_path, 2, "hydra.sweeper.n_jobs=2", "hydra.sweeper.max_retry=1",
                       "hydra.sweeper.max_failure_rate=0.5")  # fmt: skip
    process = sweep(tmp_path, *args, fault="pause:trial_0:1")
    job = wait_for_file(tmp_path / "sweep" / "trial_0" / "paused", process, tmp_path)
    subprocess.run(["scancel", job], check=True, timeout=30)
    code, log = finish(process, tmp_path)
    assert code == 0, log[-3000:]
    trials = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/study.db").trials
    assert trials[0].state == TrialState.FAIL and "CANCELLED" in trials[0].user_attrs["error"]
    retried = {t.number: RetryHeartbeatStaleTrialCallback.retried_trial_number(t) for t in trials}
    assert [n for n, original in retried.items() if original == 0] == [2]  # the retry stands in for trial 0
    assert trials[2].params == trials[0].params
    assert len(trials) == 3 and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials[1:])


def uninterrupted(tmp_path: Path, overrides: list[str]) -> dict:
    """The same run, trained here in one go."""
    cfg = compose_config([*TINY, f"data.path={tmp_path}/reviews.csv", *overrides])
    (tmp_path / "whole").mkdir()
    train(cfg, tmp_path / "whole")
    return metrics_of(tmp_path / "whole")


def test_a_requeued_job_resumes_from_its_last_epoch_checkpoint(tmp_path, reviews):
    run = ["trainer.epochs=3", "lora.rank=2"]
    process = sweep(tmp_path, *LAUNCHER, *TINY, *run, f"hydra.sweep.dir={tmp_path}/grid", fault="pause:0:1")
    job = wait_for_file(tmp_path / "grid" / "0" / "paused", process, tmp_path)
    subprocess.run(["scontrol", "requeue", job], check=True, timeout=30)  # as a preemption with requeue does
    code, log = finish(process, tmp_path)
    assert code == 0, log[-3000:]
    train_log = (tmp_path / "grid" / "0" / "train.log").read_text()
    assert "resum" in train_log.lower(), train_log[-2000:]
    assert numbers(metrics_of(tmp_path / "grid" / "0")) == numbers(uninterrupted(tmp_path, run))


def test_a_job_at_its_time_limit_is_requeued_and_resumes(tmp_path, reviews):
    # A 2-minute limit, and submitit's signal 75 s before it: the paused job gets USR2 45 to 75 s after it starts
    # (slurmctld looks at time limits every 30 s), submitit requeues it, and the new start resumes after epoch 1.
    # A signal that came while the job was still starting would fail it instead (Hydra composing its config when
    # submitit's handler exits), so the signal must come after the pause, which a job reaches in about 20 s.
    run = ["trainer.epochs=3", "lora.rank=2"]
    limits = ["hydra.launcher.timeout_min=2", "hydra.launcher.signal_delay_s=75"]
    process = sweep(tmp_path, *LAUNCHER, *limits, *TINY, *run, f"hydra.sweep.dir={tmp_path}/grid", fault="pause:0:1")
    code, log = finish(process, tmp_path)
    assert code == 0, log[-3000:]
    job_log = "\n".join(p.read_text() for p in (tmp_path / "grid" / ".submitit").glob("*/*_log.out"))
    assert "USR2" in job_log or "timed-out" in job_log.lower(), job_log[-2000:]
    assert numbers(metrics_of(tmp_path / "grid" / "0")) == numbers(uninterrupted(tmp_path, run))
