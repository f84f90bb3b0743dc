"""SIGTERM and SIGHUP stop a command as Ctrl-C does: the `finally` blocks that remove temporary files run, and the
command says in one line that it stopped. Python's default for both ends the process on the spot: an export left
its hidden temporary folder behind, and a run stopped silently."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sentiment_lora.errors import UserError, exit_with
from sentiment_lora.outputs import disk_problem

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Stopped(KeyboardInterrupt):
    """A stop signal other than SIGINT, raised where Ctrl-C's KeyboardInterrupt would be, so the same handling
    (cleanup, the one line) serves both."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stopped(signum: int, _frame) -> None:
    raise Stopped(signum)


def signal_name(err: KeyboardInterrupt) -> str:
    return signal.Signals(err.signum).name if isinstance(err, Stopped) else "SIGINT"


def exit_status(err: KeyboardInterrupt) -> int:
    """128 + the signal's number, what a shell reports for a command a signal stopped (130 for Ctrl-C)."""
    return 128 + (err.signum if isinstance(err, Stopped) else signal.SIGINT)


@contextmanager
def stop_signals_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise Stopped. A signal whose handler is not Python's default is left
    alone: a launcher's own (submitit's inside a SLURM job), or SIGHUP ignored under nohup."""
    installed = {}
    for signum in STOP_SIGNALS if threading.current_thread() is threading.main_thread() else ():
        if signal.getsignal(signum) is signal.SIG_DFL:
            installed[signum] = signal.signal(signum, _raise_stopped)
    try:
        yield
    finally:
        for signum, previous in installed.items():
            signal.signal(signum, previous)


@contextmanager
def one_line_faults(stopped: str, fallback: Path) -> Iterator[None]:
    """A command's stop signals and disk errors as one `error:` line: Ctrl-C, SIGTERM and SIGHUP say `stopped`
    ("export interrupted (SIGTERM); OUT was left as it was") and exit 128 + the signal; a full, read-only or
    forbidden disk names the path and the space left (outputs.disk_problem), exit 2. The `finally` blocks inside
    (atomic writes, an export's temporary folder) have run by then, so nothing half-written is left."""
    try:
        with stop_signals_interrupt():
            yield
    except KeyboardInterrupt as err:
        print(f"error: {stopped.replace('{signal}', signal_name(err))}", file=sys.stderr)
        sys.exit(exit_status(err))
    except Exception as err:
        problem = disk_problem(err, fallback)
        if problem is None:
            raise
        exit_with(UserError(f"{problem}; nothing half-written was left"))
