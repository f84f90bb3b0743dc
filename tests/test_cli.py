"""End-to-end runs on a tiny random-init model: artefacts, reload, reproducibility, and user errors."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoConfig, AutoModel

from sentiment_lora.data import pipeline as data_lib
from sentiment_lora.errors import UserError
from sentiment_lora.loop import TrainingDiverged, evaluate
from sentiment_lora.run import train
from sentiment_lora.runtime import DTYPES, pick_dtype
from sentiment_lora.train import cli
from sentiment_lora.trained import load_trained

from .conftest import FORCED_AUTO_BF16, TINY_FAST, compose_config, run_cli, write_reviews

METRIC_KEYS = {"accuracy", "f1", "precision", "recall", "roc_auc", "loss", "n"}


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cli_run_writes_complete_artefacts_and_the_adapter_reproduces_test_predictions(
    tmp_path, reviews_csv, precision
):
    run_dir = tmp_path / "run"
    args = [*TINY_FAST, "data=csv", f"data.path={reviews_csv}", f"trainer.precision={precision}"]
    done = run_cli([*args, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "complete" and metrics["precision"] == precision
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

    # Reload from the run directory alone and predict the test split again, in the run's own precision: the same
    # weights, inputs, batches and arithmetic, so the same probabilities up to the CSV's float formatting.
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    trained = load_trained(cfg.model, run_dir)
    assert trained.dtype == {"fp32": None, "bf16": torch.bfloat16}[precision]
    rows = data_lib.encode(data_lib.load_splits(cfg.data)["test"], trained.tokenizer, cfg.trainer.max_length)
    device = torch.device(metrics["device"])  # on a GPU machine the run used CUDA; its kernels round otherwise
    model = trained.model.to(device)
    test, _, probs = evaluate(model, rows, trained.tokenizer, cfg.trainer.eval_batch_size, device, trained.dtype)
    saved = pd.read_csv(run_dir / "test_predictions.csv")["prob"].to_numpy()
    np.testing.assert_allclose(probs, saved, rtol=0, atol=1e-6)
    assert test == metrics["test"]
    if precision == "bf16":  # the reason to use the run's precision: fp32 arithmetic gives other probabilities
        _, _, fp32_probs = evaluate(model, rows, trained.tokenizer, cfg.trainer.eval_batch_size, device, None)
        assert np.abs(fp32_probs - saved).max() > 1e-5


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
    trained = load_trained(cfg.model, tmp_path)
    assert any("head.lora_A" in name for name, _ in trained.model.named_parameters())
    assert trained.dtype == DTYPES[metrics["precision"]]
    # Without metrics.json the run did not complete and its precision is unknown: say so, do not guess fp32.
    (tmp_path / "metrics.json").unlink()
    with pytest.raises(UserError, match="metrics.json: not found; the run did not complete"):
        load_trained(cfg.model, tmp_path)


def test_run_files_get_the_mode_the_umask_gives_like_any_new_file(tmp_path, reviews_csv):
    # tempfile.mkstemp and safetensors create files 0o600; a run's files must be readable as the umask allows.
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    previous = os.umask(0o027)
    try:
        train(compose_config([*TINY_FAST, "trainer.epochs=1", "data=csv", f"data.path={reviews_csv}"]), run_dir)
    finally:
        os.umask(previous)
    files = {path.relative_to(run_dir).as_posix(): path for path in run_dir.rglob("*") if path.is_file()}
    written = {"metrics.json", "test_predictions.csv", "head.safetensors", "encoder.safetensors"}
    assert written | {"adapter/adapter_model.safetensors", "adapter/adapter_config.json"} <= set(files)
    modes = {name: oct(stat.S_IMODE(path.stat().st_mode)) for name, path in files.items()}
    assert modes == dict.fromkeys(files, oct(0o640))  # 0o666 under umask 027, as open() would have made them


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
        (["model=bert-large"], "unknown model 'bert-large'; choose from auto, choose, distilbert, minilm, mpnet, tiny"),
        (["lora/targets=qz"], "unknown lora/targets 'qz'"),
        (["trainer.device=tpu"], "unknown device 'tpu'"),
        (["trainer.num_threads=-1"], "trainer.num_threads: must be >= 1 or null, got -1"),
        (["model.head_dropout=1.5"], "model.head_dropout: must be in [0, 1), got 1.5"),
        (["model.attention_dropout=2"], "model.attention_dropout: must be in [0, 1) or null, got 2"),
        (["trainer.grad_clip=-1"], "trainer.grad_clip: must be > 0 or null, got -1"),
        ([*GOOD_CSV, "data.n_samples=10"], "data.n_samples: must be >= 20 or null, got 10"),
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


def test_seed_replicates_run_once_per_seed_and_return_the_mean(tmp_path, reviews_csv):
    from sentiment_lora.run import train_seeds

    cfg = compose_config([*TINY_FAST, "trainer.epochs=1", "data=csv", f"data.path={reviews_csv}", "seeds=[3,5]"])
    returned = train_seeds(cfg, tmp_path)
    runs = {seed: json.loads((tmp_path / f"seed_{seed}" / "metrics.json").read_text()) for seed in (3, 5)}
    assert [runs[seed]["seed"] for seed in (3, 5)] == [3, 5]
    assert runs[3]["data_fingerprint"] == runs[5]["data_fingerprint"]
    assert runs[3]["config_id"] == runs[5]["config_id"]  # replicates of one configuration
    assert runs[3]["eval_fingerprint"] == runs[5]["eval_fingerprint"]
    assert returned == pytest.approx((runs[3]["val"]["accuracy"] + runs[5]["val"]["accuracy"]) / 2)
    assert not (tmp_path / "metrics.json").exists()  # the replicates' records are the seeds' own


def test_seeds_must_be_distinct(tmp_path, reviews_csv):
    from sentiment_lora.errors import UserError
    from sentiment_lora.run import train_seeds

    with pytest.raises(UserError, match="seeds"):
        train_seeds(compose_config([*TINY_FAST, "data=csv", f"data.path={reviews_csv}", "seeds=[3,3]"]), tmp_path)


def test_config_id_ignores_the_seed_and_what_cannot_change_numbers_but_not_the_rest():
    from sentiment_lora.rundir.record import config_id

    base = config_id(compose_config(["model=tiny"]))
    assert config_id(compose_config(["model=tiny", "trainer.seed=7", "trainer.progress=false"])) == base
    assert config_id(compose_config(["model=tiny", "optimizer.lr=1e-3"])) != base
    assert config_id(compose_config(["model=tiny", "data.truncation=tail"])) != base


@pytest.mark.slow
@pytest.mark.skipif(
    FORCED_AUTO_BF16 is None, reason="checks SENTIMENT_LORA_TEST_AUTO_BF16=1 or 0, the suite run as a bf16 or AVX2 CPU"
)
def test_the_forced_auto_precision_reaches_this_process_and_its_subprocesses():
    expected = torch.bfloat16 if FORCED_AUTO_BF16 else None
    assert pick_dtype("auto", torch.device("cpu")) == expected
    probe = "import torch, sentiment_lora.runtime as r; print(r.pick_dtype('auto', torch.device('cpu')))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == str(expected), done.stderr


def test_a_model_path_of_an_unknown_model_type_is_one_line_and_leaves_nothing(monkeypatch, capsys, tmp_path):
    from transformers import AutoTokenizer

    from sentiment_lora.sources import package_model_path

    write_reviews(tmp_path / "reviews.csv", n=40)
    AutoTokenizer.from_pretrained(package_model_path()).save_pretrained(tmp_path / "weights")  # a tokenizer loads
    (tmp_path / "weights" / "config.json").write_text(json.dumps({"model_type": "frobnicator", "hidden_size": 32}))
    args = ["model=tiny", "model.path=weights", *GOOD_CSV, "trainer.epochs=1", "trainer.progress=false"]
    code, err = run_in_process(monkeypatch, capsys, tmp_path, args)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith(
        "error: model.path=weights: config.json has model_type 'frobnicator', which transformers"
    )
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs" / "runs").iterdir())


def test_a_run_dir_under_a_regular_file_is_one_line(monkeypatch, capsys, tmp_path):
    (tmp_path / "somefile").write_text("not a folder")
    code, err = run_in_process(
        monkeypatch, capsys, tmp_path, ["model=tiny", "dry_run=true", "hydra.run.dir=somefile/run"]
    )
    assert code == 2
    assert err.splitlines() == [
        "error: config hydra.run.dir: somefile is a file, not a folder; choose another hydra.run.dir"
    ]


def test_a_full_disk_is_one_line_and_leaves_nothing_half_written(monkeypatch, capsys, tmp_path):
    import errno

    from sentiment_lora.rundir.checkpoint import CHECKPOINT_FILE

    write_reviews(tmp_path / "reviews.csv", n=40)
    run_dir = tmp_path / "R"
    args = [*TINY_FAST, "trainer.epochs=1", "trainer.precision=fp32", *GOOD_CSV, f"hydra.run.dir={run_dir}"]

    def disk_full(tensors, filename, metadata=None):  # writes part of the file, then the disk is full
        with open(filename, "wb") as handle:
            handle.write(b"\0" * 64)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)

    with monkeypatch.context() as patch:
        patch.setattr("sentiment_lora.trained.save_file", disk_full)  # the head's weights, after the adapter's
        code, err = run_in_process(patch, capsys, tmp_path, args)
    assert code == 2 and len(err.splitlines()) == 1
    assert re.fullmatch(
        rf"error: run directory {re.escape(str(run_dir))}: no space left on device while writing "
        rf"{re.escape(str(run_dir))} \([0-9.,]+ [KMG]iB free now\); nothing half-written was left: free space "
        r"\(or make it writable\) and re-run the same command \(it resumes after the last checkpointed epoch\)\n",
        err,
    ), err
    left = sorted(path.relative_to(run_dir).as_posix() for path in run_dir.iterdir())
    assert left == [".hydra", CHECKPOINT_FILE, "run.yaml", "train.log"]  # the last epoch's checkpoint kept

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["sentiment_lora.train", *args])
    cli()  # space freed: the same command resumes and completes
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "complete"
    assert "resuming from" in (run_dir / "train.log").read_text()
