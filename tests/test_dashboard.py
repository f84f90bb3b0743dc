"""optuna-dashboard on a study the lora_optuna sweeper wrote: started as a user starts it, read through its JSON API.

Needs the `dashboard` extra (skips without it; CI installs it)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from sentiment_lora.rundir.record import read_metrics
from sentiment_lora.train import cli

from .conftest import TINY_FAST, write_reviews

pytestmark = pytest.mark.slow  # three tiny sweeps and a web server: tens of seconds


def sweep(monkeypatch, tmp: Path, n_trials: int, *extra: str) -> None:
    """`python -m sentiment_lora.train -m hparams_search=lora_optuna ...` in this process, continuing the study."""
    monkeypatch.setattr(sys, "argv", [
        "sentiment_lora.train", "-m", *TINY_FAST, "data=csv", "data.path=reviews.csv", "hparams_search=lora_optuna",
        f"hydra.sweeper.storage=sqlite:///{tmp}/study.db", f"hydra.sweeper.n_trials={n_trials}",
        f"hydra.sweep.dir={tmp}/sweep", "hydra.sweeper.max_failure_rate=1.0", *extra])  # fmt: skip
    try:
        cli()
    except SystemExit as exit_info:
        assert not exit_info.code


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return json.loads(answer.read())


def serve_until_it_answers(storage: str, port: int, timeout: float = 60) -> subprocess.Popen:
    command = shutil.which("optuna-dashboard", path=str(Path(sys.executable).parent)) or "optuna-dashboard"
    server = subprocess.Popen([command, storage, "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"optuna-dashboard exited with {server.returncode}: {server.stdout.read()[-2000:]}")
        try:
            get(f"http://127.0.0.1:{port}/api/meta")
            return server
        except OSError:
            time.sleep(0.5)
    server.kill()
    pytest.fail(f"optuna-dashboard did not answer within {timeout} s")


def test_the_dashboard_shows_params_epochs_states_and_run_outcomes(tmp_path, monkeypatch):
    pytest.importorskip("optuna_dashboard")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    write_reviews(tmp_path / "reviews.csv", n=60)
    sweep(monkeypatch, tmp_path, 2)  # two complete trials (the median pruner waits for 3)
    sweep(monkeypatch, tmp_path, 3, "hydra/sweeper/pruner=threshold", "hydra.sweeper.pruner.lower=1.1")  # pruned
    sweep(monkeypatch, tmp_path, 4, "trainer.max_length=1000")  # failed: the tiny model has 512 positions

    port = free_port()
    server = serve_until_it_answers(f"sqlite:///{tmp_path}/study.db", port)
    try:
        api = f"http://127.0.0.1:{port}/api"
        (study,) = get(f"{api}/studies")["study_summaries"]
        assert (study["study_name"], study["directions"]) == ("lora_optuna", ["maximize"])
        detail = get(f"{api}/studies/{study['study_id']}")
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()

    assert detail["objective_names"] == ["val_accuracy"] and detail["has_intermediate_values"]
    trials = detail["trials"]
    assert [t["state"] for t in trials] == ["Complete", "Complete", "Pruned", "Fail"]
    space = {"lora.rank", "lora.alpha", "lora.dropout", "lora/targets"}  # TINY_FAST fixes optimizer.lr
    assert {p["name"] for p in detail["union_search_space"]} == space
    assert {"trainable_params", "test_accuracy", "run_dir"} <= {a["key"] for a in detail["union_user_attrs"]}
    for trial in trials:
        attrs = {a["key"]: a["value"] for a in trial["user_attrs"]}
        assert {p["name"] for p in trial["params"]} == space
        if trial["state"] == "Fail":
            assert attrs["error"].startswith("UserError: config trainer.max_length: 1000 exceeds")
            assert trial["intermediate_values"] == []
            continue
        record = read_metrics(Path(attrs["run_dir"]))
        steps = [(v["step"], v["value"]) for v in trial["intermediate_values"]]
        assert steps == [(e["epoch"], e["val_accuracy"]) for e in record["history"]]
        assert attrs["trainable_params"] == str(record["params"]["trainable"])
        assert attrs["total_params"] == str(record["params"]["total"])
        assert attrs["epochs_run"] == str(record["epochs_run"])
        if trial["state"] == "Complete":
            assert len(steps) == 2 and trial["values"] == [record["val"]["accuracy"]]
            assert attrs["test_accuracy"] == str(record["test"]["accuracy"])
            assert attrs["selected_epoch"] == str(record["val"]["epoch"])
        else:
            assert len(steps) == 1 and "test_accuracy" not in attrs
