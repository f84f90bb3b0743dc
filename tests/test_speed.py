"""Speed levers leave results unchanged: frozen-prefix caching is exact, length grouping and length-sorted
evaluation only reorder work, top_layers puts adapters where it says, the data memo changes nothing."""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from sentiment_lora import loop, memo, prefix, runtime
from sentiment_lora.data import pipeline as data_lib
from sentiment_lora.errors import UserError
from sentiment_lora.methods.lora_adapters import attach_lora
from sentiment_lora.methods.targets import matched_modules
from sentiment_lora.model import SentimentClassifier, build_encoder, classifier_of, frozen_depth, load_tokenizer
from sentiment_lora.run import set_up, train

from .conftest import REPO, TINY_FAST, compose_config, write_reviews

# 4 layers so that top_layers leaves a real frozen prefix below the adapters.
DEEP_TINY = [*TINY_FAST, "model.arch.num_hidden_layers=4", "trainer.epochs=2", "save_adapter=false"]

# How close 'cache' comes to 'eval' (the same dropout-free prefix, recomputed every step), per precision. The cache
# holds the prefix's fp32 output, computed once in length-sorted evaluation batches; 'eval' recomputes it in each
# training batch, padded otherwise, so sums run in another order and differ in the last fp32 bits. In fp32 that
# stays at float rounding (measured < 1e-7 on these losses). Under bf16 autocast the layers above round their
# inputs to bf16 (8 significant bits), and a last-bit fp32 difference now and then lands on the other side of a
# bf16 rounding: a few activations move by one bf16 step (0.4-0.8%), so a few reviews' logits differ by a few bf16
# steps while most stay bit-identical (with only the embeddings cached nothing moves at all: they do not depend on
# padding). Training feeds those differences back through every step, so the runs drift apart: over 20 seeds x
# the 4 cases below, 2 epochs at lr 1e-2, the losses differed by at most 2e-3 (median 3e-5). bf16 therefore gets
# 1e-2 on losses, and its accuracies are not compared: these barely trained models put many reviews near 0.5, and
# in 1 of those 80 runs 2 of 12 validation reviews crossed it. What still fails bf16 is a cache of the wrong layers
# or of another model; whether the cache drops dropout exactly as 'eval' does is settled in fp32, where dropout
# alone moves these losses by 6e-3 to 9e-2.
CACHE_TOLERANCE = {"fp32": 1e-5, "bf16": 1e-2}


def run(tmp_path, name, overrides):
    (tmp_path / name).mkdir()
    train(compose_config(overrides), tmp_path / name)
    return json.loads((tmp_path / name / "metrics.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize(
    "lora_overrides",
    [[], ["lora.top_layers=1"], ["lora.top_layers=3", "lora/targets=all"], ["lora/targets=head"]],
    ids=["every-layer", "top-1", "top-3-all", "head-only"],
)
def test_cached_frozen_prefix_gives_the_numbers_of_the_uncached_dropout_free_prefix(
    tmp_path, lora_overrides, precision
):
    reviews = write_reviews(tmp_path / "reviews.csv", n=120)
    overrides = [*DEEP_TINY, "data=csv", f"data.path={reviews}", *lora_overrides, f"trainer.precision={precision}"]
    recomputed = run(tmp_path, "eval", [*overrides, "trainer.frozen_prefix=eval"])
    cached = run(tmp_path, "cache", [*overrides, "trainer.frozen_prefix=cache"])
    assert recomputed["precision"] == cached["precision"] == precision
    tolerance = CACHE_TOLERANCE[precision]
    for before, after in zip(recomputed["history"], cached["history"], strict=True):
        assert after["train_loss"] == pytest.approx(before["train_loss"], abs=tolerance)
        assert after["val_loss"] == pytest.approx(before["val_loss"], abs=tolerance)
    assert cached["test"]["loss"] == pytest.approx(recomputed["test"]["loss"], abs=tolerance)
    if precision == "fp32":
        assert [h["val_accuracy"] for h in cached["history"]] == [h["val_accuracy"] for h in recomputed["history"]]
        assert cached["test"]["accuracy"] == recomputed["test"]["accuracy"]
    assert cached["params"] == recomputed["params"]


@pytest.mark.slow
def test_live_prefix_keeps_dropout_in_frozen_layers_so_it_differs_from_eval(tmp_path):
    # The guard on the test above: were 'eval' a no-op, 'eval' and 'cache' could agree for the wrong reason.
    reviews = write_reviews(tmp_path / "reviews.csv", n=120)
    overrides = [*DEEP_TINY, "data=csv", f"data.path={reviews}", "lora.top_layers=1", "trainer.precision=fp32"]
    live = run(tmp_path, "live", [*overrides, "trainer.frozen_prefix=live"])
    dropout_free = run(tmp_path, "eval", [*overrides, "trainer.frozen_prefix=eval"])
    assert live["history"][0]["train_loss"] != dropout_free["history"][0]["train_loss"]


def deep_tiny_model(overrides):
    cfg = compose_config(["model=tiny", "model.arch.num_hidden_layers=4", *overrides])
    torch.manual_seed(0)
    classifier = SentimentClassifier(build_encoder(cfg.model, None), "mean", 0.0, cfg.model.layers_path)
    return attach_lora(classifier, cfg.lora, cfg.model.targets_map)


@pytest.mark.parametrize(
    ("overrides", "adapted_layers", "depth"),
    [
        ([], {0, 1, 2, 3}, 0),
        (["lora.top_layers=4"], {0, 1, 2, 3}, 0),
        (["lora.top_layers=2"], {2, 3}, 2),
        (["lora.top_layers=1", "lora/targets=all"], {3}, 3),
        (["lora/targets=head"], set(), 4),
    ],
)
def test_top_layers_puts_adapters_only_in_the_last_layers(overrides, adapted_layers, depth):
    model = deep_tiny_model(overrides)
    lora_modules = [name for name in matched_modules(model, r".*\.lora_A") if ".layer." in name]
    assert {int(name.split(".layer.")[1].split(".")[0]) for name in lora_modules} == adapted_layers
    assert frozen_depth(classifier_of(model)) == depth


def test_top_layers_beyond_the_encoder_is_a_config_error():
    with pytest.raises(UserError, match="lora.top_layers: 5 exceeds the encoder's 4 layers"):
        deep_tiny_model(["lora.top_layers=5"])


def test_length_grouped_batches_cover_every_review_once_pad_less_and_repeat_with_the_seed(tmp_path):
    cfg = compose_config(["model=tiny", "data=csv", f"data.path={write_reviews(tmp_path / 'r.csv', n=60)}"])
    tokenizer = load_tokenizer(cfg.model, None)
    rows = [{"input_ids": list(range(1, n + 2)), "attention_mask": [1] * (n + 1), "labels": 0.0} for n in range(200)]

    def batches(grouped, seed=3):
        return [batch["input_ids"] for batch in data_lib.loader(rows, tokenizer, 8, seed=seed, group_by_length=grouped)]

    grouped, shuffled = batches(True), batches(False)
    for epoch in (grouped, shuffled):
        seen = sorted(int((ids != 0).sum()) for batch in epoch for ids in batch)
        assert seen == list(range(1, 201))
    padded = {name: sum(b.numel() for b in epoch) for name, epoch in (("grouped", grouped), ("shuffled", shuffled))}
    assert padded["grouped"] < 0.8 * padded["shuffled"]
    assert [b.tolist() for b in batches(True)] == [b.tolist() for b in grouped]
    assert [b.tolist() for b in batches(True, seed=4)] != [b.tolist() for b in grouped]


@pytest.mark.slow
def test_length_grouping_is_a_config_choice_that_still_learns(tmp_path):
    reviews = write_reviews(tmp_path / "reviews.csv", n=160)
    overrides = [*TINY_FAST, "trainer.epochs=3", "data=csv", f"data.path={reviews}", "save_adapter=false"]
    grouped = run(tmp_path, "grouped", [*overrides, "trainer.length_grouping=true"])
    shuffled = run(tmp_path, "shuffled", [*overrides, "trainer.length_grouping=false"])
    assert grouped["speed"]["length_grouping"] and not shuffled["speed"]["length_grouping"]
    assert grouped["history"][0]["train_loss"] != shuffled["history"][0]["train_loss"]  # batches really differ
    assert grouped["data_fingerprint"] == shuffled["data_fingerprint"]


@pytest.mark.slow
def test_runs_in_one_process_read_and_tokenize_the_data_once(tmp_path, monkeypatch):
    reviews = write_reviews(tmp_path / "reviews.csv", n=60)
    loads = []
    real_load = data_lib.load_data
    monkeypatch.setattr(data_lib, "load_data", lambda cfg: loads.append(1) or real_load(cfg))
    overrides = [*TINY_FAST, "trainer.epochs=1", "data=csv", f"data.path={reviews}", "save_adapter=false"]
    first = run(tmp_path, "a", overrides)
    second = run(tmp_path, "b", [*overrides, "lora.rank=2"])
    third = run(tmp_path, "c", [*overrides, "trainer.max_length=16"])  # another tokenization: read again
    assert len(loads) == 2
    assert first["data_fingerprint"] == second["data_fingerprint"] == third["data_fingerprint"]


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_runs_in_one_process_that_freeze_the_same_layers_compute_the_prefix_once_and_exactly(
    tmp_path, monkeypatch, precision
):
    # A reused prefix is the very tensor a fresh computation gives (same batches, same precision): equal in both.
    reviews = write_reviews(tmp_path / "reviews.csv", n=120)
    overrides = [*DEEP_TINY, "data=csv", f"data.path={reviews}", "trainer.frozen_prefix=cache", "lora.top_layers=2",
                 f"trainer.precision={precision}"]  # fmt: skip
    computed = []
    real_cache = prefix.cache_frozen_prefix
    monkeypatch.setattr(prefix, "cache_frozen_prefix", lambda *args: computed.append(args[2]) or real_cache(*args))
    run(tmp_path, "a", overrides)
    reused = run(tmp_path, "b", [*overrides, "lora.rank=2", "optimizer.lr=3e-3"])  # same frozen layers: reused
    run(tmp_path, "c", [*overrides, "lora.top_layers=1"])  # one more frozen layer: computed
    assert computed == [2, 2, 2, 3, 3, 3]  # one call per split (train, val, test) and prefix depth
    memo.clear_all()
    fresh = run(tmp_path, "d", [*overrides, "lora.rank=2", "optimizer.lr=3e-3"])
    for a, b in zip(fresh["history"], reused["history"], strict=True):
        assert (b["train_loss"], b["val_loss"]) == pytest.approx((a["train_loss"], a["val_loss"]), abs=1e-6)
    assert reused["test"]["loss"] == pytest.approx(fresh["test"]["loss"], abs=1e-6)


@pytest.mark.parametrize("method", ["lora", "linear_probe"])
def test_runs_on_other_training_sizes_reuse_the_evaluation_sets_prefix(tmp_path, monkeypatch, method):
    # A learning curve: the evaluation sets are drawn first, so every size shares them and their prefix.
    reviews = write_reviews(tmp_path / "reviews.csv", n=120)
    overrides = [*DEEP_TINY, "data=csv", f"data.path={reviews}", "data.n_val=20", "data.n_test=20",
                 "trainer.frozen_prefix=cache", "lora.top_layers=2", "trainer.precision=fp32", "trainer.epochs=1",
                 f"method={method}", "save_adapter=false"]  # fmt: skip
    computed = []
    real_cache = prefix.cache_frozen_prefix
    monkeypatch.setattr(prefix, "cache_frozen_prefix", lambda *args: computed.append(len(args[1])) or real_cache(*args))
    small = run(tmp_path, "small", [*overrides, "data.n_train=30"])
    memo.TOKENIZED_SPLITS.clear()  # as another data config does
    large = run(tmp_path, "large", [*overrides, "data.n_train=60"])
    assert small["eval_fingerprint"] == large["eval_fingerprint"]
    assert computed == [30, 20, 20, 60]  # the second size computes its own training set only
    memo.clear_all()
    fresh = run(tmp_path, "fresh", [*overrides, "data.n_train=60"])
    assert fresh["test"]["loss"] == pytest.approx(large["test"]["loss"], abs=1e-6)
    assert fresh["history"][0]["val_loss"] == pytest.approx(large["history"][0]["val_loss"], abs=1e-6)


def test_the_sweep_benchmark_compares_the_same_search_through_both_paths():
    from .test_config import compose_with_hydra

    bench_conf = f"hydra.searchpath=[file://{Path(__file__).resolve().parents[1] / 'bench' / 'conf'}]"
    plain = compose_with_hydra([bench_conf, "hparams_search=bench_plain"])
    fast = compose_with_hydra([bench_conf, "hparams_search=bench_fast"])
    # One sweeper (its per-trial seeding) and a sampler whose draws ignore results: the same parameters both ways.
    assert plain.hydra.sweeper._target_ == fast.hydra.sweeper._target_
    assert fast.hydra.sweeper._target_.endswith("LoraOptunaSweeper") and fast.hydra.sweeper.pruner is not None
    for key in ("params", "n_trials", "direction"):
        assert plain.hydra.sweeper[key] == fast.hydra.sweeper[key]
    assert plain.hydra.sweeper.sampler == fast.hydra.sweeper.sampler
    assert plain.hydra.sweeper.sampler._target_.endswith("RandomSampler")
    assert (plain.trainer.frozen_prefix, fast.trainer.frozen_prefix) == ("live", "cache")
    assert not plain.trainer.length_grouping and plain.model.attention_dropout is None


@functools.cache
def throughput_bench():
    spec = importlib.util.spec_from_file_location("throughput_bench", REPO / "bench" / "throughput.py")
    module = importlib.util.module_from_spec(spec)
    with pytest.MonkeyPatch.context() as patch:  # the configs are registered already: no second registration
        patch.setattr("sentiment_lora.config.register_configs", lambda: None)
        spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("precision", "native_bf16", "expected"),
    [("auto", True, "bf16"), ("auto", False, "fp32"), ("bf16", False, "bf16"), ("fp32", True, "fp32")],
)
def test_the_throughput_benchmark_gives_the_hf_trainer_the_precision_of_the_sentiment_lora_runs(
    monkeypatch, tmp_path, precision, native_bf16, expected
):
    bench = throughput_bench()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: native_bf16)
    cfg = compose_config(["model=tiny", f"trainer.precision={precision}"])
    device = runtime.pick_device(cfg.trainer.device)
    assert runtime.precision_name(runtime.pick_dtype(cfg.trainer.precision, device)) == expected  # what train() runs
    assert bench.run_precision(cfg) == expected
    assert bench.training_arguments(cfg, str(tmp_path)).bf16 == (expected == "bf16")
    timing = {"val_accuracy": 0.5, "precision": expected, "trainable": 9}
    rows = [("HF Trainer + PEFT", {"wall_s": 2.0, **timing}), ("sentiment-lora fast", {"wall_s": 1.0, **timing})]
    lines = bench.table(rows, 10).splitlines()
    assert lines[0].split("|")[2].strip() == "precision"
    assert [line.split("|")[2].strip() for line in lines[2:]] == [expected, expected]


def test_a_cache_of_the_embeddings_alone_runs_as_eval_and_holds_nothing(tmp_path, monkeypatch):
    # Adapters in the first layer leave only the embeddings frozen: cheap to recompute, every token's state to hold.
    reviews = write_reviews(tmp_path / "reviews.csv", n=60)
    overrides = [*DEEP_TINY, "data=csv", f"data.path={reviews}", "trainer.precision=fp32", "trainer.epochs=1"]
    computed = []
    real_cache = prefix.cache_frozen_prefix
    monkeypatch.setattr(prefix, "cache_frozen_prefix", lambda *args: computed.append(args[2]) or real_cache(*args))
    cached = run(tmp_path, "cache", [*overrides, "trainer.frozen_prefix=cache"])
    recomputed = run(tmp_path, "eval", [*overrides, "trainer.frozen_prefix=eval"])
    assert computed == [] and cached["prefix_cache_s"] == 0
    assert cached["history"][0]["train_loss"] == recomputed["history"][0]["train_loss"]
    assert cached["test"]["loss"] == recomputed["test"]["loss"]
    computed.clear()
    run(tmp_path, "top", [*overrides, "trainer.frozen_prefix=cache", "lora.top_layers=2"])  # two layers below
    assert computed == [2, 2, 2]


def test_the_test_splits_prefix_waits_for_the_test_pass_and_gives_the_encoders_own_numbers(tmp_path):
    # The test split is read once per run: its cache held through training bought nothing and cost its size
    # (1.4 GB on the default draw at MiniLM's depth 3), so it is computed when the test pass asks for it.
    reviews = write_reviews(tmp_path / "reviews.csv", n=60)
    cfg = compose_config([*DEEP_TINY, "data=csv", f"data.path={reviews}", "trainer.precision=fp32",
                          "trainer.frozen_prefix=cache", "lora.top_layers=2"])  # fmt: skip
    memo.clear_all()
    (tmp_path / "run").mkdir()
    run_ = set_up(cfg, tmp_path / "run")
    assert "prefix" in run_.frozen.rows["val"][0] and "prefix" not in run_.frozen.rows["test"][0]
    _, _, from_cache = run_.evaluate("test")
    assert "prefix" in run_.frozen.rows["test"][0] and not run_.frozen.pending
    every_layer = loop.predict(run_.model, run_.encoded["test"], run_.tokenizer, cfg.trainer.eval_batch_size,
                               run_.device, run_.dtype)  # fmt: skip
    assert from_cache == pytest.approx(every_layer, abs=1e-6)
