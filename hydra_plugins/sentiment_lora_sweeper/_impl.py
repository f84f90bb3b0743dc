"""The lora_optuna sweep loop (see sweeper.py for what it adds to hydra-optuna-sweeper). Imported lazily: only a
sweep pays for optuna and sqlalchemy."""

from __future__ import annotations

import fcntl
import functools
import hashlib
import logging
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
from hydra.core.utils import JobStatus
from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl, create_params_from_overrides
from omegaconf import OmegaConf
from optuna.trial import TrialState

from sentiment_lora.trial import make_pruner

log = logging.getLogger(__name__)


@contextmanager
def storage_lock(storage: str | None, study_name: str) -> Iterator[None]:
    """Serialize study creation and "count the trials, then ask" across processes sharing a storage."""
    if storage and storage.startswith("postgresql"):
        import sqlalchemy

        key = int(hashlib.sha1(study_name.encode()).hexdigest()[:15], 16)
        engine = sqlalchemy.create_engine(storage, poolclass=sqlalchemy.pool.NullPool)
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
            try:
                yield
            finally:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
        engine.dispose()
    elif storage and storage.startswith("sqlite:///"):
        lock_path = Path(storage[len("sqlite:///") :] + ".lock")
        with open(lock_path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
    else:
        yield  # in-memory storage: one process only


def _tell(study: optuna.Study, trial: optuna.Trial, **outcome: Any) -> None:
    try:
        study.tell(trial, **outcome)
    except RuntimeError as err:
        # GridSampler calls study.stop() once the grid is covered, which raises outside study.optimize();
        # Optuna has stored the trial's outcome by then (hydra-optuna-sweeper ignores this error the same way).
        if "Study.stop" not in str(err):
            raise


def _error_of(job_return) -> BaseException | None:
    if job_return.status == JobStatus.COMPLETED:
        return None
    try:
        _ = job_return.return_value  # re-raises the job's exception
    except BaseException as err:  # noqa: BLE001 - any job error becomes a FAIL trial
        return err
    return RuntimeError(f"job ended with status {job_return.status}")


class LoraOptunaSweeperImpl(OptunaSweeperImpl):
    def __init__(self, *args: Any, pruner: Any, fail_interrupted: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pruner_config = pruner
        self.fail_interrupted = fail_interrupted

    def _prepare_storage(self) -> None:
        if isinstance(self.storage, str) and self.storage.startswith("sqlite:///"):
            Path(self.storage[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)

    def sweep(self, arguments: list[str]) -> None:
        self._process_searchspace_config()
        params_conf = self._parse_sweeper_params_config() + list(arguments)
        distributions, fixed_params, fixed_overrides = create_params_from_overrides(params_conf)
        for name in fixed_params:
            distributions.pop(name, None)
        if isinstance(self.sampler, functools.partial) and self.sampler.func is optuna.samplers.GridSampler:
            # As in hydra-optuna-sweeper: the grid is the search space, and n_trials at most its size.
            grid = {name: self._to_grid_sampler_choices(dist) for name, dist in distributions.items()}
            self.sampler = self.sampler(grid)
            self.n_trials = min(self.n_trials, math.prod(len(choices) for choices in grid.values()))
        directions = self._get_directions()
        pruner = make_pruner(self.pruner_config)  # the same construction the jobs use
        if len(directions) > 1 and self.pruner_config:
            raise ValueError("Optuna cannot prune multi-objective studies: set hydra.sweeper.pruner=null")
        self._prepare_storage()
        # Workers starting together on an empty database would race to create Optuna's tables: lock that too.
        with storage_lock(self.storage, self.study_name or "optuna"):
            study = optuna.create_study(
                study_name=self.study_name,
                storage=self.storage,
                sampler=self.sampler,
                pruner=pruner,
                directions=directions,
                load_if_exists=True,
            )
        log.info("Optuna study '%s' in %s", study.study_name, self.storage or "memory")
        log.info("Sampler %s, pruner %s, directions %s", type(self.sampler).__name__, type(pruner).__name__, directions)
        if self.fail_interrupted:
            for stale in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                optuna.trial.Trial(study, stale._trial_id).set_user_attr("error", "interrupted: RUNNING at restart")
                _tell(study, stale.number, state=TrialState.FAIL)
                log.warning("trial %d was left RUNNING by an interrupted sweep: marked FAIL", stale.number)

        launched = failed = 0
        while True:
            with storage_lock(self.storage, study.study_name):
                existing = len(study.get_trials(deepcopy=False))
                batch = min(self.n_jobs, self.n_trials - existing)
                if batch <= 0:
                    break
                trials = [study.ask() for _ in range(batch)]
            log.info("trials %s of %d", ", ".join(str(t.number) for t in trials), self.n_trials)
            overrides = self._configure_trials(trials, distributions, fixed_params, fixed_overrides)
            overrides = [
                (*job, f"trial.id={trial._trial_id}", f"trial.number={trial.number}")
                for trial, job in zip(trials, overrides, strict=True)
            ]
            try:
                returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
            except BaseException as err:
                # The launcher itself failed (or was interrupted): leave no trial RUNNING behind.
                for trial in trials:
                    trial.set_user_attr("error", f"launcher: {type(err).__name__}: {err}"[:1000])
                    _tell(study, trial, state=TrialState.FAIL)
                raise
            self.job_idx += len(returns)
            for trial, job_return in zip(trials, returns, strict=True):
                failed += self._record(study, trial, job_return, len(directions))
            launched += len(returns)
            if failed / launched > self.max_failure_rate:
                raise RuntimeError(
                    f"{failed} of {launched} trials failed, above hydra.sweeper.max_failure_rate="
                    f"{self.max_failure_rate}; see the FAIL trials' 'error' attribute and their run directories"
                )
        self._write_results(study, directions)

    @staticmethod
    def _record(study: optuna.Study, trial: optuna.Trial, job_return, n_objectives: int) -> int:
        """Record the job's outcome; returns 1 for a failed trial, else 0."""
        error = _error_of(job_return)
        if isinstance(error, optuna.TrialPruned):
            _tell(study, trial, state=TrialState.PRUNED)
            log.info("trial %d pruned: %s", trial.number, error)
            return 0
        if error is None:
            value = job_return.return_value
            values = [float(v) for v in value] if n_objectives > 1 else [float(value)]
            _tell(study, trial, values=values)
            return 0
        trial.set_user_attr("error", f"{type(error).__name__}: {error}"[:1000])
        _tell(study, trial, state=TrialState.FAIL)
        log.warning("trial %d failed: %s: %s", trial.number, type(error).__name__, error)
        return 1

    def _write_results(self, study: optuna.Study, directions: list[str]) -> None:
        counts = {state.name: 0 for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
        for trial in study.get_trials(deepcopy=False):
            counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
        results: dict[str, Any] = {
            "name": "optuna",
            "study_name": study.study_name,
            "storage": self.storage,
            "trials": counts,
        }
        completed = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
        if completed and len(directions) == 1:
            best = study.best_trial
            results.update(best_params=best.params, best_value=best.value, best_trial=best.number)
            log.info("Best trial %d: value %s, params %s", best.number, best.value, best.params)
        elif completed:
            results["pareto_front"] = [
                {"trial": t.number, "values": t.values, "params": t.params} for t in study.best_trials
            ]
            log.info("Pareto front: %d trials", len(study.best_trials))
            for trial in study.best_trials:
                log.info("    trial %d values %s params %s", trial.number, trial.values, trial.params)
        log.info("Trials in the study: %s", counts)
        os.makedirs(self.config.hydra.sweep.dir, exist_ok=True)
        OmegaConf.save(OmegaConf.create(results), Path(self.config.hydra.sweep.dir) / "optimization_results.yaml")
