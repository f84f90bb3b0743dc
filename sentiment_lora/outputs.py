"""What every command does when it writes a table or meets a full, read-only or forbidden disk.

CSV cells that a spreadsheet would run as a formula are neutralised (OWASP's "CSV injection" advice: a cell that
starts with = + - @, a tab or a carriage return gets a leading '), and a write that the disk refuses is one line
naming the path and the space left there.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from sentiment_lora.rundir.files import atomic_target

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# The errors of a disk, not of the program: full (ENOSPC, EDQUOT), read-only (EROFS), not ours (EACCES, EPERM).
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def neutralised_cell(value):
    """A text that a spreadsheet would read as a formula, prefixed with ' (shown, never evaluated); else as is."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def neutralised(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with every text cell neutralised (numbers, negative ones included, are left as numbers)."""
    texts = [
        column
        for column in frame.columns
        if frame[column].dtype == object or pd.api.types.is_string_dtype(frame[column])
    ]
    if not texts:
        return frame
    return frame.assign(**{str(column): frame[column].map(neutralised_cell) for column in texts})


@contextmanager
def atomic_write(path: Path) -> Iterator[Path]:
    """results.atomic_target, whose OSError names `path` when the library that failed did not say which file
    (pandas' and matplotlib's close() after a full disk do not)."""
    try:
        with atomic_target(Path(path)) as tmp:
            yield tmp
    except OSError as err:
        if err.filename is None and err.errno is not None:
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise


def write_csv(frame: pd.DataFrame, path: Path, **to_csv) -> None:
    """The frame as CSV at `path`, text cells neutralised, written whole or not at all (atomic_target)."""
    with atomic_write(path) as tmp:
        neutralised(frame).to_csv(tmp, **to_csv)


def free_space(path: Path) -> str:
    """The space left on the file system that holds `path` (or its nearest existing folder)."""
    folder = Path(path).expanduser().absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return "free space unknown"
    if free >= 2**30:
        return f"{free / 2**30:,.1f} GiB free"
    return f"{free / 2**20:,.1f} MiB free" if free >= 2**20 else f"{free // 2**10:,} KiB free"


def os_error_number(err: BaseException) -> int | None:
    """The errno of an OSError, or of safetensors' SafetensorError, which carries the OS error only in its text
    ("... No space left on device (os error 28)")."""
    if isinstance(err, OSError):
        return err.errno
    if type(err).__name__ == "SafetensorError":
        found = re.search(r"\(os error (\d+)\)|Os \{ code: (\d+)", str(err))
        return int(found.group(1) or found.group(2)) if found else None
    return None


def disk_problem(err: BaseException, fallback: Path) -> str | None:
    """What an error of the disk (full, read-only, not writable) says in one line: the reason, the path it struck
    (else `fallback`) and the space left there, as "no space left on device while writing P (1.2 MiB free)";
    None for any other error."""
    number = os_error_number(err)
    if number not in DISK_ERRNOS:
        return None
    path = Path(getattr(err, "filename", None) or fallback)
    # Name what the user knows, not a temporary: atomic_target's ".NAME.XXXX.tmp" file by NAME, a file in a
    # staging folder (".saving.XXXX.tmp/head.safetensors") by the folder the staging folder is in.
    hidden = [index for index, part in enumerate(path.parts) if part.startswith(".") and part.endswith(".tmp")]
    if hidden and hidden[0] == len(path.parts) - 1:
        path = path.with_name(path.name[1:].rsplit(".", 2)[0])
    elif hidden:
        path = Path(*path.parts[: hidden[0]])
    reason = os.strerror(number)
    space = f" ({free_space(path)} now)" if number in (errno.ENOSPC, errno.EDQUOT) else ""
    return f"{reason[0].lower()}{reason[1:]} while writing {path}{space}"
