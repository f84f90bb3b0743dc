"""The job's side of an Optuna trial: reopen it from the study's storage, link it to its run directory, and
report each epoch's validation metric so the study's pruner can stop it.

The lora_optuna sweeper passes `trial.id` and `trial.number`; storage, study name, directions and pruner come
from the sweeper's own config, which Hydra hands every job (also under parallel or cluster launchers).
"""

from __future__ import annotations

import logging
import math
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


# The per-epoch validation metric each objective is judged by (trainable_params has none: it never changes).
EPOCH_METRIC = {"val_accuracy": "accuracy", "val_loss": "loss"}


class TrialReporter:
    """The epoch hook (loop.EpochHook) of a sweep trial: reports each epoch's value, asks the pruner; at the end,
    adds the run's outcome to the trial's user attributes."""

    def __init__(
        self, trial_id: int, sweeper_cfg, run_dir: Path, objective: str, seeds: list[int] | None = None
    ) -> None:
        import optuna

        pruner = make_pruner(sweeper_cfg.get("pruner"))
        study = optuna.load_study(study_name=sweeper_cfg.study_name, storage=sweeper_cfg.storage, pruner=pruner)
        self.trial = optuna.trial.Trial(study, trial_id)
        self.trial.set_user_attr("run_dir", str(run_dir.resolve()))
        # The pruner judges the epoch by the sweep's first objective, as the study's direction expects. Optuna
        # cannot record intermediate values of multi-objective trials (nor prune them).
        self.objective = objective
        self.reports = len(study.directions) == 1 and objective in EPOCH_METRIC
        # With seeds (cfg.seeds) only the first seed's run has this hook: its test metrics are not the trial's.
        self.seeds = seeds

    def __call__(self, epoch: int, val: dict[str, float], entry: dict | None = None) -> bool:
        if not self.reports:
            return False
        self.last = (epoch, val[EPOCH_METRIC[self.objective]])
        self.trial.report(self.last[1], step=epoch)
        return self.trial.should_prune()

    def stopped(self) -> Exception:
        import optuna

        epoch, value = self.last
        return optuna.TrialPruned(f"pruned after epoch {epoch} at {self.objective} {value:.4f}")

    def finish(self, status: str, record: dict | None) -> None:
        """When the run has ended (tracking.tracked calls this): what its metrics.json says, as user attributes that
        optuna-dashboard shows beside the parameters. The sweeper then records the trial's state."""
        if record is not None:
            for key, value in outcome_attrs(record, test=not self.seeds).items():
                self.trial.set_user_attr(key, value)


def reporter_for(cfg, run_dir: Path) -> TrialReporter | None:
    """The epoch hook when this job is a trial of a lora_optuna sweep with a storage, else None."""
    if cfg.trial.id is None or not HydraConfig.initialized():
        return None
    sweeper_cfg = HydraConfig.get().sweeper
    if not sweeper_cfg.get("storage"):
        log.warning("trial %s: the sweep has no storage, so epochs cannot be reported for pruning", cfg.trial.number)
        return None
    return TrialReporter(cfg.trial.id, sweeper_cfg, run_dir, cfg.objectives[0], cfg.get("seeds"))


def outcome_attrs(record: dict, test: bool = True) -> dict[str, int | float | None]:
    """A trial's user attributes from its run's metrics.json record (complete or pruned): parameter counts, epochs,
    the selected epoch and, with `test`, the test metrics. Plain numbers (NaN as None): Optuna stores them as JSON."""
    params, val = record.get("params") or {}, record.get("val") or {}
    attrs = {
        "trainable_params": params.get("trainable"),
        "total_params": params.get("total"),
        "trainable_pct": params.get("trainable_pct"),
        "epochs_run": record.get("epochs_run"),
        "selected_epoch": val.get("epoch"),
    }
    if test and record.get("test"):
        attrs.update({f"test_{name}": record["test"].get(name) for name in ("accuracy", "f1", "roc_auc")})
    return {key: None if isinstance(value, float) and math.isnan(value) else value for key, value in attrs.items()}


def is_pruned(error: BaseException) -> bool:
    """Whether a job's exception is Optuna's 'pruned' signal (checked without importing optuna otherwise)."""
    return type(error).__name__ == "TrialPruned" and type(error).__module__.startswith("optuna")


def record_failure(cfg, run_dir: Path, error: BaseException) -> None:
    """A sweep job that raised: its run directory says why (unless it holds the run's own record, a pruned one),
    and the log says it once. A refused job (immutable.is_refusal) leaves the directory alone, its log included:
    it is another configuration's run, or another process's."""
    from sentiment_lora.rundir import claim as immutable
    from sentiment_lora.rundir import record as results

    if immutable.is_refusal(error):
        return
    if not (run_dir / results.METRICS_FILE).exists():
        results.write_record(run_dir, "failed", cfg, error=f"{type(error).__name__}: {error}")
    if is_pruned(error):
        log.info("%s", error)
    else:
        log.error("run failed: %s: %s", type(error).__name__, error)
