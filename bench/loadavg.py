"""The load average around a benchmark: a shared machine's speed changes with it, so every A-against-B bench prints
it before and after, and warns when it moved by more than 1 while the bench ran (its ratios then mix two loads)."""

from __future__ import annotations

import os
import statistics


class LoadWatch:
    def __init__(self) -> None:
        self.before = os.getloadavg()[0]

    def report(self) -> str:
        after = os.getloadavg()[0]
        line = f"load average (1 min): {self.before:.2f} before, {after:.2f} after, on {os.cpu_count()} CPUs"
        if abs(after - self.before) > 1:
            line += "\nwarning: the load changed by more than 1 during the run: its ratios mix two loads, rerun"
        return line


def median_spread(times: list[float]) -> tuple[float, float, float]:
    """(median, min, max) of repeated timings."""
    return statistics.median(times), min(times), max(times)
