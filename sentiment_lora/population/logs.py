"""Each population member's log lines in its own run directory's log file, as a single run's would be.

One process trains every member, so Hydra's one log file per job cannot follow the members: lines logged for a
member (inside `member_context`) go to its file only, lines about the population as a whole to every member's.
The standard library's logging has filters for this; a context variable says whose line it is.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_CURRENT: contextvars.ContextVar[int | None] = contextvars.ContextVar("population_member", default=None)


@contextmanager
def member_context(index: int) -> Iterator[None]:
    token = _CURRENT.set(index)
    try:
        yield
    finally:
        _CURRENT.reset(token)


class _MemberFilter(logging.Filter):
    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        current = _CURRENT.get()
        return current is None or current == self.index


def route_to_members(log_files: dict[int, Path]) -> list[logging.Handler]:
    """Replace the root logger's file handlers (Hydra's, pointing at the last job set up) with one per member;
    returns the new handlers, for `unroute`."""
    root = logging.getLogger()
    formatter = logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            formatter = handler.formatter or formatter
            root.removeHandler(handler)
            handler.close()
    handlers = []
    for index, path in log_files.items():
        handler = logging.FileHandler(path, mode="a")
        handler.setFormatter(formatter)
        handler.addFilter(_MemberFilter(index))
        root.addHandler(handler)
        handlers.append(handler)
    return handlers


def unroute(handlers: list[logging.Handler]) -> None:
    root = logging.getLogger()
    for handler in handlers:
        root.removeHandler(handler)
        handler.close()
