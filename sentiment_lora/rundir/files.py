"""File helpers every part of a run directory writes and checks through: the mode a new file gets, atomic writes
(a reader never sees half a file), JSON without NaN, and sha256 digests."""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _jsonable(value: Any) -> Any:
    # JSON has no NaN; null is what readers of metrics.json get for an undefined metric.
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return value


def new_file_mode() -> int:
    """The mode open() gives a new file: 0o666 less the process umask (0o644 under umask 022)."""
    # The umask can only be read by setting it; set it straight back.
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_target(path: Path) -> Iterator[Path]:
    """A temporary path in the same folder to write `path` to; renamed onto it when the block succeeds, removed
    when it fails: readers never see half a file."""
    path = Path(path)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    # mkstemp creates the file 0o600, which the rename would carry over: give it an ordinary file's mode, before
    # it is written (readers of a run in progress) and after (a writer like safetensors' replaces it with its own
    # 0o600 file). One rule for every file of a run: the mode open() gives under the umask.
    os.chmod(tmp, new_file_mode())
    try:
        yield Path(tmp)
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    with atomic_target(path) as tmp, open(tmp, "w") as out:
        json.dump(_jsonable(payload), out, indent=2, allow_nan=False)
        out.write("\n")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
