"""One bounded per-process memo. The trials of an in-process sweep (Hydra's basic launcher) share what does not
depend on the trial: the read, stripped and tokenized splits, and the output of frozen layers. Entries are never
mutated by their users, so sharing them is safe; the bound keeps memory to a few data sets.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any


class Memo:
    """Least-recently-used memo of at most `size` values."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._values: OrderedDict[Hashable, Any] = OrderedDict()

    def get(self, key: Hashable, compute: Callable[[], Any]) -> tuple[Any, bool]:
        """The value for key, computing it on a miss; the flag says whether it was reused."""
        reused = key in self._values
        if not reused:
            self._values[key] = compute()
            while len(self._values) > self.size:
                self._values.popitem(last=False)
        self._values.move_to_end(key)
        return self._values[key], reused

    def clear(self) -> None:
        self._values.clear()


# One data set in memory, not one per configuration ever seen; each prefix holds one hidden state per review of a
# split.
TOKENIZED_SPLITS = Memo(size=1)
FROZEN_PREFIXES = Memo(size=6)  # per split: the last two runs' train, validation and test sets


def clear_all() -> None:
    """Forget everything memoized in this process (tests use it to compare against a fresh computation)."""
    TOKENIZED_SPLITS.clear()
    FROZEN_PREFIXES.clear()
