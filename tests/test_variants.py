"""LoRA variants and allocation (lora.scaling, lora.dora, lora.loraplus_lr_ratio, lora.layers, lora.budget): exact
counts derived by hand on a tiny BERT and a tiny DistilBERT, what PEFT was asked for, and runs that reload to their
own predictions."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from sentiment_lora.analysis.summary import row_of
from sentiment_lora.config import validate
from sentiment_lora.data import pipeline as data_lib
from sentiment_lora.errors import UserError
from sentiment_lora.loop import evaluate
from sentiment_lora.methods.lora_adapters import adapter_rank, attach_lora
from sentiment_lora.methods.targets import matched_modules
from sentiment_lora.model import build_classifier, classifier_of, frozen_depth
from sentiment_lora.predict import main as predict_main
from sentiment_lora.run import train
from sentiment_lora.runtime import make_optimizer
from sentiment_lora.trained import count_params, load_trained

from .conftest import TINY_FAST, compose_config, write_reviews

# Both tiny models: hidden 32, feed-forward 64, 4 layers, random init (no weights needed).
H, F, L = 32, 64, 4
HEAD = H + 1
MODELS = {
    "bert": ["model=tiny", f"model.arch.num_hidden_layers={L}"],
    "distilbert": ["model=distilbert", f"model.arch.dim={H}", f"model.arch.hidden_dim={F}",
                   f"model.arch.n_layers={L}", "model.arch.n_heads=2"],
}  # fmt: skip


def lora(rank: int, fan_in: int, fan_out: int) -> int:
    return rank * (fan_in + fan_out)  # A is r x in, B is out x r


# name, overrides, then by hand: (lora, dora_magnitude, head) trainable counts. DoRA adds one magnitude per output
# of each adapted Linear; a head adapted by LoRA is frozen and its DoRA magnitude has one entry.
COUNT_CASES = [
    ("standard qv r4", [], L * 2 * lora(4, H, H), 0, HEAD),
    ("rslora qv r4", ["lora.scaling=rslora"], L * 2 * lora(4, H, H), 0, HEAD),
    ("loraplus qv r4", ["lora.loraplus_lr_ratio=8"], L * 2 * lora(4, H, H), 0, HEAD),
    ("dora qv r4", ["lora.dora=true"], L * 2 * lora(4, H, H), L * 2 * H, HEAD),
    (
        "dora all r2",
        ["lora.dora=true", "lora/targets=all", "lora.rank=2"],
        L * (4 * lora(2, H, H) + lora(2, H, F) + lora(2, F, H)) + lora(2, H, 1),
        L * (4 * H + F + H) + 1,
        0,
    ),
    ("layers [1,3] qv r4", ["lora.layers=[1,3]"], 2 * 2 * lora(4, H, H), 0, HEAD),
    (
        "layers [0] ffn r2 dora",
        ["lora.layers=[0]", "lora/targets=ffn", "lora.rank=2", "lora.dora=true"],
        lora(2, H, F) + lora(2, F, H),
        F + H,
        HEAD,
    ),
    # qv costs L * 2 * 2H = 512 per unit of rank beside the head's 33: (3000 - 33) / 512 = 5.8, so rank 6.
    ("budget 3000 qv", ["lora.budget=3000"], L * 2 * lora(6, H, H), 0, HEAD),
    # With DoRA the fixed part is 33 + 256: (3000 - 289) / 512 = 5.3, so rank 5.
    ("budget 3000 qv dora", ["lora.budget=3000", "lora.dora=true"], L * 2 * lora(5, H, H), L * 2 * H, HEAD),
]


def build(model: str, overrides: list[str]):
    cfg = compose_config([*MODELS[model], *overrides])
    validate(cfg)
    torch.manual_seed(0)
    return cfg, attach_lora(build_classifier(cfg.model, None), cfg.lora, cfg.model.targets_map)


def base_total(model: str) -> int:
    cfg = compose_config(MODELS[model])
    return sum(p.numel() for p in build_classifier(cfg.model, None).parameters())


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("name,overrides,lora_params,dora_params,head", COUNT_CASES, ids=[c[0] for c in COUNT_CASES])
def test_trainable_counts_by_group(model, name, overrides, lora_params, dora_params, head):
    _, wrapped = build(model, overrides)
    params = count_params(wrapped)
    assert params["by_group"] == {"lora": lora_params, "dora_magnitude": dora_params, "head": head, "encoder": 0}
    assert params["trainable"] == lora_params + dora_params + head
    assert params["total"] == base_total(model) + lora_params + dora_params


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("scaling,expected", [("standard", 16 / 9), ("rslora", 16 / 3)])
def test_scaling_is_alpha_over_rank_or_over_its_square_root(model, scaling, expected):
    _, wrapped = build(model, [f"lora.scaling={scaling}", "lora.rank=9", "lora.alpha=16", "lora/targets=all"])
    layers = [module for _, module in wrapped.named_modules() if hasattr(module, "lora_A")]
    assert len(layers) == L * 6 + 1
    assert all(layer.scaling["default"] == pytest.approx(expected, rel=1e-12) for layer in layers)


@pytest.mark.parametrize("optimizer", ["adamw", "adam", "sgd"])
@pytest.mark.parametrize("targets", ["qv", "all"])
def test_loraplus_gives_b_matrices_ratio_times_lr_and_a_matrices_and_the_head_lr(optimizer, targets):
    ratio, lr = 8.0, 2e-3
    cfg, wrapped = build(
        "bert", [f"optimizer={optimizer}", f"optimizer.lr={lr}", "optimizer.weight_decay=0.05",
                 f"lora/targets={targets}", f"lora.loraplus_lr_ratio={ratio}", "lora.dora=true"],
    )  # fmt: skip
    built = make_optimizer(wrapped, cfg.optimizer, cfg.lora.loraplus_lr_ratio)
    assert type(built).__name__ == {"adamw": "AdamW", "adam": "Adam", "sgd": "SGD"}[optimizer]
    group_of = {id(p): group for group in built.param_groups for p in group["params"]}
    trainable = {name: p for name, p in wrapped.named_parameters() if p.requires_grad}
    assert set(group_of) == {id(p) for p in trainable.values()}  # every trainable parameter, once
    assert sum(len(group["params"]) for group in built.param_groups) == len(trainable)
    for name, parameter in trainable.items():
        group = group_of[id(parameter)]
        # PEFT's rule: B matrices and every 1-d adapter parameter (DoRA magnitudes) take the faster rate.
        fast = "lora_B" in name or "lora_magnitude_vector" in name
        assert group["lr"] == pytest.approx(lr * ratio if fast else lr), name
        assert group["weight_decay"] == 0.05, name
        if optimizer == "sgd":
            assert group["momentum"] == cfg.optimizer.momentum
    head = [name for name in trainable if "head" in name and "lora_" not in name]
    assert head == ([] if targets == "all" else ["base_model.model.head.weight", "base_model.model.head.bias"])
    # Without a ratio: one group at optimizer.lr, as before.
    plain = make_optimizer(wrapped, cfg.optimizer)
    assert [group["lr"] for group in plain.param_groups] == [lr]


def adapted_layer_indices(wrapped) -> set[int]:
    names = [name for name in matched_modules(wrapped, r".*\.lora_A") if ".layer." in name]
    return {int(name.split(".layer.")[1].split(".")[0]) for name in names}


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize(
    "overrides,adapted,depth",
    [
        (["lora.layers=[3,5]"], {3, 5}, 3),
        (["lora.layers=[5,0]"], {0, 5}, 0),
        (["lora.layers=[2]", "lora/targets=all"], {2}, 2),
        (["lora.top_layers=2"], {4, 5}, 4),
    ],
)
def test_layers_adapts_only_the_listed_layers_and_freezes_those_below(model, overrides, adapted, depth):
    six = [o.replace(f"layers={L}", "layers=6") for o in MODELS[model]]
    cfg = compose_config([*six, *overrides])
    validate(cfg)
    wrapped = attach_lora(build_classifier(cfg.model, None), cfg.lora, cfg.model.targets_map)
    assert adapted_layer_indices(wrapped) == adapted
    assert frozen_depth(classifier_of(wrapped)) == depth


@pytest.mark.parametrize("model", MODELS)
def test_a_layer_index_past_the_encoder_is_one_line_naming_its_layer_count(model):
    with pytest.raises(UserError, match=rf"^config lora.layers: index 4 is out of range for the encoder's {L} layers"):
        build(model, ["lora.layers=[1,4]"])


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize(
    "overrides", [[], ["lora.dora=true", "lora/targets=ffn"], ["lora/targets=all"]], ids=["qv", "ffn-dora", "all"]
)
def test_budget_picks_the_rank_whose_count_is_nearest(model, overrides):
    # The widest rank any of these allows: min(in, out) of each encoder Linear, the head's input width, all 32.
    limit = H
    cfg = compose_config([*MODELS[model], *overrides])
    base = build_classifier(cfg.model, None)
    counts = {}
    for rank in range(1, limit + 1):  # the brute force: real builds, one per rank
        cfg.lora.rank = rank
        counts[rank] = count_params(attach_lora(copy.deepcopy(base), cfg.lora, cfg.model.targets_map))["trainable"]
    # Linear in the rank: extend the line one step each way to the ranks no build allows (0 and limit + 1).
    counts[0] = 2 * counts[1] - counts[2]
    counts[limit + 1] = 2 * counts[limit] - counts[limit - 1]
    step = counts[1] - counts[0]
    budgets = {1, counts[0], counts[0] + step // 2, counts[0] + step // 2 + 1, counts[limit] + step // 2,
               counts[limit] + step // 2 + 1, counts[limit + 1]}  # fmt: skip
    for rank in (1, 2, 7, limit // 2, limit - 1, limit):
        budgets |= {counts[rank] - 1, counts[rank], counts[rank] + 1, counts[rank] + step // 2}
    outcomes = set()
    for budget in sorted(b for b in budgets if b >= 1):
        nearest = min(counts, key=lambda rank: (abs(counts[rank] - budget), rank))  # ties: the lower rank
        outcomes.add("too small" if nearest == 0 else "too large" if nearest == limit + 1 else "a rank")
        cfg.lora.budget, cfg.lora.rank = budget, 3  # the budget, not lora.rank, decides
        classifier = copy.deepcopy(base)
        if nearest == 0:
            small = rf"^config lora.budget: {budget:,} is too small for targets .*: rank 1 trains {counts[1]:,}$"
            with pytest.raises(UserError, match=small):
                attach_lora(classifier, cfg.lora, cfg.model.targets_map)
        elif nearest == limit + 1:
            large = rf"^config lora.budget: {budget:,} is too large for targets .*: rank {limit}, .* {counts[limit]:,}$"
            with pytest.raises(UserError, match=large):
                attach_lora(classifier, cfg.lora, cfg.model.targets_map)
        else:
            wrapped = attach_lora(classifier, cfg.lora, cfg.model.targets_map)
            assert adapter_rank(wrapped) == nearest, budget
            assert count_params(wrapped)["trainable"] == counts[nearest], budget
    assert outcomes == {"too small", "too large", "a rank"}


@pytest.mark.parametrize(
    "override,message",
    [
        ("lora.scaling=log", "lora.scaling: unknown value 'log'; choose from standard, rslora"),
        ("lora.loraplus_lr_ratio=-1", "lora.loraplus_lr_ratio: must be > 0 or null, got -1"),
        ("lora.loraplus_lr_ratio=0", "lora.loraplus_lr_ratio: must be > 0 or null, got 0"),
        ("lora.budget=0", "lora.budget: must be >= 1 or null, got 0"),
        ("lora.layers=[-1]", "lora.layers: each must be >= 0, got [-1]"),
        ("lora.layers=[1,1]", "lora.layers: lists a layer twice: [1, 1]"),
        ("lora.layers=[]", "lora.layers: is empty"),
        ("lora.layers=[1] lora.top_layers=1", "lora.layers: excludes lora.top_layers"),
    ],
)
def test_bad_variant_values_are_one_line_naming_the_key(override, message):
    with pytest.raises(UserError) as err:
        validate(compose_config(["model=tiny", *override.split()]))
    assert str(err.value).startswith(f"config {message}") and "\n" not in str(err.value)


def test_summary_rows_show_the_rank_used(tmp_path):
    records = {
        "budget": {"lora": {"rank": 4, "budget": 3000, "rank_used": 6, "targets": ["q"]}},
        "budget, failed before the build": {"lora": {"rank": 4, "budget": 3000, "targets": ["q"]}},
        "older record": {"lora": {"rank": 4, "targets": ["q"]}},
    }
    ranks = {}
    for name, record in records.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps({"status": "complete", **record}))
        ranks[name] = row_of(tmp_path / name)["rank"]
    assert ranks == {"budget": 6, "budget, failed before the build": None, "older record": 4}


VARIANTS = {
    "standard": [],
    "rslora": ["lora.scaling=rslora"],
    "dora": ["lora.dora=true", "lora/targets=all"],
    "loraplus": ["lora.loraplus_lr_ratio=4"],
    "layers": ["lora.layers=[1]", "trainer.frozen_prefix=eval"],
    "budget": ["lora.budget=1500"],  # qv on tiny: 256 per unit of rank + the head's 33, so rank 6
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_reloads_and_predicts_its_own_test_predictions(tmp_path, variant):
    reviews = write_reviews(tmp_path / "reviews.csv", n=60)
    overrides = [*TINY_FAST, "trainer.epochs=1", "data=csv", f"data.path={reviews}", *VARIANTS[variant]]
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    train(compose_config(overrides), run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "complete"
    assert metrics["lora"]["rank_used"] == (6 if variant == "budget" else 4)

    cfg = compose_config(overrides)
    trained = load_trained(cfg.model, run_dir)
    rows = data_lib.encode(data_lib.load_splits(cfg.data)["test"], trained.tokenizer, cfg.trainer.max_length)
    device = torch.device(metrics["device"])
    test, _, probs = evaluate(trained.model.to(device), rows, trained.tokenizer, cfg.trainer.eval_batch_size,
                              device, trained.dtype)  # fmt: skip
    saved = pd.read_csv(run_dir / "test_predictions.csv")["prob"].to_numpy()
    # float32 probabilities survive the CSV's shortest-repr formatting exactly.
    np.testing.assert_array_equal(probs, saved.astype(probs.dtype))
    assert test == metrics["test"]

    # The predict command reads the run as a user's: its .hydra/config.yaml (Hydra writes it; train() alone does not).
    (run_dir / ".hydra").mkdir()
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    test_csv, scored = tmp_path / "test.csv", tmp_path / "scored.csv"
    data_lib.load_splits(cfg.data)["test"].to_csv(test_csv, index=False)
    predict_main([str(run_dir), "--csv", str(test_csv), "--out", str(scored)])
    assert (
        pd.read_csv(scored, dtype=str)["prob"].tolist()
        == pd.read_csv(run_dir / "test_predictions.csv", dtype=str)["prob"].tolist()
    )

    reloaded = dict(trained.model.named_parameters())
    layers = [module for _, module in trained.model.named_modules() if hasattr(module, "lora_A")]
    if variant == "rslora":
        assert all(layer.scaling["default"] == 16 / math.sqrt(4) for layer in layers)
    if variant == "dora":
        assert sum("lora_magnitude_vector" in name for name in reloaded) == len(layers) == 2 * 6 + 1
    if variant == "layers":
        assert adapted_layer_indices(trained.model) == {1}
    if variant == "budget":
        assert adapter_rank(trained.model) == 6


def test_with_a_budget_the_configured_rank_is_not_part_of_the_configuration():
    from sentiment_lora.rundir.record import config_id

    def ids(*overrides):
        return config_id(compose_config(["model=tiny", *overrides]))

    assert ids("lora.budget=1500", "lora.rank=2") == ids("lora.budget=1500", "lora.rank=8")
    assert ids("lora.budget=1500") != ids("lora.budget=1600")
    assert ids("lora.rank=2") != ids("lora.rank=8")
