"""One writer per folder: an advisory lock on a run directory (a sweep's grid point included) or an export's output
folder, held for as long as a process writes it.

The lock is `fcntl.flock` on a file beside the folder, `.<name>.lock` in its parent, never inside it: a run's
files, their sha256 listing and the "is it empty?" checks never see it, and an export's folder, which is renamed
into place, keeps it across the rename. The kernel releases a flock when its process ends, however it ends (kill -9
included), so a lock is never stale; the file itself is removed on release, and a file left by a killed process is
simply locked again by the next one. The file holds the holder's pid and start time, for the refusal's one line.

Hand-written rather than `filelock`: it needs the holder's pid in the refusal, the lock taken again in one process
(Hydra's resolver takes it, the job then asserts it), and the file removed without a race (see `acquire`).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from sentiment_lora.errors import UserError

LOCK_SUFFIX = ".lock"
# Where no lock file can be made (a read-only or full parent folder), the folder itself is flocked: it still keeps
# two writers apart, without the holder's pid.
NO_LOCK_FILE = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT)
_held: dict[Path, tuple[int, bool]] = {}  # folder (resolved) -> (flocked descriptor, whether it is the lock file)


class InUse(UserError):
    """Another live process holds the folder's lock."""


def lock_file(folder: Path) -> Path:
    folder = Path(folder).expanduser().resolve()
    return folder.parent / f".{folder.name}{LOCK_SUFFIX}"


def holds(folder: Path) -> bool:
    """Whether this process holds the folder's lock."""
    return Path(folder).expanduser().resolve() in _held


def _holder(handle: int) -> str:
    """`process 1234 (started ...)` from the lock file; its holder may not have written it yet: a short wait."""
    for _ in range(20):
        os.lseek(handle, 0, os.SEEK_SET)
        try:
            info = json.loads(os.read(handle, 4096) or b"null")
        except ValueError:
            info = None
        if isinstance(info, dict) and "pid" in info:
            return f"process {info['pid']} (started {info.get('started', '?')})"
        time.sleep(0.05)
    return "another process"


def acquire(folder: Path, what: str = "run directory") -> None:
    """Take the folder's lock, or raise InUse naming the holder. Taking it again in the holding process is a no-op."""
    key = Path(folder).expanduser().resolve()
    if key in _held:
        return
    path = lock_file(key)
    while True:
        try:
            handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            if err.errno not in NO_LOCK_FILE:
                raise
            _lock_the_folder_itself(key, folder, what)
            return
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(handle)
            os.close(handle)
            raise _in_use(folder, what, holder) from None
        # The previous holder removes the file on release: a lock on a file no longer at `path` guards nothing.
        try:
            same = os.stat(path).st_ino == os.fstat(handle).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(handle)
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    os.ftruncate(handle, 0)
    os.write(handle, json.dumps({"pid": os.getpid(), "started": started, "folder": str(key)}).encode())
    _held[key] = (handle, True)


def _in_use(folder: Path, what: str, holder: str) -> InUse:
    other = "directory" if what == "run directory" else "folder"
    return InUse(f"{what} {folder}: in use by {holder}; wait for it, or use another {other}")


def _lock_the_folder_itself(key: Path, folder: Path, what: str) -> None:
    """No lock file can be made beside the folder: flock the folder (a directory descriptor); a folder that does
    not exist there cannot be written either, so there is nothing to lock."""
    try:
        handle = os.open(key, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(handle)
        raise _in_use(folder, what, "another process") from None
    _held[key] = (handle, False)


def release(folder: Path) -> None:
    """Give the lock back (the file removed first, while still locked: see `acquire`)."""
    key = Path(folder).expanduser().resolve()
    handle, is_lock_file = _held.pop(key, (None, False))
    if handle is None:
        return
    if is_lock_file:
        lock_file(key).unlink(missing_ok=True)
    os.close(handle)


@contextmanager
def holding(folder: Path, what: str = "run directory"):
    """The folder's lock for the block; one taken before the block (by this process) is left held after it."""
    taken_here = not holds(folder)
    acquire(folder, what)
    try:
        yield
    finally:
        if taken_here:
            release(folder)
