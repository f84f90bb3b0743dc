"""An Optuna sweeper for sentiment-lora: hydra-optuna-sweeper's search-space parsing and samplers, plus what
its plain sweep loop lacks.

- n_trials is the study's total: re-running a command continues a persistent study up to n_trials, and several
  workers sharing one storage stop at exactly n_trials (trial creation is serialized by a storage-level lock).
- Each job is told its trial (`trial.id`, `trial.number` overrides), so the training loop can reopen the trial
  from the storage, report every epoch's validation metric and be pruned; the plain sweeper hides the trial.
- A job that raises becomes a FAIL trial with its error recorded; a job that was pruned becomes PRUNED with its
  last reported value. The sweep stops only when the failure rate passes max_failure_rate.
- The sampler's seed seeds each trial (from the seed and the trial number), so resumed studies and workers sharing
  one never re-draw the same sequence of parameters.
- Heartbeats: a trial whose worker died is failed by another worker, and re-run with its parameters up to
  max_retry times.
- A storage or sweep directory that cannot be opened, or a sweeper key out of range (n_trials=0), is one
  `error:` line, before any trial is asked for; a sweep stopped by too many failed trials is one line too, with
  exit status 1.
- A password in the storage URL is written nowhere: the jobs' saved configs get the URL without it (and the jobs
  the password through PGPASSWORD), logs and optimization_results.yaml the URL with it masked.

Hydra only instantiates sweepers from the `hydra_plugins` package, hence this module's location. As Hydra's
plugin guide advises, this module is light (configs and registration, imported by every run that composes a
config); optuna, sqlalchemy and the sweep loop live in `_impl.py`, imported only when a sweep starts.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf
from omegaconf import MISSING, DictConfig

from sentiment_lora.errors import UserError


@dataclass
class MedianPrunerConf:
    """Stop a trial whose epoch value is below the median of earlier trials at the same epoch."""

    _target_: str = "optuna.pruners.MedianPruner"
    n_startup_trials: int = 3  # never prune before this many trials have finished
    n_warmup_steps: int = 2  # steps are epochs counted from 1: never prune at the first epoch
    interval_steps: int = 1


@dataclass
class SuccessiveHalvingPrunerConf:
    """Asynchronous successive halving: keep the top 1/reduction_factor of trials at each rung."""

    _target_: str = "optuna.pruners.SuccessiveHalvingPruner"
    min_resource: Any = 1
    reduction_factor: int = 3
    min_early_stopping_rate: int = 0


@dataclass
class ThresholdPrunerConf:
    """Stop a trial whose epoch value leaves [lower, upper], e.g. one stuck at chance level."""

    _target_: str = "optuna.pruners.ThresholdPruner"
    lower: float | None = None
    upper: float | None = None
    n_warmup_steps: int = 0


@dataclass
class LoraOptunaSweeperConf(OptunaSweeperConf):
    _target_: str = "hydra_plugins.sentiment_lora_sweeper.sweeper.LoraOptunaSweeper"
    defaults: list[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "median"}])
    # Choose with hydra/sweeper/pruner=median|sha|threshold; hydra.sweeper.pruner=null turns pruning off.
    pruner: Any = MISSING  # MISSING, not None: None would override the pruner group default
    # Jobs launched per batch; 1 for several workers sharing one storage.
    n_jobs: int = 1
    # Mark trials left RUNNING by an interrupted sweep as FAIL on restart. Right for one machine with SQLite;
    # turn it off when other workers share the storage, or their live trials would be failed (heartbeats below
    # fail a dead worker's trials instead).
    fail_interrupted: bool = True
    # Heartbeats (SQLite and PostgreSQL storages): while a trial runs, its sweep records a heartbeat every
    # heartbeat_interval seconds (null: off). A RUNNING trial without one for grace_period seconds (null: twice
    # the interval) belongs to a worker that died: the next sweep that asks for a trial marks it FAIL, and
    # re-queues its parameters as a new trial up to max_retry times (0: never).
    heartbeat_interval: int | None = 60
    grace_period: int | None = None
    max_retry: int = 0


# hydra/launcher=slurm's base, registered with the sweeper's configs (see slurm_launcher.py).
from hydra_plugins.sentiment_lora_sweeper import slurm_launcher  # noqa: E402, F401

_store = ConfigStore.instance()
_store.store(group="hydra/sweeper", name="lora_optuna", node=LoraOptunaSweeperConf, provider="sentiment_lora")
_store.store(group="hydra/sweeper/pruner", name="median", node=MedianPrunerConf, provider="sentiment_lora")
_store.store(group="hydra/sweeper/pruner", name="sha", node=SuccessiveHalvingPrunerConf, provider="sentiment_lora")
_store.store(group="hydra/sweeper/pruner", name="threshold", node=ThresholdPrunerConf, provider="sentiment_lora")


def _a_rate(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1


class LoraOptunaSweeper(Sweeper):
    def __init__(
        self,
        sampler: Any,
        direction: Any,
        storage: Any,
        study_name: str | None,
        n_trials: int,
        n_jobs: int,
        max_failure_rate: float,
        custom_search_space: str | None,
        params: DictConfig | None,
        pruner: Any = None,
        fail_interrupted: bool = True,
        heartbeat_interval: int | None = 60,
        grace_period: int | None = None,
        max_retry: int = 0,
    ) -> None:
        from hydra.utils import instantiate

        from ._impl import LoraOptunaSweeperImpl

        sampler_cfg = sampler
        sampler = instantiate(
            sampler_cfg, _execution_whitelist_=("hydra_plugins.hydra_optuna_sweeper.*", "optuna.samplers.*")
        )
        self.sweeper = LoraOptunaSweeperImpl(
            sampler,
            direction,
            storage,
            study_name,
            n_trials,
            n_jobs,
            max_failure_rate if _a_rate(max_failure_rate) else 0.0,
            custom_search_space,
            params,
            pruner=pruner,
            fail_interrupted=fail_interrupted,
            seed=sampler_cfg.get("seed"),
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            max_retry=max_retry,
        )
        # hydra-optuna-sweeper asserts 0 <= max_failure_rate <= 1 as it is built (a traceback); the sweep's own check
        # (_check_keys) names a bad value in one line before any study is made.
        self.sweeper.max_failure_rate = max_failure_rate

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        from ._impl import SweepFailed

        try:
            return self.sweeper.sweep(arguments)
        except UserError as err:
            # Raised before the first trial is asked for (bad storage, sweep directory, sweeper keys): as in a
            # single run, one line and exit status 2. SystemExit passes through Hydra's traceback printer.
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        except SweepFailed as err:
            # Too many trials failed: their errors are recorded, so one line says how many and where;
            # status 1, as a run that fails (not a mistake on the command line) ends.
            print(f"error: {err}", file=sys.stderr)
            sys.exit(1)
