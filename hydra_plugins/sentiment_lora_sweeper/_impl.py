"""The lora_optuna sweep loop (see sweeper.py for what it adds to hydra-optuna-sweeper). Imported lazily: only a
sweep pays for optuna and sqlalchemy."""

from __future__ import annotations

import fcntl
import functools
import hashlib
import logging
import math
import os
import time
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import sqlalchemy
from hydra.core.utils import JobStatus
from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl, create_params_from_overrides
from omegaconf import OmegaConf, open_dict, read_write
from optuna.samplers import BaseSampler
from optuna.samplers._lazy_random_state import LazyRandomState
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import get_heartbeat_thread  # what study.optimize() beats with
from optuna.trial import TrialState

from sentiment_lora import credentials
from sentiment_lora.errors import UserError
from sentiment_lora.tracking import check_tracking_uri
from sentiment_lora.trial import make_pruner

from . import repeats

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


def trial_seed(seed: int, number: int) -> int:
    """The sampler's seed for one trial: a function of the configured seed and the trial number alone."""
    return int(np.random.SeedSequence((seed, number)).generate_state(1)[0])


def _reseed(sampler: BaseSampler, seed: int) -> None:
    """sampler.reseed_rng() made reproducible: seed the random states it holds (and those of the samplers it
    delegates to, e.g. TPE's random startup sampler) from `seed` instead of from the OS. Structural seeds that
    reseed_rng() leaves alone, like QMC's scrambling seed, are plain ints here and stay as they are."""
    for value in vars(sampler).values():
        if isinstance(value, LazyRandomState):
            value.rng.seed(seed)
        elif isinstance(value, BaseSampler):
            _reseed(value, seed)


def _masked(storage: str | None) -> str:
    """The storage URL without its password, fit for logs, files and error messages."""
    return str(credentials.masked(storage))


class SweepFailed(Exception):
    """The sweep stopped, or ended, on failed trials: one line, exit status 1 (sweeper.py reports it)."""


STORAGE_KEY = "hydra.sweeper.storage"


def _quoted(value: str) -> str:
    """A string as a quoted Hydra override value (a URL holds ':', '@' and '/', which stay literal in quotes)."""
    return "'" + value.replace("'", "\\'") + "'"


def _tell(study: optuna.Study, trial: optuna.Trial, **outcome: Any) -> None:
    try:
        study.tell(trial, **outcome)
    except RuntimeError as err:
        # GridSampler calls study.stop() once the grid is covered, which raises outside study.optimize();
        # Optuna has stored the trial's outcome by then (hydra-optuna-sweeper ignores this error the same way).
        if "Study.stop" not in str(err):
            raise


# What a cluster launcher's job that ended without a result raises: submitit's (the job's final state is known)
# and hydra/launcher=slurm's own (it left the queue with none, slurm_launcher.py).
JOB_ENDED_WITHOUT_RESULT = ("UncompletedJobError", "JobLost")


def _error_of(job_return) -> BaseException | None:
    if job_return.status == JobStatus.COMPLETED:
        return None
    try:
        _ = job_return.return_value  # re-raises the job's exception
    except BaseException as err:  # noqa: BLE001 - any job error becomes a FAIL trial
        return err
    return RuntimeError(f"job ended with status {job_return.status}")


class LoraOptunaSweeperImpl(OptunaSweeperImpl):
    def __init__(
        self,
        *args: Any,
        pruner: Any,
        fail_interrupted: bool,
        seed: int | None,
        heartbeat_interval: int | None,
        grace_period: int | None,
        max_retry: int,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.pruner_config = pruner
        self.fail_interrupted = fail_interrupted
        self.seed = seed
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        self.max_retry = max_retry

    def sweep(self, arguments: list[str]) -> None:
        with warnings.catch_warnings(), self._password_kept_out():
            # Heartbeats and stale-trial retries are experimental in Optuna, and Optuna expects them to be used by
            # study.optimize(): this loop does what optimize() does (fail stale trials, beat while a trial runs).
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with")
            self._sweep(arguments)

    @contextmanager
    def _password_kept_out(self) -> Iterator[None]:
        """Hydra saves hydra.sweeper.storage as composed into every job's .hydra/hydra.yaml, and the command line's
        override in its hydra.overrides.hydra: a password written in the URL would be in each of them. The jobs
        compose their config from this (the primary) config's overrides, so the URL without its password goes
        there, and the password to the jobs through PGPASSWORD, which libpq (psycopg) reads when a URL has none.
        A storage given as ${oc.env:VAR} is saved unresolved and needs nothing. PGPASSWORD is restored after the
        sweep, whose jobs (on any launcher) have all been launched and waited on by then."""
        password = credentials.password_of(self.storage)
        node = self.config.hydra.sweeper
        if password is None or OmegaConf.is_interpolation(node, "storage"):
            yield
            return
        env_url = "give the whole URL as ${oc.env:VAR}, which Hydra saves unresolved (docs/sweeps.md)"
        if sqlalchemy.engine.make_url(self.storage).get_backend_name() != "postgresql":
            raise UserError(
                f"config {STORAGE_KEY}: {_masked(self.storage)} holds a password, which Hydra would save in every "
                f"trial's .hydra/hydra.yaml; {env_url}"
            )
        before = os.environ.get("PGPASSWORD")
        if before not in (None, password):
            raise UserError(
                f"config {STORAGE_KEY}: {_masked(self.storage)} holds a password other than PGPASSWORD's; keep one: "
                f"drop it from the URL (PGPASSWORD or ~/.pgpass gives it), or {env_url}"
            )
        bare = credentials.without_password(self.storage)
        with read_write(self.config.hydra), open_dict(self.config.hydra):
            node.storage = bare
            overrides = [
                item for item in self.config.hydra.overrides.hydra if item.lstrip("+~").partition("=")[0] != STORAGE_KEY
            ]
            self.config.hydra.overrides.hydra = [*overrides, f"{STORAGE_KEY}={_quoted(bare)}"]
        os.environ["PGPASSWORD"] = password
        try:
            yield
        finally:
            if before is None:
                os.environ.pop("PGPASSWORD", None)

    def _sweep(self, arguments: list[str]) -> None:
        self._check_keys()
        check_tracking_uri(self.config)  # before any trial's .hydra/ files would save the password
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
        if len(directions) > 1 and self.pruner_config:
            raise ValueError("Optuna cannot prune multi-objective studies: set hydra.sweeper.pruner=null")
        # Whatever the sweep needs before its first trial: a mistake here is the user's to fix, and no trial is
        # asked for (and failed) before it is fixed.
        self._make_sweep_dir()
        # Before the study is created (a refused one must not be), and again once it is (a worker may just have).
        self._check_sweep_dir_is_the_studys(self.study_name or "(new)", self._existing_trials())
        study = self._open_study(directions, make_pruner(self.pruner_config))  # the pruner the jobs use
        self._check_sweep_dir_is_the_studys(study.study_name, study.get_trials(deepcopy=False))
        names = list(self.config.get("objectives") or [])
        if len(names) == len(directions) and study.metric_names != names:
            study.set_metric_names(names)  # optuna-dashboard and Optuna's plots name the objectives with them
        log.info("Optuna study '%s' in %s", study.study_name, _masked(self.storage) if self.storage else "memory")
        log.info(
            "Sampler %s (seed %s), pruner %s, directions %s",
            type(self.sampler).__name__,
            self.seed,
            type(study.pruner).__name__,
            directions,
        )
        if self.fail_interrupted:
            self._fail_interrupted(study)

        launched = failed = 0
        size = repeats.space_size(distributions)
        while True:
            with ExitStack() as heartbeats:
                with storage_lock(self.storage, study.study_name):
                    optuna.storages.fail_stale_trials(study)  # a no-op without heartbeats
                    trials = self._ask_batch(study)
                    for trial in trials:  # beating from the start: a worker killed now leaves a stale trial
                        heartbeats.enter_context(get_heartbeat_thread(trial._trial_id, study._storage))
                if not trials:
                    if self._wait_for_lost_trials(study):
                        continue
                    break
                failed += self._run_batch(study, trials, distributions, fixed_params, fixed_overrides)
            launched += len(trials)
            if repeats.exhausted(study, size):
                log.warning(
                    "search space exhausted: each of its %d configurations has a finished trial; the sweep stops "
                    "(%d of hydra.sweeper.n_trials=%d trials in the study)",
                    size,
                    len(study.trials),
                    self.n_trials,
                )
                break
            if failed / launched > self.max_failure_rate:
                self._write_results(study, directions)
                raise SweepFailed(
                    f"sweep stopped: {failed} of {launched} trials failed, above hydra.sweeper.max_failure_rate="
                    f"{self.max_failure_rate}; {self._where_errors_are(study)}"
                )
        self._write_results(study, directions)
        if launched and failed == launched:  # tolerated (max_failure_rate=1.0), but worth a line of its own
            log.warning(
                "every trial of this sweep failed (%d of %d); %s", failed, launched, self._where_errors_are(study)
            )

    def _where_errors_are(self, study: optuna.Study) -> str:
        failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
        last = failed[-1].user_attrs.get("error", "") if failed else ""
        return (
            f"each FAIL trial's error is in its 'error' user attribute (study '{study.study_name}' in "
            f"{_masked(self.storage) if self.storage else 'memory'}) and in its run directory's metrics.json under "
            f"{self.config.hydra.sweep.dir}" + (f"; the last: {last.splitlines()[0][:300]}" if last else "")
        )

    def _check_keys(self) -> None:
        """The sweeper's own numbers, before the study is created: n_trials=0 would make an empty study and exit 0."""
        n_trials = self.n_trials
        if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
            raise UserError(f"config hydra.sweeper.n_trials: must be 1 or more, got {n_trials}")
        if isinstance(self.n_jobs, bool) or not isinstance(self.n_jobs, int) or self.n_jobs < 1:
            raise UserError(f"config hydra.sweeper.n_jobs: must be 1 or more, got {self.n_jobs}")
        rate = self.max_failure_rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
            raise UserError(f"config hydra.sweeper.max_failure_rate: must be between 0 and 1, got {rate}")
        for key in ("heartbeat_interval", "grace_period"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise UserError(f"config hydra.sweeper.{key}: must be whole seconds above 0, or null; got {value}")
        if not isinstance(self.max_retry, int) or self.max_retry < 0:
            raise UserError(f"config hydra.sweeper.max_retry: must be 0 or more, got {self.max_retry}")

    def _make_sweep_dir(self) -> None:
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        try:
            sweep_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"config hydra.sweep.dir: cannot create {sweep_dir}: {err.strerror}") from err

    def _existing_trials(self) -> list[optuna.trial.FrozenTrial]:
        """The trials of the study if it exists already, read without creating it (nor a missing SQLite file);
        none for a new study. A storage that cannot be opened is left to _open_study's one line."""
        if not self.storage or not self.study_name:
            return []  # in memory, or a generated name: a new study
        if isinstance(self.storage, str) and self.storage.startswith("sqlite:///"):
            path = Path(self.storage[len("sqlite:///") :].split("?", 1)[0])
            if not path.is_file():
                return []
        try:
            return optuna.load_study(study_name=self.study_name, storage=self._rdb_storage()).get_trials(deepcopy=False)
        except (KeyError, sqlalchemy.exc.SQLAlchemyError, ImportError, OSError):
            return []

    def _check_sweep_dir_is_the_studys(self, study_name: str, study_trials: list[optuna.trial.FrozenTrial]) -> None:
        """Trials write to <sweep dir>/trial_<number>/: refuse a study whose trials would overwrite another study's
        folders there (a new study numbers its trials from 0 again). A folder is this study's when the study has a
        trial of that number that does not record another run_dir; continuing a study keeps working."""
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        trials = {trial.number: trial for trial in study_trials}
        foreign = []
        for folder in sweep_dir.glob("trial_*"):
            number = folder.name[len("trial_") :]
            if not folder.is_dir() or not number.isdigit():
                continue
            trial = trials.get(int(number))
            recorded = trial.user_attrs.get("run_dir") if trial is not None else None
            if trial is None or (recorded is not None and Path(recorded) != folder.resolve()):
                foreign.append(folder.name)
        if foreign:
            listed = ", ".join(sorted(foreign, key=lambda name: int(name[len("trial_") :]))[:3])
            more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
            raise UserError(
                f"config hydra.sweep.dir: {sweep_dir} holds trial folders of another study ({listed}{more}) that "
                f"study '{study_name}' would overwrite; give this study its own hydra.sweep.dir, or continue the "
                "other one with its hydra.sweeper.storage and study_name"
            )

    def _open_study(self, directions: list[str], pruner: optuna.pruners.BasePruner) -> optuna.Study:
        """Create the study, or load it to resume or share it."""
        try:
            if isinstance(self.storage, str) and self.storage.startswith("sqlite:///"):
                Path(self.storage[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
            # Workers starting together on an empty database would race to create Optuna's tables: lock that too.
            with storage_lock(self.storage, self.study_name or "optuna"):
                return optuna.create_study(
                    study_name=self.study_name,
                    storage=self._rdb_storage(),
                    sampler=self.sampler,
                    pruner=pruner,
                    directions=directions,
                    load_if_exists=True,
                )
        except (sqlalchemy.exc.SQLAlchemyError, ImportError, OSError) as err:
            # A bad URL, an unreachable server, a file that is no database, a missing driver: one line says which.
            problem = str(getattr(err, "orig", None) or err).strip().splitlines()[0]
            raise UserError(f"config hydra.sweeper.storage: cannot open {_masked(self.storage)}: {problem}") from err

    def _rdb_storage(self) -> optuna.storages.RDBStorage | None:
        if not self.storage:
            return None  # in memory: one process, nothing to beat for
        return optuna.storages.RDBStorage(
            self.storage,
            heartbeat_interval=self.heartbeat_interval,
            grace_period=self.grace_period,
            heartbeat_stale_trial_callback=self._retry(),
        )

    def _retry(self) -> optuna.storages.RetryHeartbeatStaleTrialCallback | None:
        """Re-queues a trial whose worker died, with its parameters, up to max_retry times."""
        return optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=self.max_retry) if self.max_retry else None

    def _fail_interrupted(self, study: optuna.Study) -> None:
        retry = self._retry()
        for stale in study.get_trials(deepcopy=True, states=(TrialState.RUNNING,)):
            optuna.trial.Trial(study, stale._trial_id).set_user_attr("error", "interrupted: RUNNING at restart")
            _tell(study, stale.number, state=TrialState.FAIL)
            log.warning("trial %d was left RUNNING by an interrupted sweep: marked FAIL", stale.number)
            if retry:
                retry(study, stale)  # as a heartbeat-stale trial would be

    def _ask_batch(self, study: optuna.Study) -> list[optuna.Trial]:
        """Up to n_jobs trials: re-queued ones first (study.ask() pops them), then new ones up to n_trials."""
        trials = study.get_trials(deepcopy=False)
        # A retry stands in for the trial it re-runs: it takes no place of its own among the n_trials.
        retries = sum(RetryHeartbeatStaleTrialCallback.retried_trial_number(t) is not None for t in trials)
        waiting = sum(t.state == TrialState.WAITING for t in trials)
        batch = min(self.n_jobs, max(self.n_trials - (len(trials) - retries), 0) + waiting)
        return [study.ask() for _ in range(batch)]

    def _wait_for_lost_trials(self, study: optuna.Study) -> bool:
        """With no trial left to ask for while others run, wait up to a grace period: a trial of a worker that died
        before now goes stale within it, so this live worker fails it (and runs its retry). True once a retry is
        queued."""
        if not self.storage or self.heartbeat_interval is None:
            return False
        # Two seconds more: Optuna's clock has second resolution in SQLite, and this looks once a second.
        deadline = time.monotonic() + (self.grace_period or 2 * self.heartbeat_interval) + 2
        while True:
            with storage_lock(self.storage, study.study_name):
                optuna.storages.fail_stale_trials(study)
            states = {
                t.state for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
            }
            if TrialState.WAITING in states:
                return True
            if not states or time.monotonic() > deadline:
                return False
            time.sleep(1)  # not a whole heartbeat interval: stop soon after the other workers' last trial ends

    def _configure_trials(self, trials: list[optuna.Trial], *space: Any) -> list[tuple[str, ...]]:
        overrides = []
        for trial in trials:
            if self.seed is not None:
                # The configured seed would restart the sampler's random sequence in every process that opens the
                # study: a resumed study and each worker sharing it would propose the same parameters again.
                _reseed(trial.study.sampler, trial_seed(self.seed, trial.number))
            overrides.extend(super()._configure_trials([trial], *space))
        return overrides

    def _run_batch(self, study: optuna.Study, trials: list[optuna.Trial], *space: Any) -> int:
        """Launch the trials' jobs and record their outcomes; returns how many failed."""
        log.info("trials %s of %d", ", ".join(str(t.number) for t in trials), self.n_trials)
        jobs = self._configure_trials(trials, *space)
        fresh = [(trial, job) for trial, job in zip(trials, jobs, strict=True) if not self._answered(study, trial)]
        if not fresh:
            return 0
        trials = [trial for trial, _ in fresh]
        overrides = [(*job, f"trial.id={trial._trial_id}", f"trial.number={trial.number}") for trial, job in fresh]
        try:
            returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
        except BaseException as err:
            # The launcher itself failed (or was interrupted): leave no trial RUNNING behind.
            for trial in trials:
                trial.set_user_attr("error", f"launcher: {type(err).__name__}: {err}"[:1000])
                _tell(study, trial, state=TrialState.FAIL)
            raise
        self.job_idx += len(returns)
        failed = 0
        retry = self._retry()
        for trial, job_return in zip(trials, returns, strict=True):
            failed += self._record(study, trial, job_return, len(study.directions))
            if retry and type(_error_of(job_return)).__name__ in JOB_ENDED_WITHOUT_RESULT:
                # The scheduler killed the job (scancel, time limit, node lost, out of memory, a hard crash): like a
                # dead worker's trial, it is re-run with its parameters up to max_retry times.
                retry(study, study._storage.get_trial(trial._trial_id))
                log.warning(
                    "trial %d: its job ended without a result; queued again (hydra.sweeper.max_retry)", trial.number
                )
        return failed

    @staticmethod
    def _answered(study: optuna.Study, trial: optuna.Trial) -> bool:
        """A trial proposing a finished trial's parameters gets its outcome, untrained (repeats.py)."""
        twin = repeats.finished_twin(study, trial)
        if twin is None:
            return False
        trial.set_user_attr("same_as_trial", twin.number)
        for key in ("run_dir",):
            if key in twin.user_attrs:
                trial.set_user_attr(key, twin.user_attrs[key])
        if twin.state == TrialState.PRUNED:
            _tell(study, trial, state=TrialState.PRUNED)
        else:
            _tell(study, trial, values=twin.values)
        log.info("trial %d: the parameters of finished trial %d; its outcome recorded, nothing trained", trial.number,
                 twin.number)  # fmt: skip
        return True

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
            "storage": _masked(self.storage) if self.storage else None,
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
