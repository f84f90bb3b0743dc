"""The job's side of an Optuna trial: reopen it from the study's storage, link it to its run directory, and
report each epoch's validation metric so the study's pruner can stop it.

The lora_optuna sweeper passes `trial.id` and `trial.number`; storage, study name, directions and pruner come
from the sweeper's own config, which Hydra hands every job (also under parallel or cluster launchers).
"""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate

log = logging.getLogger(__name__)


def make_pruner(pruner_cfg):
    """The configured Optuna pruner (only optuna.pruners.* may be instantiated), or NopPruner when null."""
    import optuna

    if not pruner_cfg:
        return optuna.pruners.NopPruner()
    return instantiate(pruner_cfg, _execution_whitelist_=("optuna.pruners.*",))


class TrialReporter:
    def __init__(self, trial_id: int, sweeper_cfg, run_dir: Path) -> None:
        import optuna

        pruner = make_pruner(sweeper_cfg.get("pruner"))
        study = optuna.load_study(study_name=sweeper_cfg.study_name, storage=sweeper_cfg.storage, pruner=pruner)
        self.trial = optuna.trial.Trial(study, trial_id)
        self.trial.set_user_attr("run_dir", str(run_dir.resolve()))
        # Optuna cannot record intermediate values of multi-objective trials (nor prune them).
        self.reports = len(study.directions) == 1

    def should_stop(self, epoch: int, value: float) -> bool:
        if not self.reports:
            return False
        self.trial.report(value, step=epoch)
        return self.trial.should_prune()


def reporter_for(trial_cfg, run_dir: Path) -> TrialReporter | None:
    """A reporter when this job is a trial of a lora_optuna sweep with a storage, else None."""
    if trial_cfg.id is None or not HydraConfig.initialized():
        return None
    sweeper_cfg = HydraConfig.get().sweeper
    if not sweeper_cfg.get("storage"):
        log.warning("trial %s: the sweep has no storage, so epochs cannot be reported for pruning", trial_cfg.number)
        return None
    return TrialReporter(trial_cfg.id, sweeper_cfg, run_dir)
