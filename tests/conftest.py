"""Shared fixtures: tiny CSVs made on the fly, config composition, and the CLI run in a subprocess."""

from __future__ import annotations

import csv
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import sentiment_lora.train  # noqa: F401  (registers the structured configs)

# Tiny models gain nothing from a second thread, and OpenMP threads spinning against other work on a 2-core
# machine slow each step a hundredfold: one thread here and in every subprocess the tests start.
torch.set_num_threads(1)
os.environ["OMP_NUM_THREADS"] = "1"

REPO = Path(__file__).resolve().parents[1]

# SENTIMENT_LORA_TEST_AUTO_BF16=1 runs the suite as a CPU with native bf16 (AVX512-BF16/AMX) would: there
# trainer.precision=auto resolves to bf16 autocast, here usually to fp32, and a test that compares numbers without
# pinning trainer.precision passes on one kind of machine only. The fixture below covers this process, a
# sitecustomize (tests/bf16_site) every Python subprocess the tests start. Run the suite both ways when touching
# numerics or tests that compare them.
AUTO_BF16 = os.environ.get("SENTIMENT_LORA_TEST_AUTO_BF16") == "1"
if AUTO_BF16:
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO / "tests" / "bf16_site"), os.environ.get("PYTHONPATH")])
    )


@pytest.fixture(autouse=True, scope="session")
def _auto_precision_as_on_a_bf16_cpu():
    if not AUTO_BF16:
        yield
        return
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sentiment_lora.runtime.cpu_supports_bf16", lambda: True)
        yield


CONF = REPO / "conf"

POSITIVE = ["great", "wonderful", "loved", "excellent", "superb", "moving", "brilliant", "fun"]
NEGATIVE = ["awful", "boring", "hated", "terrible", "dull", "bad", "weak", "tedious"]
FILLER = ["the", "movie", "plot", "actor", "film", "scene", "story", "ending", "cast", "script"]


def write_reviews(path: Path, n: int = 80, seed: int = 0, html: bool = True) -> Path:
    """A separable toy sentiment CSV (text,label) with HTML markup like IMDB's."""
    rng = random.Random(seed)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for i in range(n):
            label = i % 2
            words = rng.choices(POSITIVE if label else NEGATIVE, k=4) + rng.choices(FILLER, k=6)
            rng.shuffle(words)
            text = " ".join(words)
            writer.writerow([f"<p>{text}<br /><br />the end</p>" if html else text, label])
    return path


@pytest.fixture
def reviews_csv(tmp_path: Path) -> Path:
    return write_reviews(tmp_path / "reviews.csv")


def compose_config(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF)):
        return compose(config_name="config", overrides=overrides)


def run_cli(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m sentiment_lora.train ARGS` as a user would run it, offline, without progress bars."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [sys.executable, "-m", "sentiment_lora.train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


TINY_FAST = [
    "model=tiny",
    "trainer.epochs=2",
    "trainer.batch_size=8",
    "trainer.max_length=32",
    "optimizer.lr=1e-2",
    "trainer.progress=false",
]
