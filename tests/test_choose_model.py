"""The default model choice (model=choose): FLOPs counted from the encoders' shapes and the data, the most capable
encoder within model.budget_tflops, its log line and record, an explicit model=, the offline fallback, a sweep.
No MPNet weights are needed: its shape comes from conf/model/mpnet.yaml, and where it would train, it is not cached."""

from __future__ import annotations

import csv
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from sentiment_lora import choose_model, sources
from sentiment_lora.choose_model import Choice, Shape
from sentiment_lora.errors import UserError

from .conftest import FILLER, NEGATIVE, POSITIVE, compose_config, run_cli


def write_texts(path: Path, words: int, n: int = 60, seed: int = 0) -> Path:
    """A separable toy set whose texts have about `words` words each."""
    rng = random.Random(seed)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for index in range(n):
            label = index % 2
            cue = max(2, words // 3)
            picked = rng.choices(POSITIVE if label else NEGATIVE, k=cue) + rng.choices(FILLER, k=words - cue)
            rng.shuffle(picked)
            writer.writerow([" ".join(picked), label])
    return path


@pytest.fixture
def short_and_long(tmp_path) -> tuple[Path, Path]:
    return write_texts(tmp_path / "short.csv", words=6), write_texts(tmp_path / "long.csv", words=300)


def estimates_for(args: list[str]) -> dict[str, float]:
    found = choose_model.candidate_configs(args, [arg for arg in args if arg not in ("-m", "--multirun")])
    assert found is not None
    return choose_model.estimates_of(found[1])


@pytest.mark.parametrize("model_type", ["bert", "mpnet"])
def test_the_layer_count_is_what_torch_counts_in_a_forward_pass(model_type):
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.for_model(model_type, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, vocab_size=100)  # fmt: skip
    config._attn_implementation = "eager"  # FlopCounterMode has no formula for the CPU's fused attention
    model = AutoModel.from_config(config, add_pooling_layer=False).eval()
    ids = torch.randint(5, 100, (1, 20))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    assert choose_model.layer_flops(np.array([20]), Shape(2, 32, 64)) * 2 == counter.get_total_flops()


def test_the_encoder_shapes_come_from_the_model_configs():
    from sentiment_lora.sources import package_model_path

    minilm, mpnet = compose_config(["model=minilm"]).model, compose_config(["model=mpnet"]).model
    assert choose_model.encoder_shape(minilm) == Shape(6, 384, 1536)
    assert choose_model.encoder_shape(mpnet) == Shape(12, 768, 3072)
    shipped = json.loads((Path(package_model_path()) / "config.json").read_text())  # MiniLM's own, offline
    assert all(shipped[key] == value for key, value in minilm.arch.items())


def test_the_estimate_follows_the_recipe_depth_epochs_and_prefix_mode():
    lengths = {"train": np.full(100, 64), "val": np.full(20, 64), "test": np.full(30, 64)}
    cfg = compose_config(["model=mpnet"])  # top 3 of 12 layers trained, the 9 below cached
    per_layer = {name: choose_model.layer_flops(split, Shape(12, 768, 3072)) for name, split in lengths.items()}
    above = 3 * (3 * (2 * per_layer["train"] + per_layer["val"]) + per_layer["test"])
    below = 9 * sum(per_layer.values())
    assert choose_model.estimate_tflops(cfg, lengths) == pytest.approx((above + below) / 1e12)
    live = compose_config(["model=mpnet", "trainer.frozen_prefix=live"])
    assert choose_model.estimate_tflops(live, lengths) > choose_model.estimate_tflops(cfg, lengths)
    seed = compose_config(["model=mpnet", "recipe@_global_=seed"])  # every layer adapted: no frozen prefix
    assert choose_model.estimate_tflops(seed, lengths) == pytest.approx(
        12 * (3 * (2 * per_layer["train"] + per_layer["val"]) + per_layer["test"]) / 1e12
    )


def test_short_texts_choose_the_larger_encoder_and_long_texts_the_smaller(short_and_long, monkeypatch):
    short, long = short_and_long
    budget = "model.budget_tflops=2"
    short_estimates = estimates_for(["data=csv", f"data.path={short}", budget])
    long_estimates = estimates_for(["data=csv", f"data.path={long}", budget])
    assert list(short_estimates) == ["mpnet", "minilm"]  # the most capable first
    assert short_estimates["mpnet"] < 2 < long_estimates["mpnet"] and long_estimates["minilm"] < 2
    assert choose_model.choose(short_estimates, 2).chosen == "mpnet"
    assert choose_model.choose(long_estimates, 2).chosen == "minilm"
    # The whole step, with MPNet's weights standing as cached: what the command line gets appended.
    monkeypatch.setattr(sources, "mpnet_cached", lambda cache_dir=None: True)
    args = ["data=csv", f"data.path={short}", budget]
    appended = choose_model.chosen_overrides(args, args)
    assert appended[0] == "model=mpnet" and appended[1].startswith("++model.choice={chosen:'mpnet',budget_tflops:2.0")
    assert choose_model.choose({"mpnet": 5.0, "minilm": 3.0}, 1).chosen == "minilm"  # none fits: the smallest


def test_the_log_line_names_the_choice_the_estimates_the_budget_and_the_way_out():
    line = choose_model.choice_line(Choice("mpnet", 200.0, {"mpnet": 31.2, "minilm": 8.1}))
    assert line == "model mpnet: 31 TFLOP of 200 (minilm would be 8.1); model=minilm for the smaller one"
    line = choose_model.choice_line({"chosen": "minilm", "budget_tflops": 130.0, "estimates": {"mpnet": 327.0,
                                     "minilm": 54.4}, "sweep": True, "fallback": {}})  # fmt: skip
    assert line == ("model minilm: 54 TFLOP of 130 (mpnet would be 327); model=mpnet for the larger one; chosen "
                    "once, from the sweep's first config, for every trial")  # fmt: skip


@pytest.mark.parametrize(
    "named", [["model=tiny"], ["model=minilm"], ["model=mpnet"], ["dry_run=true"], ["--cfg", "job"]]
)
def test_an_explicit_model_or_a_command_that_trains_nothing_is_never_second_guessed(tmp_path, named):
    missing = ["data=csv", f"data.path={tmp_path / 'absent.csv'}"]  # read, it would fail: nothing reads it
    args = [*named, *missing]
    assert choose_model.chosen_overrides(args, [arg for arg in args if not arg.startswith("-") and arg != "job"]) == []


def test_a_download_is_announced_before_it_starts_and_a_failed_one_falls_back(short_and_long, monkeypatch, capsys):
    found = choose_model.candidate_configs(["data=csv", f"data.path={short_and_long[0]}"], [])
    candidates = found[1]
    monkeypatch.setattr(sources, "mpnet_cached", lambda cache_dir=None: False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    announced = []

    def download(cache_dir=None):
        announced.append(capsys.readouterr().err)  # what was said before the download began
        raise UserError("model 'x' is not cached and part-001 could not be downloaded (no network)")

    monkeypatch.setattr(sources, "mpnet_model_path", download)
    choice = choose_model.available(Choice("mpnet", 130.0, {"mpnet": 20.0, "minilm": 4.0}), candidates)
    assert "model mpnet (chosen for this data): its weights are not cached; downloading them once" in announced[0]
    assert (choice.chosen, choice.fallback) == ("minilm", {"from": "mpnet", "reason": "could not be downloaded"})
    said = capsys.readouterr().err
    assert "could not be downloaded (no network)" in said and "training minilm instead" in said
    monkeypatch.setattr(sources, "mpnet_model_path", lambda cache_dir=None: Path("/cache/all-mpnet-base-v2"))
    assert choose_model.available(Choice("mpnet", 130.0, {"mpnet": 20.0}), candidates).chosen == "mpnet"


def test_a_sweep_chooses_from_its_first_config(tmp_path):
    args = ["-m", "hparams_search=learning_curve", "data=csv", f"data.path={tmp_path / 'a.csv'},{tmp_path / 'b.csv'}"]
    base, candidates, sweep = choose_model.candidate_configs(args, args[1:])
    assert sweep and list(candidates) == ["mpnet", "minilm"]
    for cfg in candidates.values():  # the preset's first size, method and seed; the command line's first file
        assert (cfg.data.n_train, cfg.method.name, cfg.trainer.seed) == (100, "lora", 1)
        assert cfg.data.path == str(tmp_path / "a.csv")
    assert (candidates["mpnet"].model.name, candidates["mpnet"].lora.top_layers) == ("mpnet", 3)


def run_record(run_dir: Path) -> tuple[dict, dict]:
    return json.loads((run_dir / "metrics.json").read_text()), yaml.safe_load((run_dir / "run.yaml").read_text())


QUICK = ["trainer.epochs=1", "trainer.batch_size=16", "trainer.max_length=128", "trainer.progress=false"]


@pytest.mark.slow
def test_the_default_run_logs_its_choice_and_records_it(short_and_long, tmp_path, monkeypatch):
    long = short_and_long[1]
    estimates = estimates_for(["data=csv", f"data.path={long}", *QUICK])
    budget = round(math.sqrt(estimates["mpnet"] * estimates["minilm"]), 3)  # MiniLM fits, MPNet does not
    done = run_cli(["data=csv", f"data.path={long}", *QUICK, f"model.budget_tflops={budget}",
                    f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    line = choose_model.choice_line(Choice("minilm", budget, estimates))
    assert line.startswith("model minilm: ") and "(mpnet would be " in line and "model=mpnet for the larger one" in line
    assert line in (tmp_path / "run" / "train.log").read_text()
    metrics, run_yaml = run_record(tmp_path / "run")
    assert metrics["model"]["name"] == "minilm" and metrics["status"] == "complete"
    assert metrics["model"]["choice"] == {"chosen": "minilm", "budget_tflops": budget, "estimates": estimates,
                                          "sweep": False, "fallback": {}}  # fmt: skip
    # The run's own config says which model ran, as if the command had named it (predict and export read it).
    assert "model=minilm" in yaml.safe_load((tmp_path / "run" / ".hydra" / "overrides.yaml").read_text())
    assert "model=minilm" in run_yaml["overrides"] and run_yaml["config"]["model"]["name"] == "minilm"
    # A named model records no choice and logs none.
    done = run_cli(["model=tiny", "data=csv", f"data.path={long}", *QUICK, f"hydra.run.dir={tmp_path / 'named'}"],
                   cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert run_record(tmp_path / "named")[0]["model"]["choice"] is None
    assert "TFLOP of" not in (tmp_path / "named" / "train.log").read_text()


@pytest.mark.slow
def test_offline_with_nothing_cached_falls_back_to_minilm_with_one_line(short_and_long, tmp_path, monkeypatch):
    monkeypatch.setenv("SENTIMENT_LORA_CACHE", str(tmp_path / "empty-cache"))  # run_cli adds HF_HUB_OFFLINE=1
    done = run_cli(["data=csv", f"data.path={short_and_long[0]}", *QUICK, f"hydra.run.dir={tmp_path / 'run'}"],
                   cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    said = [line for line in done.stderr.splitlines() if "mpnet" in line and "HF_HUB_OFFLINE" in line]
    assert said == ["model minilm: mpnet would fit the budget but is not cached and HF_HUB_OFFLINE=1; training "
                    "minilm instead"]  # fmt: skip
    metrics = run_record(tmp_path / "run")[0]
    assert metrics["model"]["name"] == "minilm"
    assert metrics["model"]["choice"]["fallback"] == {"from": "mpnet", "reason": "is not cached and HF_HUB_OFFLINE=1"}
    assert not (tmp_path / "empty-cache" / "models").exists()  # nothing was fetched


@pytest.mark.slow
def test_every_trial_of_a_sweep_trains_the_model_its_first_config_chose(short_and_long, tmp_path):
    short, long = short_and_long
    estimates = estimates_for(["data=csv", f"data.path={long}", *QUICK])
    budget = round(math.sqrt(estimates["mpnet"] * estimates["minilm"]), 3)
    assert estimates_for(["data=csv", f"data.path={short}", *QUICK])["mpnet"] < budget  # alone, it would be MPNet
    done = run_cli(["-m", "data=csv", f"data.path={long},{short}", *QUICK, f"model.budget_tflops={budget}",
                    f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    records = [run_record(tmp_path / "sweep" / str(job))[0] for job in (0, 1)]
    assert [record["data"]["path"] for record in records] == [str(long), str(short)]
    assert [record["model"]["name"] for record in records] == ["minilm", "minilm"]
    assert all(record["model"]["choice"]["sweep"] and record["model"]["choice"]["estimates"] == estimates
               for record in records)  # fmt: skip
    assert (
        "chosen once, from the sweep's first config, for every trial"
        in (tmp_path / "sweep" / "1" / "train.log").read_text()
    )


@pytest.mark.slow
def test_the_cost_benchmark_sets_a_runs_estimate_beside_its_wall_time(tmp_path):
    import subprocess
    import sys

    from sentiment_lora.run import train_seeds

    from .conftest import REPO, TINY_FAST

    reviews = write_texts(tmp_path / "reviews.csv", words=12, n=40)
    cfg = compose_config([*TINY_FAST, "trainer.epochs=1", "data=csv", f"data.path={reviews}"])
    (tmp_path / "run").mkdir()
    train_seeds(cfg, tmp_path / "run")  # as the command line runs it: run.yaml too
    done = subprocess.run([sys.executable, str(REPO / "bench" / "choice_cost.py"), str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    row = done.stdout.strip().splitlines()[-1].split(" | ")
    lengths = choose_model.split_lengths(cfg)
    assert row[1] == "tiny" and row[2] == "/".join(str(len(lengths[name])) for name in ("train", "val", "test"))
    assert float(row[4].split(",")[0]) == pytest.approx(choose_model.estimate_tflops(cfg, lengths), rel=0.01)
    wall = json.loads((tmp_path / "run" / "metrics.json").read_text())["time_s"]
    assert row[5].split(",")[0] == f"{wall:.0f}"
