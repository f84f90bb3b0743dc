"""Schema fields with help text: the one table that config validation, `--help` style listings and the docs read.

Kept apart from config.py so a method's own schema (sentiment_lora/methods/) can describe its keys the same way
without importing the whole config (which imports the method registry).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING

# The config groups live in conf/ beside the package (editable install): an absolute path works however the
# code is started.
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


@dataclass(frozen=True)
class Range:
    """The allowed values of a numeric key: bounds inclusive unless open; NaN and infinities never pass."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low}"
        return f"in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"


AT_LEAST_ONE = Range(1)
POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)
PROBABILITY = Range(0, 1, high_open=True)  # a dropout of 1 zeroes everything
SHARE = Range(0, 1, low_open=True, high_open=True)
SEED = Range(0, 2**32 - 1)  # numpy's and scikit-learn's random_state range


def described(
    text: str, default: Any = MISSING, factory: Any = None, choices: tuple[str, ...] = (), within: Range | None = None
) -> Any:
    """A field with help text; `choices` are the allowed values and `within` the allowed range of a number (each
    item of a list), the one table validation and help read."""
    if choices:
        text = f"{text} One of: {', '.join(choices)}."
    if within is not None:
        text = f"{text} Must be {within}."
    metadata = {"help": text, "choices": choices, "within": within}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)
