"""Exact trainable/total parameter counts, derived by hand, and exact target-to-module mapping."""

from __future__ import annotations

import json

import pytest
import torch

from sentiment_lora.errors import UserError
from sentiment_lora.methods.lora_adapters import attach_lora
from sentiment_lora.methods.targets import matched_modules, target_pattern, targets_and_map
from sentiment_lora.model import SentimentClassifier, build_encoder
from sentiment_lora.run import dry_run
from sentiment_lora.trained import count_params

from .conftest import compose_config, run_cli

# distilbert-base-uncased: hidden 768, FFN 3072, 6 layers; its encoder has 66,362,880 parameters.
H, FFN, LAYERS, ENCODER = 768, 3072, 6, 66_362_880
HEAD = H + 1  # single-unit Linear(768, 1): weight + bias


def lora(rank: int, fan_in: int, fan_out: int) -> int:
    return rank * fan_in + fan_out * rank  # A is r x in, B is out x r


ATTN = lora(4, H, H)  # one of q/k/v/out_lin at rank 4


@pytest.mark.slow
def test_seed_config_counts_via_cli_dry_run(tmp_path):
    done = run_cli(["model=distilbert", "dry_run=true", f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "already registered" not in done.stderr  # the entry module runs twice under -m: one registration
    params = json.loads((tmp_path / "run" / "metrics.json").read_text())["params"]
    assert params["trainable"] == 74_497
    assert params["total"] == 66_437_377
    assert params["by_group"] == {"lora": 73_728, "dora_magnitude": 0, "head": 769, "encoder": 0}
    assert "74,497" in done.stdout


CASES = [
    # rank 8 on q, k, v: 3 projections x 6 layers x 8 x (768 + 768); head trained fully.
    ("qkv r8", ["lora/targets=qkv", "lora.rank=8"], LAYERS * 3 * lora(8, H, H), 0, HEAD),
    # both FFN linears: lin1 768->3072 and lin2 3072->768, rank 4.
    ("ffn r4", ["lora/targets=ffn"], LAYERS * (lora(4, H, FFN) + lora(4, FFN, H)), 0, HEAD),
    # everything: q, k, v, out_lin, both FFN linears, and the head adapted by LoRA (head itself frozen).
    ("all r4", ["lora/targets=all"], LAYERS * (4 * ATTN + lora(4, H, FFN) + lora(4, FFN, H)) + lora(4, H, 1), 0, 0),
    # only the head, LoRA-adapted: 4 x 768 + 1 x 4 = 3,076 trainable.
    ("head r4", ["lora/targets=head"], lora(4, H, 1), 0, 0),
    # attention output projection only, rank 1.
    ("output r1", ["lora.targets=[output]", "lora.rank=1"], LAYERS * lora(1, H, H), 0, HEAD),
    # The seed setting with DoRA: one magnitude per output of q and v, 6 x 2 x 768 = 9,216 more (83,713 trainable).
    ("dora qv r4", ["lora.dora=true"], LAYERS * 2 * ATTN, LAYERS * 2 * H, HEAD),
    # rsLoRA changes the scaling, not the count: the seed's 74,497.
    ("rslora qv r4", ["lora.scaling=rslora"], LAYERS * 2 * ATTN, 0, HEAD),
    # Two layers only: 2 x 2 x 6,144 = 24,576 (25,345 trainable).
    ("layers [3,5] qv r4", ["lora.layers=[3,5]"], 2 * 2 * ATTN, 0, HEAD),
    # qv costs 6 x 2 x 1,536 = 18,432 per unit of rank beside the head's 769: (150,000 - 769) / 18,432 = 8.1, so
    # rank 8: 147,456 + 769 = 148,225 trainable.
    ("budget 150000 qv", ["lora.budget=150000"], LAYERS * 2 * lora(8, H, H), 0, HEAD),
]


@pytest.mark.parametrize("name,overrides,lora_params,dora_params,head", CASES, ids=[c[0] for c in CASES])
def test_distilbert_counts_for_other_target_sets(tmp_path, capsys, name, overrides, lora_params, dora_params, head):
    dry_run(compose_config(["model=distilbert", "dry_run=true", *overrides]), tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    params = metrics["params"]
    assert params["by_group"] == {"lora": lora_params, "dora_magnitude": dora_params, "head": head, "encoder": 0}
    assert params["trainable"] == lora_params + dora_params + head
    # The head's base weights always count in the total.
    assert params["total"] == ENCODER + lora_params + dora_params + HEAD
    printed = capsys.readouterr().out
    assert f"trainable {params['trainable']:,} of {params['total']:,}" in printed
    assert ("dora_magnitude" in printed) == bool(dora_params)
    used = "r=8 (budget 150,000)" if name.startswith("budget") else f"r={metrics['lora']['rank']} "
    assert metrics["lora"]["rank_used"] == int(used.split()[0][2:]) and used in printed


def adapted(overrides):
    cfg = compose_config(["model=tiny", *overrides])
    torch.manual_seed(0)
    model = SentimentClassifier(build_encoder(cfg.model, None), cfg.model.pooling, 0.0)
    targets, targets_map, only_layers = targets_and_map(model, cfg.lora, cfg.model.targets_map)
    return sorted(matched_modules(model, target_pattern(targets_map, targets, only_layers)))


def test_bert_ffn_and_attention_output_are_told_apart():
    # In BERT both the attention output and the second FFN linear end in 'output.dense'.
    ffn = adapted(["lora/targets=ffn"])
    out = adapted(["lora.targets=[output]"])
    assert ffn == sorted(
        [f"encoder.encoder.layer.{i}.{m}" for i in range(2) for m in ("intermediate.dense", "output.dense")]
    )
    assert out == [f"encoder.encoder.layer.{i}.attention.output.dense" for i in range(2)]
    assert not set(ffn) & set(out)


@pytest.mark.parametrize(
    "targets,suffixes",
    [
        ("qv", ["attention.self.query", "attention.self.value"]),
        ("qkv", ["attention.self.key", "attention.self.query", "attention.self.value"]),
        ("head", []),
    ],
)
def test_presets_select_exactly_their_modules(targets, suffixes):
    expected = sorted(f"encoder.encoder.layer.{i}.{s}" for i in range(2) for s in suffixes)
    if targets == "head":
        expected = ["head"]
    assert adapted([f"lora/targets={targets}"]) == expected


def test_head_trained_fully_unless_lora_adapts_it():
    cfg = compose_config(["model=tiny"])
    model = attach_lora(
        SentimentClassifier(build_encoder(cfg.model, None), "mean", 0.0), cfg.lora, cfg.model.targets_map
    )
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {n for n in trainable if "lora_" not in n} == {"base_model.model.head.weight", "base_model.model.head.bias"}
    cfg = compose_config(["model=tiny", "lora/targets=all"])
    model = attach_lora(
        SentimentClassifier(build_encoder(cfg.model, None), "mean", 0.0), cfg.lora, cfg.model.targets_map
    )
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    assert count_params(model)["by_group"]["head"] == 0


@pytest.mark.parametrize("targets,rank,widest", [("all", 32, None), ("all", 33, "32 -> 32"), ("ffn", 33, "32 -> 64")])
def test_rank_is_at_most_the_width_of_each_adapted_layer(targets, rank, widest):
    # tiny: hidden 32, FFN 64; the head (32 -> 1) is held to its input width.
    cfg = compose_config(["model=tiny", f"lora/targets={targets}", f"lora.rank={rank}"])
    classifier = SentimentClassifier(build_encoder(cfg.model, None), "mean", 0.0)
    if widest is None:
        attach_lora(classifier, cfg.lora, cfg.model.targets_map)
        return
    with pytest.raises(UserError, match=rf"lora.rank: {rank} exceeds the width of .*\({widest}\); use lora.rank=32"):
        attach_lora(classifier, cfg.lora, cfg.model.targets_map)
