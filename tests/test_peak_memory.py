"""metrics.json records the run's peak memory: its own where Linux lets the high-water mark be reset, even after
an earlier, larger run in the same process (an in-process sweep), and says what the figure covers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sentiment_lora import peak_memory
from sentiment_lora.run import train

from .conftest import TINY_FAST, compose_config, write_reviews

RESETTABLE = Path("/proc/self/clear_refs").exists()


def test_a_run_records_its_peak_resident_memory(tmp_path):
    reviews = write_reviews(tmp_path / "reviews.csv", n=40)
    cfg = compose_config([*TINY_FAST, "trainer.epochs=1", "data=csv", f"data.path={reviews}", "save_adapter=false"])
    (tmp_path / "run").mkdir()
    train(cfg, tmp_path / "run")
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())["peak_memory"]
    assert record["since"] == ("run start" if RESETTABLE else "process start")
    assert 50 < record["rss_mb"] < 8000  # a tiny model: the interpreter, torch and the data
    assert "device_mb" not in record  # CPU


@pytest.mark.skipif(not RESETTABLE, reason="no /proc/self/clear_refs: the peak covers the whole process")
def test_the_peak_is_the_runs_own_after_a_larger_allocation_earlier_in_the_process():
    peak_memory.reset()
    ballast = np.ones(600 * 2**20 // 8)  # 600 MiB, touched
    with_ballast = peak_memory.resident_peak_mb()
    del ballast
    assert peak_memory.reset() == "run"
    after_reset = peak_memory.resident_peak_mb()
    assert with_ballast - after_reset > 400
