"""hydra/launcher=population: the sweep's batch of trials trained together in this process (sentiment_lora.population).

A sweeper hands a launcher a batch of jobs: the grid's (all of it, or hydra.sweeper.max_batch_size at a time), the
Optuna sweeper's n_jobs trials asked at once. This launcher sets each job up as Hydra's basic launcher does
(run_job: its config, run directory, .hydra files, log file, callbacks), but instead of running the trials one
after another it hands them all to `train_together`: trials that share a frozen encoder train as one
population, the rest alone. Each job's return is its own objective(s), or its own failure, as the sweeper expects
of any launcher. docs/sweeps.md, "Populations", says when it helps.

Kept light to import (Hydra imports plugin modules at start-up): torch and the harness load at launch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)


@dataclass
class PopulationLauncherConf:
    _target_: str = "hydra_plugins.sentiment_lora_sweeper.population_launcher.PopulationLauncher"
    # At most this many stacked rows (members x trainer.eval_batch_size) in one evaluation forward; null: every
    # member of the population at once. Lower it when validation runs out of device memory.
    max_eval_rows: int | None = None
    # Memory the populations may take, in MB; null: 80% of what is available when they form (host RAM on the CPU,
    # free device memory on a GPU). Trials that could join are split into populations that fit, one after another.
    memory_budget_mb: int | None = None
    # Stack the members' batches into one forward per step. null: on a GPU, where one trial leaves the device
    # idle; not on a CPU, where one trial's products already fill the cores (measured there: 0.90x the speed of the
    # trials one after another, and 1.83x their memory at 4 members): the trials that could join then train one
    # after another, still sharing one frozen encoder, the data and the frozen prefix. true/false: always/never.
    stack: bool | None = None


ConfigStore.instance().store(
    group="hydra/launcher", name="population", node=PopulationLauncherConf, provider="sentiment_lora"
)


@dataclass
class _Prepared:
    """What a job's run_job leaves for the population: its config, run directory and epoch hook."""

    cfg: DictConfig
    run_dir: Path
    on_epoch: Any


def _prepare(cfg: DictConfig) -> _Prepared:
    from sentiment_lora import trial

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    return _Prepared(cfg, run_dir, trial.reporter_for(cfg, run_dir))


class PopulationLauncher(Launcher):
    def __init__(
        self, max_eval_rows: int | None = None, memory_budget_mb: int | None = None, stack: bool | None = None
    ) -> None:
        self.max_eval_rows, self.memory_budget_mb, self.stack = max_eval_rows, memory_budget_mb, stack
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from sentiment_lora.population import train_together
        from sentiment_lora.population.logs import route_to_members, unroute

        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        log.info("Launching %d jobs as a population, in this process", len(job_overrides))
        returns, configs = [], []
        for offset, overrides in enumerate(job_overrides):
            idx = initial_job_idx + offset
            log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
            sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(sweep_config):
                sweep_config.hydra.job.id, sweep_config.hydra.job.num = str(idx), idx
            returns.append(run_job(hydra_context=self.hydra_context, task_function=_prepare, config=sweep_config,
                                   job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir"))  # fmt: skip
            configs.append(sweep_config)

        prepared = {index: ret.return_value for index, ret in enumerate(returns) if ret.status == JobStatus.COMPLETED}

        def as_job(config: DictConfig):
            @contextmanager
            def hydra_of_job():  # what a job reads of Hydra's state (its overrides, output dir) is its own
                HydraConfig.instance().set_config(config)
                yield

            return hydra_of_job

        handlers = route_to_members(
            {
                position: job.run_dir / f"{configs[index].hydra.job.name}.log"
                for position, (index, job) in enumerate(prepared.items())
            }  # fmt: skip
        )
        try:
            outcomes = train_together(
                [(job.cfg, job.run_dir, job.on_epoch, as_job(configs[index])) for index, job in prepared.items()],
                max_eval_rows=self.max_eval_rows,
                memory_budget_mb=self.memory_budget_mb,
                stack=self.stack,
            )
        finally:
            unroute(handlers)
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        for index, outcome in zip(prepared, outcomes, strict=True):
            ret = returns[index]
            if isinstance(outcome, BaseException):
                ret.status = JobStatus.FAILED
            ret.return_value = outcome  # a FAILED return re-raises it for the sweeper, as for a job that raised
        return returns
