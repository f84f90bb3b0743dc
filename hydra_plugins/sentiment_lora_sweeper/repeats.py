"""A sweep never trains a configuration twice, and stops once its search space is used up.

Optuna's GridSampler knows its grid's size (the sweeper caps n_trials at it). The other samplers propose a point
of a finite space again and again: n_trials=100000 over a one-point space trained that point until stopped. A
trial that proposes a finished trial's parameters gets that trial's outcome without training (as a re-run into a
finished run directory returns its record), and once every point of a finite space has finished, the sweep stops.
"""

from __future__ import annotations

import math
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # a repeat would end the same way: runs are deterministic


def space_size(distributions: dict[str, Any]) -> int | None:
    """How many points the search space holds, or None when it is continuous (a float range without a step)."""
    sizes = []
    for distribution in distributions.values():
        if isinstance(distribution, CategoricalDistribution):
            sizes.append(len(distribution.choices))
        elif isinstance(distribution, (IntDistribution, FloatDistribution)) and distribution.step is not None:
            if distribution.log and isinstance(distribution, FloatDistribution):
                return None
            sizes.append(int(round((distribution.high - distribution.low) / distribution.step)) + 1)
        elif isinstance(distribution, IntDistribution):  # log=True: every integer of the range
            sizes.append(distribution.high - distribution.low + 1)
        else:
            return None
    return math.prod(sizes)  # 1 for no distribution at all: every trial is the same run


def _key(params: dict[str, Any]) -> tuple:
    return tuple(sorted((name, repr(value)) for name, value in params.items()))


def finished_twin(study: optuna.Study, trial: optuna.Trial) -> FrozenTrial | None:
    """The first finished trial of the study with this trial's parameters, if any."""
    wanted = _key(trial.params)
    for other in study.get_trials(deepcopy=False, states=FINISHED):
        if other.number != trial.number and _key(other.params) == wanted:
            return other
    return None


def exhausted(study: optuna.Study, size: int | None) -> bool:
    """Whether every point of a finite search space has a finished trial."""
    if size is None:
        return False
    return len({_key(trial.params) for trial in study.get_trials(deepcopy=False, states=FINISHED)}) >= size
