"""A run killed between epochs resumes from its checkpoint and ends with the metrics of an uninterrupted run."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time

import pandas as pd
import pytest
from omegaconf import OmegaConf

from sentiment_lora.errors import UserError
from sentiment_lora.run import train
from sentiment_lora.rundir.checkpoint import CHECKPOINT_FILE, Checkpoint, read_checkpoint

from .conftest import TINY_FAST, compose_config, run_cli, write_reviews


class Killed(BaseException):
    """Stands in for a kill: raised right after an epoch's checkpoint is written."""


def kill_after_epoch(monkeypatch, killed_after: int) -> None:
    real_save = Checkpoint.save

    def save_then_die(self, epoch, *args):
        real_save(self, epoch, *args)
        if epoch == killed_after:
            raise Killed

    monkeypatch.setattr(Checkpoint, "save", save_then_die)


def results_of(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    history = [{k: v for k, v in h.items() if not k.endswith("_s")} for h in metrics["history"]]  # timings differ
    return history, metrics["val"], metrics["test"], pd.read_csv(run_dir / "test_predictions.csv")


# Pinned precisions: resuming replays the same operations in the same order, so the numbers are equal, not close.
@pytest.mark.parametrize(
    "extra",
    [
        ["trainer.precision=fp32", "trainer.length_grouping=true"],
        ["trainer.precision=bf16", "trainer.length_grouping=false", "trainer.frozen_prefix=cache", "lora.top_layers=1"],
        # LoRA+ adds optimizer groups at their own learning rates; DoRA, rsLoRA, layers and budget shape the model.
        [
            "trainer.precision=fp32",
            "lora.loraplus_lr_ratio=4",
            "lora.dora=true",
            "lora.scaling=rslora",
            "lora.layers=[1]",
            "lora.budget=1000",
        ],
    ],
    ids=["fp32-grouped", "bf16-shuffled-cached", "fp32-variants"],
)
def test_a_run_killed_between_epochs_resumes_to_the_uninterrupted_metrics(tmp_path, monkeypatch, extra):
    reviews = write_reviews(tmp_path / "reviews.csv", n=80)
    cfg = compose_config([*TINY_FAST, "trainer.epochs=3", "data=csv", f"data.path={reviews}", *extra])
    (tmp_path / "whole").mkdir(), (tmp_path / "killed").mkdir()
    train(cfg, tmp_path / "whole")

    with monkeypatch.context() as patch:
        kill_after_epoch(patch, killed_after=2)
        with pytest.raises(Killed):
            train(cfg, tmp_path / "killed")
    assert (tmp_path / "killed" / CHECKPOINT_FILE).exists() and not (tmp_path / "killed" / "metrics.json").exists()
    train(cfg, tmp_path / "killed")  # the re-run: resumes after epoch 2

    whole, resumed = results_of(tmp_path / "whole"), results_of(tmp_path / "killed")
    assert resumed[:3] == whole[:3]
    pd.testing.assert_frame_equal(resumed[3], whole[3])
    assert not (tmp_path / "killed" / CHECKPOINT_FILE).exists()  # removed once the run completed


def test_a_checkpoint_of_another_configuration_is_refused(tmp_path, monkeypatch):
    reviews = write_reviews(tmp_path / "reviews.csv", n=40)
    overrides = [*TINY_FAST, "data=csv", f"data.path={reviews}", "trainer.precision=fp32"]
    with monkeypatch.context() as patch:
        kill_after_epoch(patch, killed_after=1)
        with pytest.raises(Killed):
            train(compose_config(overrides), tmp_path)
    with pytest.raises(UserError, match="checkpoint of another configuration"):
        train(compose_config([*overrides, "lora.rank=2"]), tmp_path)


def test_keep_checkpoint_keeps_it_and_checkpoint_false_writes_none(tmp_path):
    reviews = write_reviews(tmp_path / "reviews.csv", n=40)
    overrides = [*TINY_FAST, "data=csv", f"data.path={reviews}", "trainer.precision=fp32"]
    (tmp_path / "kept").mkdir(), (tmp_path / "none").mkdir()
    train(compose_config([*overrides, "trainer.keep_checkpoint=true"]), tmp_path / "kept")
    assert (tmp_path / "kept" / CHECKPOINT_FILE).exists()
    train(compose_config([*overrides, "trainer.checkpoint=false", "trainer.keep_checkpoint=true"]), tmp_path / "none")
    assert not (tmp_path / "none" / CHECKPOINT_FILE).exists()


@pytest.mark.slow
def test_the_documented_rerun_resumes_through_the_command_line(tmp_path, monkeypatch):
    reviews = write_reviews(tmp_path / "reviews.csv", n=80)
    args = [*TINY_FAST, "trainer.epochs=3", "trainer.precision=fp32", "data=csv", f"data.path={reviews}"]
    with monkeypatch.context() as patch:
        kill_after_epoch(patch, killed_after=1)
        with pytest.raises(Killed):
            train(compose_config(args), tmp_path / "run") if (tmp_path / "run").mkdir() is None else None
    done = run_cli([*args, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming from" in (tmp_path / "run" / "train.log").read_text()
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "complete" and [h["epoch"] for h in metrics["history"]] == [1, 2, 3]


@pytest.mark.parametrize("damage", ["empty", "truncated", "flipped_tensor_byte"])
def test_a_damaged_checkpoint_is_one_line_naming_it_and_how_to_start_over(tmp_path, monkeypatch, damage):
    reviews = write_reviews(tmp_path / "reviews.csv", n=40)
    cfg = compose_config([*TINY_FAST, "data=csv", f"data.path={reviews}", "trainer.precision=fp32"])
    with monkeypatch.context() as patch:
        kill_after_epoch(patch, killed_after=1)
        with pytest.raises(Killed):
            train(cfg, tmp_path)
    path = tmp_path / CHECKPOINT_FILE
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # tensor data: safetensors reads it without a complaint
    path.write_bytes(
        {"empty": b"", "truncated": bytes(data[: len(data) // 2]), "flipped_tensor_byte": bytes(data)}[damage]
    )
    with pytest.raises(UserError) as info:
        train(cfg, tmp_path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert message.endswith(
        "the checkpoint is damaged: delete it to train this run from epoch 1, or use a new run directory"
    )
    if damage == "flipped_tensor_byte":
        assert "its tensors differ from the sha256 recorded in it" in message


def test_a_checkpoint_gets_the_umask_mode_while_the_run_is_in_progress(tmp_path, monkeypatch):
    # One rule for every file of a run, in progress or final: the mode open() gives under the umask.
    reviews = write_reviews(tmp_path / "reviews.csv", n=40)
    cfg = compose_config([*TINY_FAST, "data=csv", f"data.path={reviews}", "trainer.precision=fp32"])
    previous = os.umask(0o027)
    try:
        with monkeypatch.context() as patch:
            kill_after_epoch(patch, killed_after=1)
            with pytest.raises(Killed):
                train(cfg, tmp_path)
    finally:
        os.umask(previous)
    assert oct(stat.S_IMODE((tmp_path / CHECKPOINT_FILE).stat().st_mode)) == oct(0o640)


@pytest.mark.slow
def test_ctrl_c_is_one_line_with_the_epoch_and_a_refused_resume_leaves_the_runs_config(tmp_path):
    write_reviews(tmp_path / "reviews.csv", n=200)
    run_dir = tmp_path / "R"
    # Far more epochs than can run before the interrupt, even on a loaded machine (500 once finished first there).
    args = [*TINY_FAST, "trainer.epochs=100000", "trainer.precision=fp32", "data=csv", "data.path=reviews.csv",
            f"hydra.run.dir={run_dir}"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "sentiment_lora.train", *args]
    # A shell's background job (`pytest ... &`) starts with SIGINT ignored, which children inherit and Python then
    # leaves ignored; the run is given the default disposition, as in a terminal.
    with subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    ) as proc:  # fmt: skip
        while not (run_dir / CHECKPOINT_FILE).exists() and proc.poll() is None:
            time.sleep(0.1)  # the first epoch's checkpoint: training is under way
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    checkpoint = run_dir / CHECKPOINT_FILE
    found = re.fullmatch(
        rf"error: interrupted in epoch (\d+) of 100000; {re.escape(str(checkpoint))} holds epoch (\d+): to resume from "
        rf"there, re-run the same command with hydra.run.dir={re.escape(str(run_dir))}",
        lines[0],
    )
    assert found, lines[0]
    assert int(found[1]) == int(found[2]) + 1 == read_checkpoint(checkpoint, tensors=False)[0]["epoch"] + 1

    # A resume with another configuration is refused, and the overrides it points to are still the run's own.
    own, hydra_files = (run_dir / "run.yaml").read_bytes(), snapshot_hydra(run_dir)
    done = run_cli([*args, "lora.rank=2"], cwd=tmp_path)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith(f"error: run directory {run_dir}: holds a started run")
    assert (
        f"(lora.rank 4 -> 2), and a run is never overwritten; to resume it, re-run the overrides in {run_dir}/run.yaml"
        in lines[0]
    )
    assert (run_dir / "run.yaml").read_bytes() == own and snapshot_hydra(run_dir) == hydra_files
    assert "lora.rank=2" not in OmegaConf.load(run_dir / "run.yaml").overrides


def snapshot_hydra(run_dir):
    return {path.name: path.read_bytes() for path in (run_dir / ".hydra").iterdir()}
