"""Run directory artefacts: metrics.json (written atomically) and the test predictions."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "test_predictions.csv"


def _jsonable(value: Any) -> Any:
    # JSON has no NaN; null is what readers of metrics.json get for an undefined metric.
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return value


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Write to a temporary file in the same folder, then rename: readers never see half a file."""
    path = Path(path)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(handle, "w") as out:
        json.dump(_jsonable(payload), out, indent=2, allow_nan=False)
        out.write("\n")
    os.replace(tmp, path)


def read_metrics(run_dir: Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / METRICS_FILE).read_text())


def write_predictions(run_dir: Path, labels: np.ndarray, probs: np.ndarray) -> None:
    frame = pd.DataFrame({"label": labels.astype(int), "prob": probs, "prediction": (probs >= 0.5).astype(int)})
    frame.to_csv(Path(run_dir) / PREDICTIONS_FILE, index_label="row")
