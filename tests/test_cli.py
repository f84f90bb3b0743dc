"""End-to-end runs on a tiny random-init model: artefacts, reload, reproducibility, and user errors."""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoConfig, AutoModel

from sentiment_lora import data as data_lib
from sentiment_lora.loop import TrainingDiverged, evaluate
from sentiment_lora.model import load_trained
from sentiment_lora.run import train
from sentiment_lora.train import cli

from .conftest import TINY_FAST, compose_config, run_cli, write_reviews

METRIC_KEYS = {"accuracy", "f1", "precision", "recall", "roc_auc", "loss", "n"}


@pytest.mark.slow
def test_cli_run_writes_complete_artefacts_and_the_adapter_reproduces_test_predictions(tmp_path, reviews_csv):
    run_dir = tmp_path / "run"
    done = run_cli([*TINY_FAST, "data=csv", f"data.path={reviews_csv}", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "complete"
    assert set(metrics["params"]) >= {"trainable", "total", "by_group"}
    assert set(metrics["params"]["by_group"]) >= {"lora", "head"}
    assert METRIC_KEYS <= set(metrics["test"]) and "accuracy" in metrics["val"]
    assert 1 <= metrics["val"]["epoch"] <= 2 and len(metrics["history"]) == 2
    assert metrics["split_sizes"] == {"train": 64, "val": 8, "test": 8}
    assert metrics["model"]["name"] == "tiny" and metrics["lora"]["targets"] == ["q", "v"]
    assert metrics["data"]["path"] == str(reviews_csv) and metrics["time_s"] > 0
    assert (run_dir / ".hydra" / "config.yaml").exists() and (run_dir / "train.log").exists()
    for name in ("adapter/adapter_model.safetensors", "adapter/adapter_config.json", "head.safetensors"):
        assert (run_dir / name).exists(), name
    assert "epoch 2" in (run_dir / "train.log").read_text()

    # Reload from the run directory alone and predict the test split again.
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    model, tokenizer = load_trained(cfg.model, run_dir)
    rows = data_lib.encode(data_lib.load_splits(cfg.data)["test"], tokenizer, cfg.trainer.max_length)
    test, _, probs = evaluate(model, rows, tokenizer, 4, torch.device("cpu"), None)
    saved = pd.read_csv(run_dir / "test_predictions.csv")
    np.testing.assert_allclose(probs, saved["prob"].to_numpy(), rtol=0, atol=1e-5)
    assert test["accuracy"] == pytest.approx(metrics["test"]["accuracy"])


@pytest.mark.slow
def test_train_returns_the_selected_val_accuracy_and_is_reproducible(tmp_path, reviews_csv):
    overrides = [*TINY_FAST, "trainer.epochs=3", "data=csv", f"data.path={reviews_csv}", "lora/targets=qkv"]
    results = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        returned = train(compose_config(overrides), tmp_path / name)
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        assert returned == metrics["val"]["accuracy"]
        results.append(metrics)
    for key in ("val", "test", "params", "data_fingerprint"):
        assert results[0][key] == results[1][key]
    assert [h["train_loss"] for h in results[0]["history"]] == [h["train_loss"] for h in results[1]["history"]]
    # A different seed really is a different run.
    (tmp_path / "c").mkdir()
    train(compose_config([*overrides, "trainer.seed=7"]), tmp_path / "c")
    other = json.loads((tmp_path / "c" / "metrics.json").read_text())
    assert other["history"][0]["train_loss"] != results[0]["history"][0]["train_loss"]
    assert other["data_fingerprint"] == results[0]["data_fingerprint"]  # the split depends on data.seed only


def test_head_target_run_saves_and_reloads(tmp_path, reviews_csv):
    overrides = [*TINY_FAST, "data=csv", f"data.path={reviews_csv}", "lora/targets=all", "data.n_samples=1000"]
    train(compose_config(overrides), tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["params"]["by_group"]["head"] == 0
    # What was used, not what was asked: the CSV has 80 reviews.
    assert (metrics["data"]["n_samples"], metrics["data"]["duplicates_dropped"]) == (80, 0)
    cfg = compose_config(overrides)
    model, _ = load_trained(cfg.model, tmp_path)
    assert any("head.lora_A" in name for name, _ in model.named_parameters())


def run_in_process(monkeypatch, capsys, tmp_path, args):
    """The real CLI entry point (argument check, Hydra, error handling), in this process to save start-up time."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["sentiment_lora.train", *args])
    with pytest.raises(SystemExit) as exit_info:
        cli()
    return exit_info.value.code, capsys.readouterr().err


GOOD_CSV = ["data=csv", "data.path=reviews.csv"]
BAD_CSVS = {
    "missing_column": ("review,label\ngreat,1\n", "no column 'text'"),
    "bad_label": ("text,label\ngreat,1\nawful,3\n", "data row 2"),
    "empty_text": ("text,label\ngreat,1\n,0\n", "empty text"),
    "header_only": ("text,label\n", "header only"),
    "boolean_labels": ("text,label\ngreat,True\nawful,False\n", "data row 1: label True is not one of"),
    "six_rows": ("text,label\n" + "".join(f"review {i},{i % 2}\n" for i in range(6)), "takes 10 distinct reviews per "
                 "class at val_fraction=0.1, test_fraction=0.1; there are 3 negative and 3 positive"),
    "opposite_labels": ("text,label\n" + "".join(f"review {i},{i % 2}\n" for i in range(30)) + "review 3,0\n",
                        "data rows 4 and 31 hold the same review with opposite labels (1 and 0)"),
    "markup_only": ("text,label\n" + "".join(f"review {i},{i % 2}\n" for i in range(30)) + "<br/>,0\n",
                    "markup_only.csv: column 'text', data row 31: no text left once HTML is stripped"),
}  # fmt: skip


@pytest.mark.parametrize(
    "args,expected",
    [
        (["data=csv", "data.path=missing.csv"], "missing.csv: not found"),
        (["data=csv", "data.path=."], "data file .: is a directory, not a CSV file"),
        *[(["data=csv", f"data.path={name}.csv"], message) for name, (_, message) in BAD_CSVS.items()],
        (["lora.targets=[q,attn]"], "unknown target 'attn'"),
        (["lora.rank=0"], "lora.rank: must be >= 1"),
        (["model=bert-large"], "unknown model 'bert-large'; choose from distilbert, minilm, tiny"),
        (["lora/targets=qz"], "unknown lora/targets 'qz'"),
        (["trainer.device=tpu"], "unknown device 'tpu'"),
        (["trainer.num_threads=-1"], "trainer.num_threads: must be >= 1 or null, got -1"),
        (["model.head_dropout=1.5"], "model.head_dropout: must be in [0, 1), got 1.5"),
        (["model.attention_dropout=2"], "model.attention_dropout: must be in [0, 1) or null, got 2"),
        (["trainer.grad_clip=-1"], "trainer.grad_clip: must be > 0 or null, got -1"),
        (["data.n_samples=10"], "data.n_samples: must be >= 20 or null, got 10"),
        (["lora.rank=33", "dry_run=true"], "lora.rank: 33 exceeds the width of encoder.encoder.layer.0.attention"),
        ([*GOOD_CSV, "trainer.max_length=513"], "trainer.max_length: 513 exceeds the 512 positions of model 'tiny'"),
        ([*GOOD_CSV, "trainer.max_length=2"], "trainer.max_length: 2 leaves no token of text"),
        ([*GOOD_CSV, "model.path=weights_only"], "model.path=weights_only: no tokenizer vocabulary there (found "
                                                 "config.json, model.safetensors)"),
        ([*GOOD_CSV, "model.tokenizer=nowhere"], "model.tokenizer=nowhere: cannot load a tokenizer"),
    ],
    ids=[
        "missing_file", "directory", *BAD_CSVS, "unknown_target", "rank_zero", "unknown_model", "unknown_preset",
        "device_tpu", "threads_negative", "head_dropout", "attention_dropout", "grad_clip_negative", "n_samples_10",
        "rank_above_width", "max_length_above_positions", "max_length_only_special_tokens", "weights_without_tokenizer",
        "tokenizer_not_found",
    ],
)  # fmt: skip
def test_user_errors_are_one_line_with_nonzero_exit_and_leave_nothing(monkeypatch, capsys, tmp_path, args, expected):
    for name, (content, _) in BAD_CSVS.items():
        (tmp_path / f"{name}.csv").write_text(content)
    write_reviews(tmp_path / "reviews.csv", n=40)
    if "model.path=weights_only" in args:  # config.json + model.safetensors, no tokenizer files
        config = AutoConfig.for_model("bert", hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
        AutoModel.from_config(config).save_pretrained(tmp_path / "weights_only")
        capsys.readouterr()  # its progress bar is no part of the CLI's output
    if not any(arg.startswith("model=") for arg in args):
        args = ["model=tiny", *args]
    args = [*args, "trainer.progress=false", "trainer.epochs=1"]
    code, err = run_in_process(monkeypatch, capsys, tmp_path, args)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], err
    assert "Traceback" not in err
    runs = tmp_path / "outputs" / "runs"
    assert not runs.exists() or not any(runs.iterdir()), "a failed run left a directory behind"


def test_distilbert_without_weights_fails_fast_and_names_the_ways_out(monkeypatch, capsys, tmp_path):
    write_reviews(tmp_path / "r.csv")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_hf_home"))
    code, err = run_in_process(monkeypatch, capsys, tmp_path, ["model=distilbert", "data=csv", "data.path=r.csv"])
    assert code != 0
    assert "model.path=" in err and "model=minilm" in err and "Traceback" not in err
    code, err = run_in_process(
        monkeypatch, capsys, tmp_path, ["model=distilbert", "model.path=nowhere", "data=csv", "data.path=r.csv"]
    )
    assert code != 0 and "model.path=nowhere" in err


def test_divergence_is_one_line_suggesting_a_lower_learning_rate_and_writes_no_metrics(monkeypatch, capsys, tmp_path):
    write_reviews(tmp_path / "reviews.csv", n=40)
    args = [*TINY_FAST, "data=csv", "data.path=reviews.csv", "optimizer.lr=1e6", "trainer.grad_clip=null"]
    code, err = run_in_process(monkeypatch, capsys, tmp_path, args)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("error: training diverged: loss is nan at epoch 1, batch "), err
    assert lines[0].endswith("; lower optimizer.lr or clip gradients (trainer.grad_clip=1.0)")
    assert not list(tmp_path.glob("outputs/runs/*/metrics.json"))


@pytest.mark.slow
def test_divergence_in_a_sweep_is_still_a_failed_trial(monkeypatch, tmp_path):
    import optuna

    write_reviews(tmp_path / "reviews.csv", n=40)
    monkeypatch.chdir(tmp_path)
    tiny = [arg for arg in TINY_FAST if not arg.startswith("optimizer.lr=")]
    monkeypatch.setattr(sys, "argv", [
        "sentiment_lora.train", "-m", *tiny, "data=csv", "data.path=reviews.csv", "hparams_search=lora_optuna",
        f"hydra.sweeper.storage=sqlite:///{tmp_path}/study.db", "hydra.sweeper.n_trials=1",
        f"hydra.sweep.dir={tmp_path}/sweep", "hydra.sweeper.max_failure_rate=1.0", "optimizer.lr=choice(1e6)",
        "trainer.grad_clip=null",
    ])  # fmt: skip
    cli()
    (trial,) = optuna.load_study(study_name="lora_optuna", storage=f"sqlite:///{tmp_path}/study.db").trials
    assert trial.state == optuna.trial.TrialState.FAIL and "training diverged" in trial.user_attrs["error"]
    metrics = json.loads((tmp_path / "sweep" / "trial_0" / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "training diverged" in metrics["error"]


def test_nan_loss_stops_the_run_with_a_clear_error(tmp_path, reviews_csv, monkeypatch):
    def nan_loss():
        return lambda logits, labels: (logits * float("nan")).mean()

    monkeypatch.setattr(torch.nn, "BCEWithLogitsLoss", nan_loss)
    with pytest.raises(TrainingDiverged, match="loss is nan at epoch 1, batch 1"):
        train(compose_config([*TINY_FAST, "data=csv", f"data.path={reviews_csv}"]), tmp_path)
    assert not (tmp_path / "metrics.json").exists()
