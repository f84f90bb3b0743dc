"""Every bench script runs, end to end, on the tiny model and a toy CSV: a benchmark that nothing runs stops
working unseen (the throughput and sweep benchmarks did, when the evaluation sets changed). The timings they
print are not checked here; speed is measured in bench/, against a baseline of the same run."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from .conftest import REPO, compose_config, write_reviews
from .test_speed import throughput_bench

DROPOUT_OFF = ("lora.dropout", "model.hidden_dropout", "model.attention_dropout", "model.head_dropout")
TINY_DATA = ["--n-train", "40", "--n-val", "20", "--n-test", "20"]


def bench(script: str, args: list[str], cwd) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), *args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def table_rows(output: str) -> list[list[str]]:
    """The cells of the markdown table's body rows."""
    lines = [line for line in output.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def tiny_throughput(tmp_path, runs: str) -> list[list[str]]:
    """bench/throughput.py's table rows for these runs, on the tiny model and a toy CSV, in fp32."""
    csv = write_reviews(tmp_path / "reviews.csv", n=120)
    output = bench(
        "throughput.py",
        ["--model", "tiny", "--data-csv", str(csv), *TINY_DATA, "--max-length", "32", "--batch-size", "8",
         "--threads", "1", "--precision", "fp32", "--runs", runs],
        tmp_path,
    )  # fmt: skip
    return table_rows(output)


@pytest.mark.slow
def test_the_throughput_benchmark_times_both_layouts_against_the_hf_trainer(tmp_path):
    rows = tiny_throughput(tmp_path, "hf,plain,fast,hf-recipe,default")
    assert [row[0].split(" (")[0] for row in rows] == [
        "HF Trainer + PEFT", "sentiment-lora plain", "sentiment-lora fast",
        "HF Trainer + PEFT, the default recipe's layout", "sentiment-lora default",
    ]  # fmt: skip
    assert {row[1] for row in rows} == {"fp32"}
    assert len({row[2] for row in rows}) == 1  # the same trainable parameters on both sides: the same layout
    assert rows[0][5] == "1.00x"


@pytest.mark.slow
def test_the_throughput_benchmark_times_each_method_beside_the_default(tmp_path):
    rows = tiny_throughput(tmp_path, "default,linear_probe,bitfit,ia3,full")
    assert [row[0].split(" (")[0] for row in rows] == [
        f"sentiment-lora {name}" for name in ("default", "linear_probe", "bitfit", "ia3", "full")
    ]
    trainable = {row[0].split(" (")[0].split()[-1]: int(row[2].replace(",", "")) for row in rows}
    assert trainable["linear_probe"] < trainable["ia3"] < trainable["full"]  # the methods really differ
    assert trainable["full"] > trainable["default"]


def test_the_hf_baseline_adapts_the_default_recipes_modules_through_layers_to_transform():
    import peft

    bench = throughput_bench()
    cfg = compose_config(["model=minilm"])  # the recipe: every module of the top 3 layers, LoRA on the head
    assert list(cfg.lora.targets) == ["q", "k", "v", "output", "ffn", "head"] and cfg.lora.top_layers == 3
    torch.manual_seed(0)
    model = bench.PooledClassifier(bench.build_encoder(cfg.model, None), cfg.model.pooling, 0.1)
    layout = bench.peft_layout(model, cfg)
    assert layout["layers_to_transform"] == [3, 4, 5] and layout["layers_pattern"] == "layer"
    wrapped = peft.get_peft_model(
        model, peft.LoraConfig(r=cfg.lora.rank, lora_alpha=cfg.lora.alpha, modules_to_save=["head"], **layout)
    )
    adapted = sorted({name.split(".lora_A")[0].split("encoder.encoder.")[1] for name, _ in wrapped.named_parameters()
                      if "lora_A" in name})  # fmt: skip
    per_layer = ["attention.output.dense", "attention.self.key", "attention.self.query", "attention.self.value",
                 "intermediate.dense", "output.dense"]  # fmt: skip
    assert adapted == sorted(f"layer.{layer}.{module}" for layer in (3, 4, 5) for module in per_layer)
    trainable = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    # sentiment-lora's 84,484, less LoRA on the head (4 * (384 + 1)), plus the head trained whole (384 + 1)
    assert trainable == 84_484 - 4 * (384 + 1) + 385


@pytest.mark.slow
def test_the_sweep_benchmark_runs_both_paths(tmp_path):
    csv = write_reviews(tmp_path / "reviews.csv", n=120)
    output = bench(
        "sweep.py",
        ["--model", "tiny", "--data-csv", str(csv), *TINY_DATA, "--max-length", "32", "--epochs", "2",
         "--trials", "2", "--override", "lora.top_layers=choice(1,2)", "--override", "trainer.num_threads=1"],
        tmp_path,
    )  # fmt: skip
    rows = table_rows(output)
    assert [row[0] for row in rows] == ["plain", "fast"]
    assert all(int(row[3]) + int(row[4]) + int(row[5]) == 2 for row in rows)  # complete + pruned + failed
    assert "same parameters trial for trial: yes (2 trials)" in output


@pytest.mark.slow
def test_the_flops_benchmark_counts_a_step(tmp_path):
    output = bench(
        "flops.py",
        ["--model", "tiny", "--batch-size", "4", "--max-length", "32", "--steps", "2", "--peak-size", "64",
         "--threads", "1"],
        tmp_path,
    )  # fmt: skip
    rows = table_rows(output)
    assert [(row[0], row[1]) for row in rows] == [("fp32", "plain"), ("fp32", "fast"), ("bf16", "plain"),
                                                  ("bf16", "fast")]  # fmt: skip
    assert all(float(row[2]) > 0 and row[6].endswith("%") for row in rows)
    assert "GFLOP per step (counted)" in output and "profile, bf16 fast" in output and "load average" in output
    assert "# CPU: " in output and "precision=auto -> " in output


def test_the_attention_benchmark_times_sdpa_against_eager_in_both_dtypes(tmp_path):
    output = bench("attention.py", ["--batch-size", "2", "--heads", "2", "--tokens", "16", "--head-size", "8",
                                    "--repeats", "3"], tmp_path)  # fmt: skip
    rows = table_rows(output)
    assert sorted((row[0], row[1]) for row in rows) == [("eager", "bfloat16"), ("eager", "float32"),
                                                        ("sdpa", "bfloat16"), ("sdpa", "float32")]  # fmt: skip
    assert all(float(row[2]) > 0 and float(row[3]) > 0 for row in rows) and "load average" in output


@pytest.mark.slow
def test_the_eval_cost_benchmark_times_an_evaluation_pass(tmp_path):
    csv = write_reviews(tmp_path / "reviews.csv", n=120)
    output = bench(
        "eval_cost.py",
        ["--rounds", "2", "--override", "model=tiny", "data=csv", f"data.path={csv}", "data.n_train=40",
         "data.n_val=20", "data.n_test=20", "trainer.max_length=32", "trainer.num_threads=1"],
        tmp_path,
    )  # fmt: skip
    assert "reviews/s (20 test reviews" in output and "samples/s (40 reviews an epoch" in output
    assert "of an epoch (goal: at most 0.33)" in output and "load average" in output
    assert "FLOPs per review: training" in output and "x training's FLOP rate (the goal needs" in output


@pytest.mark.slow
def test_the_onnx_speed_benchmark_times_onnxruntime_against_pytorch(tmp_path):
    pytest.importorskip("onnxruntime")  # the `export` extra
    pytest.importorskip("onnxscript")
    csv = write_reviews(tmp_path / "reviews.csv", n=120)
    output = bench(
        "onnx_speed.py",
        ["--model", "tiny", "--data-csv", str(csv), "--reviews", "8", "--batch-sizes", "1,4", "--max-length", "32",
         "--threads", "1"],
        tmp_path,
    )  # fmt: skip
    rows = table_rows(output)
    assert [row[0] for row in rows] == ["1", "4"]
    assert all(float(row[4]) <= 1e-5 for row in rows)  # the same probabilities on both sides (fp32)
    assert ", fp32, 1 thread(s)," in output


@pytest.mark.slow
def test_the_population_benchmark_runs_the_batch_both_ways(tmp_path):
    csv = write_reviews(tmp_path / "reviews.csv", n=120)
    output = bench(
        "population.py",
        ["--model", "tiny", "--data-csv", str(csv), *TINY_DATA, "--sweep", "lora.rank=2,4 trainer.seed=1",
         "--launchers", "basic,stacked,stacked,basic",  # members stacked on this CPU too
         "--override", "trainer.max_length=32", "--override", "trainer.precision=fp32",
         *[arg for key in DROPOUT_OFF for arg in ("--override", f"{key}=0")]],
        tmp_path,
    )  # fmt: skip
    rows = table_rows(output)
    assert [row[0] for row in rows] == ["basic", "stacked"]
    assert all(row[2] == "2" and row[3] == "2 (2)" for row in rows)  # two turns each, ABBA
    assert "load average" in output
    assert float(rows[1][-1]) == 0.0  # fp32, dropout off: the population's members are their single runs
