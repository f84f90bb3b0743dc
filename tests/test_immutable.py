"""A run directory that holds a run is never rewritten: the same configuration is a no-op that returns what was
recorded, another is refused in one line, and Hydra's files of a later command never pass for the run's own."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from sentiment_lora import run as run_lib
from sentiment_lora.rundir import claim as immutable
from sentiment_lora.rundir.checkpoint import CHECKPOINT_FILE
from sentiment_lora.rundir.claim import RunExists
from sentiment_lora.rundir.completed import open_run
from sentiment_lora.train import cli

from .conftest import TINY_FAST, compose_config, write_reviews


def snapshot(run_dir: Path, with_log: bool = False) -> dict[str, bytes]:
    """Every file of a run directory, by default but its log (which a command that runs in the directory, a no-op
    included, appends to; a refused one does not)."""
    return {
        path.relative_to(run_dir).as_posix(): path.read_bytes()
        for path in sorted(run_dir.rglob("*"))
        if path.is_file() and (with_log or path.name != "train.log")
    }


def call_cli(monkeypatch, capsys, cwd: Path, args: list[str]) -> tuple[int, list[str]]:
    """The real entry point in this process: (exit status, non-blank stderr lines)."""
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["sentiment_lora.train", *args])
    try:
        cli()
        code = 0
    except SystemExit as exit_info:
        code = int(exit_info.code or 0)
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


@pytest.mark.slow
def test_a_completed_run_is_never_rewritten_nor_its_config_by_a_refused_command(tmp_path, monkeypatch, capsys):
    write_reviews(tmp_path / "reviews.csv", n=60)
    run_dir = tmp_path / "R"
    base = [*TINY_FAST, "trainer.precision=fp32", "data=csv", "data.path=reviews.csv", f"hydra.run.dir={run_dir}"]
    assert call_cli(monkeypatch, capsys, tmp_path, [*base, "trainer.epochs=2"])[0] == 0
    before = snapshot(run_dir)
    assert {"run.yaml", ".hydra/config.yaml", ".hydra/overrides.yaml", "metrics.json"} <= set(before)

    # Another configuration: one line, exit 2, not a byte changed (.hydra/ included).
    code, err = call_cli(monkeypatch, capsys, tmp_path, [*base, "trainer.epochs=1", "lora.rank=8"])
    assert code == 2 and len(err) == 1, err
    assert err[0] == (
        f"error: run directory {run_dir}: holds a complete run of another configuration (lora.rank 4 -> 8; "
        "trainer.epochs 2 -> 1), and a run is never overwritten; to start over, give this command a new "
        f"hydra.run.dir (hydra.sweep.dir in a sweep) or move {run_dir} aside"
    )
    assert snapshot(run_dir) == before

    # A refused command of another kind (missing data) leaves the run's config its own: predict and export read
    # max_length 32 from it, not this command's 4.
    bad = [*base, "data.path=missing.csv", "trainer.max_length=4", "data.truncation=tail"]
    code, err = call_cli(monkeypatch, capsys, tmp_path, bad)
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: run directory {run_dir}: holds a complete run")
    assert snapshot(run_dir) == before
    assert open_run(run_dir).cfg.trainer.max_length == 32 and open_run(run_dir).cfg.data.truncation == "head"

    # The same configuration (keys that cannot change numbers aside): nothing to do, the recorded result logged.
    code, err = call_cli(monkeypatch, capsys, tmp_path, [*base, "trainer.epochs=2", "trainer.num_threads=1"])
    assert code == 0 and err == []
    assert snapshot(run_dir) == before
    log = (run_dir / "train.log").read_text()
    assert f"{run_dir} already holds this configuration's complete run (val accuracy" in log


@pytest.mark.slow
def test_a_killed_grid_rerun_into_its_sweep_dir_trains_only_the_missing_points(tmp_path, monkeypatch, capsys):
    write_reviews(tmp_path / "reviews.csv", n=60)
    sweep = tmp_path / "S"
    args = ["-m", *TINY_FAST, "trainer.epochs=1", "data=csv", "data.path=reviews.csv", "lora.rank=1,2",
            f"hydra.sweep.dir={sweep}"]  # fmt: skip
    assert call_cli(monkeypatch, capsys, tmp_path, args)[0] == 0
    kept = snapshot(sweep / "0")
    for path in sorted((sweep / "1").rglob("*"), reverse=True):  # point 1 never ran, as in a killed grid
        path.unlink() if path.is_file() else path.rmdir()
    (sweep / "1").rmdir()

    assert call_cli(monkeypatch, capsys, tmp_path, args)[0] == 0
    assert snapshot(sweep / "0") == kept
    assert "already holds this configuration's complete run" in (sweep / "0" / "train.log").read_text()
    assert json.loads((sweep / "1" / "metrics.json").read_text())["status"] == "complete"

    # The grid changed: a point whose directory holds another configuration's run is refused in one line, not
    # Hydra's traceback, and left as it was, its log included; the grid stops there.
    whole = snapshot(sweep / "0", with_log=True)
    code, err = call_cli(monkeypatch, capsys, tmp_path, [*args[:-2], "lora.rank=3", f"hydra.sweep.dir={sweep}"])
    assert code == 2 and err == [
        f"error: run directory {sweep / '0'}: holds a complete run of another configuration (lora.rank 1 -> 3), and "
        "a run is never overwritten; to start over, give this command a new hydra.run.dir (hydra.sweep.dir in a "
        f"sweep) or move {sweep / '0'} aside"
    ]
    assert snapshot(sweep / "0", with_log=True) == whole
    assert json.loads((sweep / "0" / "metrics.json").read_text())["lora"]["rank"] == 1


@pytest.mark.slow
def test_a_refused_resume_of_a_damaged_checkpoint_changes_no_byte(tmp_path, monkeypatch, capsys):
    write_reviews(tmp_path / "reviews.csv", n=60)
    run_dir = tmp_path / "R"
    args = [*TINY_FAST, "trainer.precision=fp32", "data=csv", "data.path=reviews.csv", "trainer.keep_checkpoint=true",
            f"hydra.run.dir={run_dir}"]  # fmt: skip
    assert call_cli(monkeypatch, capsys, tmp_path, args)[0] == 0
    (run_dir / "metrics.json").unlink()  # as if killed after its last checkpoint
    data = bytearray((run_dir / CHECKPOINT_FILE).read_bytes())
    data[-3] ^= 0x01  # in the tensor data: safetensors still reads it, the recorded sha256 does not match
    (run_dir / CHECKPOINT_FILE).write_bytes(bytes(data))
    before = snapshot(run_dir, with_log=True)
    code, err = call_cli(monkeypatch, capsys, tmp_path, args)
    assert (
        code == 2
        and len(err) == 1
        and err[0]
        == (
            f"error: {run_dir / CHECKPOINT_FILE}: its tensors differ from the sha256 recorded in it; the checkpoint is "
            "damaged: delete it to train this run from epoch 1, or use a new run directory"
        )
    )
    assert snapshot(run_dir, with_log=True) == before  # train.log included


def test_seed_replicates_and_dry_runs_are_not_rewritten_either(tmp_path, monkeypatch, capsys):
    reviews = write_reviews(tmp_path / "reviews.csv", n=40)
    overrides = [*TINY_FAST, "trainer.epochs=1", "trainer.precision=fp32", "data=csv", f"data.path={reviews}"]
    parent = tmp_path / "seeds"
    parent.mkdir()
    cfg = compose_config([*overrides, "seeds=[1,2]"])
    first = run_lib.train_seeds(cfg, parent)
    assert (parent / "run.yaml").is_file() and (parent / "seed_1" / "run.yaml").is_file()
    assert open_run(parent / "seed_2").cfg.trainer.seed == 2  # each replicate's own config has its seed
    kept = snapshot(parent / "seed_1")
    for path in sorted((parent / "seed_2").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()

    trained = []
    real_train = run_lib.train
    monkeypatch.setattr(run_lib, "train", lambda c, d, h=None: trained.append(d.name) or real_train(c, d, h))
    assert run_lib.train_seeds(cfg, parent) == first  # seed 1 recalled, seed 2 trained again (same numbers)
    assert trained == ["seed_2"] and snapshot(parent / "seed_1") == kept
    with pytest.raises(RunExists, match=r"holds a started run .* of another configuration \(lora.rank 4 -> 2\)"):
        run_lib.train_seeds(compose_config([*overrides, "seeds=[1,2]", "lora.rank=2"]), parent)
    with pytest.raises(RunExists, match=r"of another configuration \(seeds \[1, 2\] -> \[1, 2, 3\]\)"):
        run_lib.train_seeds(compose_config([*overrides, "seeds=[1,2,3]"]), parent)

    dry = tmp_path / "dry"
    dry.mkdir()
    assert math.isnan(run_lib.train_seeds(compose_config([*overrides, "dry_run=true"]), dry))
    record, counts = (dry / "metrics.json").read_bytes(), capsys.readouterr().out
    assert math.isnan(run_lib.train_seeds(compose_config([*overrides, "dry_run=true"]), dry))
    assert capsys.readouterr().out == counts and counts.startswith("tiny lora r=4")  # recalled, not recounted
    with pytest.raises(RunExists, match=r"holds a dry_run run of another configuration \(dry_run True -> False\)"):
        run_lib.train_seeds(compose_config(overrides), dry)
    assert (dry / "metrics.json").read_bytes() == record and trained == ["seed_2", "dry"]


def test_a_run_written_before_run_yaml_is_judged_by_its_records_config_id(tmp_path):
    reviews = write_reviews(tmp_path / "reviews.csv", n=40)
    overrides = [*TINY_FAST, "trainer.epochs=1", "trainer.precision=fp32", "data=csv", f"data.path={reviews}"]
    value = run_lib.train_seeds(compose_config(overrides), tmp_path)
    (tmp_path / immutable.RUN_CONFIG_FILE).unlink()
    before = snapshot(tmp_path)
    with pytest.raises(RunExists, match="holds a complete run of another configuration"):
        run_lib.train_seeds(compose_config([*overrides, "trainer.seed=7"]), tmp_path)
    assert run_lib.train_seeds(compose_config([*overrides, "trainer.progress=true"]), tmp_path) == value
    assert snapshot(tmp_path) == before


def test_a_failed_record_is_retried_by_its_own_configuration_only(tmp_path):
    reviews = write_reviews(tmp_path / "reviews.csv", n=40)
    overrides = [*TINY_FAST, "trainer.epochs=1", "trainer.precision=fp32", "data=csv", f"data.path={reviews}"]
    cfg = compose_config(overrides)
    immutable.claim(cfg, tmp_path)  # the job started (run.yaml) ...
    run_lib.results.write_record(tmp_path, "failed", cfg, error="RuntimeError: out of memory")  # ... and failed
    with pytest.raises(RunExists, match="holds a failed run of another configuration"):
        run_lib.train_seeds(compose_config([*overrides, "lora.rank=2"]), tmp_path)
    run_lib.train_seeds(cfg, tmp_path)
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "complete"


def test_a_directory_with_a_baseline_record_is_not_trained_into(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"status": "reference", "test": {"accuracy": 0.86}}))
    overrides = [*TINY_FAST, "trainer.epochs=1", "dry_run=true"]
    with pytest.raises(RunExists, match="holds a 'reference' record, not a run to resume"):
        run_lib.train_seeds(compose_config(overrides), tmp_path)
