"""The architecture table, family by family, on tiny random encoders (hidden 32, 2 layers, from_config).

Expected module names are typed here from the transformers 5.24 modeling code (not read from the table), and
parameter counts are computed independently: r * (in + out) over those Linears, plus the head.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from omegaconf import OmegaConf, open_dict
from transformers import AutoConfig, AutoModel

from sentiment_lora import encoders
from sentiment_lora.errors import UserError
from sentiment_lora.methods.lora_adapters import attach_lora
from sentiment_lora.model import SentimentClassifier, check_frozen_prefix, frozen_depth
from sentiment_lora.run import dry_run, train

from .conftest import TINY_FAST, compose_config, write_reviews

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
# bert-base-uncased's vocabulary (the tokenizer the runs borrow) and its [PAD], [CLS], [SEP] ids.
VOCAB = {"vocab_size": 30522, "pad_token_id": 0}
ARCH = {
    "bert": {},
    "roberta": {},
    "xlm-roberta": {},
    "camembert": {},
    "ernie": {},
    "electra": {"embedding_size": 16},  # != hidden: embeddings_project runs before layer 0
    "albert": {"embedding_size": 16},  # embedding_hidden_mapping_in; one shared layer
    # DeBERTa-v3 (model_type deberta-v2) with the v2-xlarge extras: a conv after layer 0 and separate pos_* Linears.
    "deberta-v2": {
        "relative_attention": True, "position_biased_input": False, "pos_att_type": ["p2c", "c2p"],
        "norm_rel_ebd": "layer_norm", "position_buckets": 16, "share_att_key": False, "conv_kernel_size": 3,
    },
    "deberta": {"relative_attention": True, "pos_att_type": ["c2p", "p2c"]},  # pos_proj, pos_q_proj
    "mpnet": {},
    "modernbert": {"bos_token_id": 101, "eos_token_id": 102, "cls_token_id": 101, "sep_token_id": 102},
    "nomic_bert": {},
    "longformer": {"attention_window": 4},
    "big_bird": {"attention_type": "original_full"},
    "distilbert": {"dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64},
}  # fmt: skip


def arch(model_type: str) -> dict:
    sizes = {} if model_type == "distilbert" else TINY
    return {"model_type": model_type, **sizes, **VOCAB, **ARCH[model_type]}


def tiny_config(model_type: str):
    kwargs = arch(model_type)
    return AutoConfig.for_model(kwargs.pop("model_type"), **kwargs)


BERT_LIKE = {
    "q": ["encoder.layer.N.attention.self.query"],
    "k": ["encoder.layer.N.attention.self.key"],
    "v": ["encoder.layer.N.attention.self.value"],
    "output": ["encoder.layer.N.attention.output.dense"],
    "ffn": ["encoder.layer.N.intermediate.dense", "encoder.layer.N.output.dense"],
}
# Per family and target, the Linears (relative to the AutoModel base, N = layer index) a target must adapt.
EXPECTED = {
    **{name: BERT_LIKE for name in ("bert", "roberta", "xlm-roberta", "camembert", "ernie", "electra")},
    **{name: BERT_LIKE for name in ("longformer", "big_bird")},  # never Longformer's *_global
    "distilbert": {
        "q": ["transformer.layer.N.attention.q_lin"],
        "k": ["transformer.layer.N.attention.k_lin"],
        "v": ["transformer.layer.N.attention.v_lin"],
        "output": ["transformer.layer.N.attention.out_lin"],
        "ffn": ["transformer.layer.N.ffn.lin1", "transformer.layer.N.ffn.lin2"],
    },
    "deberta-v2": {
        **BERT_LIKE,
        "q": ["encoder.layer.N.attention.self.query_proj"],
        "k": ["encoder.layer.N.attention.self.key_proj"],
        "v": ["encoder.layer.N.attention.self.value_proj"],
    },
    "deberta": {**BERT_LIKE, "qkv": ["encoder.layer.N.attention.self.in_proj"]},
    "mpnet": {
        **BERT_LIKE,
        "q": ["encoder.layer.N.attention.attn.q"],
        "k": ["encoder.layer.N.attention.attn.k"],
        "v": ["encoder.layer.N.attention.attn.v"],
        "output": ["encoder.layer.N.attention.attn.o"],
    },
    "modernbert": {
        "qkv": ["layers.N.attn.Wqkv"],
        "output": ["layers.N.attn.Wo"],
        "ffn": ["layers.N.mlp.Wi", "layers.N.mlp.Wo"],
    },
    "nomic_bert": {
        "q": ["layers.N.self_attn.q_proj"],
        "k": ["layers.N.self_attn.k_proj"],
        "v": ["layers.N.self_attn.v_proj"],
        "output": ["layers.N.self_attn.o_proj"],
        "ffn": ["layers.N.mlp.up_proj", "layers.N.mlp.gate_proj", "layers.N.mlp.down_proj"],
    },
    "albert": {  # one physical layer, shared by both depths
        target: [f"encoder.albert_layer_groups.0.albert_layers.0.{module}" for module in modules]
        for target, modules in {
            "q": ["attention.query"],
            "k": ["attention.key"],
            "v": ["attention.value"],
            "output": ["attention.dense"],
            "ffn": ["ffn", "ffn_output"],
        }.items()
    },  # fmt: skip
}
FUSED = {"deberta", "modernbert"}
FAMILIES = sorted(EXPECTED)
TARGET_SETS = {"qv": ["q", "v"], "qkv": ["qkv"], "output": ["output"], "ffn": ["ffn"], "all": None}


def expected_modules(model_type: str, targets: list[str], layers: list[int]) -> list[str]:
    """Full module names inside SentimentClassifier (prefix 'encoder.'), 'head' when LoRA adapts it."""
    table = EXPECTED[model_type]
    if "qkv" not in table:
        table = {**table, "qkv": table["q"] + table["k"] + table["v"]}
    names = []
    for target in targets:
        if target == "head":
            names.append("head")
            continue
        for module in table[target]:
            names += (
                [f"encoder.{module.replace('.N.', f'.{i}.')}" for i in layers]
                if ".N." in module
                else [f"encoder.{module}"]
            )
    return sorted(set(names))


def all_targets(model_type: str) -> list[str]:
    # The 'all' preset: q, k, v, output, ffn and head; on a fused family q, k and v together are its fused Linear.
    return ["qkv", "output", "ffn", "head"] if model_type in FUSED else ["q", "k", "v", "output", "ffn", "head"]


def classifier(model_type: str, seed: int = 0) -> SentimentClassifier:
    torch.manual_seed(seed)
    return SentimentClassifier(AutoModel.from_config(tiny_config(model_type)), "mean", 0.0)


def lora_cfg(targets, rank=4, top_layers=None):
    return OmegaConf.create({"targets": targets, "rank": rank, "alpha": 16, "dropout": 0.0, "top_layers": top_layers})


def adapted_names(wrapped) -> list[str]:
    prefix = "base_model.model."
    return sorted(
        name.removeprefix(prefix)
        for name, module in wrapped.named_modules()
        if hasattr(module, "lora_A") and isinstance(module.base_layer, torch.nn.Linear)
    )


@pytest.mark.parametrize("targets", list(TARGET_SETS))
@pytest.mark.parametrize("model_type", FAMILIES)
def test_each_target_adapts_exactly_the_linears_it_names(model_type, targets):
    chosen = TARGET_SETS[targets] or all_targets(model_type)
    layers = [0] if model_type == "albert" else [0, 1]
    if model_type in FUSED and targets == "qv":
        with pytest.raises(UserError, match="'q' cannot be adapted alone"):
            attach_lora(classifier(model_type), lora_cfg(chosen))
        return
    wrapped = attach_lora(classifier(model_type), lora_cfg(chosen))
    assert adapted_names(wrapped) == expected_modules(model_type, chosen, layers)
    # Nothing else: poolers, embedding projections, Longformer's *_global and DeBERTa's pos_* stay plain Linears.
    plain = {name for name, module in wrapped.named_modules() if type(module) is torch.nn.Linear}
    assert not {name for name in plain if "lora_" not in name} & set(expected_modules(model_type, chosen, layers))


def independent_count(model_type: str, targets: list[str], rank: int, layers: list[int]) -> int:
    """r * (in + out) over the expected Linears of a fresh model, plus the head: 32 -> 1 trained fully (33), or
    adapted by LoRA (r * 33)."""
    model = AutoModel.from_config(tiny_config(model_type))
    total = 0
    for name in expected_modules(model_type, targets, layers):
        if name == "head":
            total += rank * (32 + 1)
            continue
        linear = model.get_submodule(name.removeprefix("encoder."))
        total += rank * (linear.in_features + linear.out_features)
    return total + (0 if "head" in targets else 32 + 1)


@pytest.mark.parametrize("top_layers", [None, 1])
@pytest.mark.parametrize("rank", [2, 8])
@pytest.mark.parametrize("targets", list(TARGET_SETS))
@pytest.mark.parametrize("model_type", FAMILIES)
def test_dry_run_counts_equal_an_independent_count(tmp_path, capsys, model_type, targets, rank, top_layers):
    chosen = TARGET_SETS[targets] or all_targets(model_type)
    if model_type == "albert" and top_layers is not None:
        pytest.skip("ALBERT refuses lora.top_layers (test_albert_refuses_a_choice_of_layers_...)")
    if model_type in FUSED and targets == "qv":
        pytest.skip("q without k and v is refused on a fused family (test_q_k_or_v_alone_on_a_fused_family_...)")
    cfg = compose_config(["model=tiny", f"lora.rank={rank}", f"lora.targets=[{','.join(chosen)}]"])
    with open_dict(cfg):
        cfg.model.arch = arch(model_type)
        cfg.lora.top_layers = top_layers
        cfg.model.name = model_type
    dry_run(cfg, tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    layers = [0] if model_type == "albert" else [1] if top_layers == 1 else [0, 1]
    assert metrics["params"]["trainable"] == independent_count(model_type, chosen, rank, layers)
    assert f"trainable {metrics['params']['trainable']:,} of" in capsys.readouterr().out


@pytest.mark.parametrize("model_type", sorted(FUSED))
@pytest.mark.parametrize("alone", ["q", "k", "v"])
def test_q_k_or_v_alone_on_a_fused_family_is_one_line_naming_the_fused_linear(model_type, alone):
    fused = {"modernbert": r"layers\.N\.attn\.Wqkv", "deberta": r"encoder\.layer\.N\.attention\.self\.in_proj"}
    with pytest.raises(UserError, match=rf"'{alone}' cannot be adapted alone on {model_type}: .*\({fused[model_type]}\)"
                       r"; use target 'qkv'") as caught:  # fmt: skip
        attach_lora(classifier(model_type), lora_cfg([alone, "ffn"]))
    assert "\n" not in str(caught.value)


def test_qkv_beside_q_k_or_v_is_refused():
    with pytest.raises(UserError, match="'qkv' already holds q"):
        attach_lora(classifier("bert"), lora_cfg(["q", "qkv"]))


@pytest.mark.parametrize("key", ["top_layers", "layers"])
def test_albert_refuses_a_choice_of_layers_and_counts_its_shared_layer_once(key):
    cfg = lora_cfg(["q", "v"])
    cfg[key] = 1 if key == "top_layers" else [1]
    with pytest.raises(UserError, match=f"lora.{key}: albert runs one shared layer at all 2 depths"):
        attach_lora(classifier("albert"), cfg)
    # 4 layers deep, still one physical layer: the count does not grow with depth.
    counts = []
    for depth in (2, 4):
        config = tiny_config("albert")
        config.num_hidden_layers = depth
        counts.append(count_of(attach_lora(SentimentClassifier(AutoModel.from_config(config), "mean", 0.0),
                                           lora_cfg(["q", "v"]))))  # fmt: skip
    assert counts[0] == counts[1] == 4 * 2 * (32 + 32) + 33


def count_of(wrapped) -> int:
    return sum(p.numel() for p in wrapped.parameters() if p.requires_grad)


PREFIX_FAMILIES = [name for name in FAMILIES if not encoders.FAMILIES[name].no_prefix]
CACHE_FAMILIES = [name for name in PREFIX_FAMILIES if not encoders.FAMILIES[name].no_cache]


@pytest.mark.parametrize("model_type", CACHE_FAMILIES)
def test_the_cached_prefix_is_the_live_encoders_hidden_state_and_the_layers_above_continue_it(model_type):
    model = classifier(model_type).eval()
    ids = torch.randint(1000, 2000, (3, 11))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    with torch.no_grad():
        live = model.encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        logits = model(ids, mask)
        for depth in range(2):
            cached = model.frozen_output(ids, mask, depth).clone()
            torch.testing.assert_close(cached, live.hidden_states[depth], rtol=0, atol=1e-5)
            model.cached_depth = depth
            torch.testing.assert_close(model(ids, mask, prefix=cached), logits, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "model_type,mode,reason",
    [
        ("albert", "cache", "ALBERT runs one shared layer at every depth"),
        ("albert", "eval", "ALBERT runs one shared layer at every depth"),
        ("longformer", "cache", "pads the sequence inside its forward"),
        ("big_bird", "cache", "pads the sequence inside its forward"),
    ],
)
def test_a_frozen_prefix_a_family_cannot_run_exactly_is_refused_in_one_line(model_type, mode, reason):
    wrapped = attach_lora(classifier(model_type), lora_cfg(["q", "v"]))
    model = wrapped.base_model.model
    depth = frozen_depth(model)
    with pytest.raises(
        UserError, match=rf"trainer.frozen_prefix: '{mode}' is not supported for {model_type}: {reason}"
    ):
        check_frozen_prefix(model, mode, depth)
    check_frozen_prefix(model, "live", depth)
    only_head = attach_lora(classifier(model_type), lora_cfg(["head"])).base_model.model
    check_frozen_prefix(only_head, mode, frozen_depth(only_head))  # the whole encoder frozen: its output is exact


def test_a_model_type_outside_the_table_is_one_line_naming_the_families_and_the_way_by_hand():
    with pytest.raises(UserError) as caught:
        SentimentClassifier(AutoModel.from_config(AutoConfig.for_model("xlm", emb_dim=32, n_layers=2, n_heads=2)),
                            "mean", 0.0)  # fmt: skip
    assert "model_type 'xlm' is not supported: XLM keeps its layers as four parallel lists" in str(caught.value)
    config = AutoConfig.for_model("squeezebert", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, embedding_size=32)  # fmt: skip
    with pytest.raises(UserError) as caught:
        SentimentClassifier(AutoModel.from_config(config), "mean", 0.0)
    message = str(caught.value)
    assert (
        "\n" not in message
        and "model_type 'squeezebert' is not in the family table (supported: albert, bert" in message
    )
    assert "model.targets_map" in message and "model.layers_path" in message


def test_a_targets_map_by_hand_overrides_the_table():
    model = SentimentClassifier(AutoModel.from_config(tiny_config("bert")), "mean", 0.0, "encoder.layer", True)
    by_hand = {
        "q": [r"encoder\.layer\.\d+\.attention\.self\.query"],
        "v": [r"encoder\.layer\.1\.attention\.self\.value"],
    }
    wrapped = attach_lora(model, lora_cfg(["q", "v"]), by_hand)
    assert adapted_names(wrapped) == [
        "encoder.encoder.layer.0.attention.self.query", "encoder.encoder.layer.1.attention.self.query",
        "encoder.encoder.layer.1.attention.self.value",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "model_type,positions,usable",
    [
        ("bert", 512, 512),
        ("roberta", 514, 512),
        ("mpnet", 514, 512),
        ("distilbert", 512, 512),
        ("modernbert", 8192, 8192),
    ],
)
def test_usable_positions_lose_two_in_the_roberta_family(model_type, positions, usable):
    config = AutoConfig.for_model(model_type, max_position_embeddings=positions)  # roberta-base, all-mpnet-base-v2: 514
    assert encoders.usable_positions(encoders.FAMILIES[model_type], config) == usable


@pytest.mark.slow
@pytest.mark.parametrize("model_type", CACHE_FAMILIES)
def test_a_short_run_completes_and_its_cache_gives_the_numbers_of_eval(tmp_path, model_type):
    reviews = write_reviews(tmp_path / "reviews.csv", n=40)
    args = [*TINY_FAST, "trainer.epochs=1", "trainer.max_length=24", "data=csv", f"data.path={reviews}",
            "trainer.precision=fp32", "lora.top_layers=1", "lora.targets=[qkv,ffn]", "save_adapter=false"]  # fmt: skip
    results = {}
    for mode in ("eval", "cache"):
        cfg = compose_config([*args, f"trainer.frozen_prefix={mode}"])
        with open_dict(cfg):
            cfg.model.arch = arch(model_type)  # set on the composed config: lists do not fit a command-line override
        (tmp_path / mode).mkdir()
        train(copy.deepcopy(cfg), tmp_path / mode)
        results[mode] = json.loads((tmp_path / mode / "metrics.json").read_text())
    eval_run, cache_run = results["eval"], results["cache"]
    assert cache_run["status"] == eval_run["status"] == "complete"
    assert cache_run["prefix_cache_s"] > 0 == eval_run["prefix_cache_s"]  # the cache was computed and used
    for before, after in zip(eval_run["history"], cache_run["history"], strict=True):
        assert after["train_loss"] == pytest.approx(before["train_loss"], abs=1e-5)
        assert after["val_loss"] == pytest.approx(before["val_loss"], abs=1e-5)
    assert cache_run["test"]["loss"] == pytest.approx(eval_run["test"]["loss"], abs=1e-5)
    assert cache_run["params"] == eval_run["params"]


# ---- saved folders given as model=auto model.path=<folder> and no other model key ----

SAVED = ["roberta", "deberta-v2", "electra", "modernbert", "mpnet"]


def save_folder(folder, model_type: str, sentence_transformers: bool) -> None:
    """A random tiny model (save_pretrained) with the bert-base-uncased tokenizer, as a user's folder would be."""
    from transformers import AutoTokenizer

    from sentiment_lora.sources import package_model_path

    torch.manual_seed(0)
    AutoModel.from_config(tiny_config(model_type)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(package_model_path()).save_pretrained(folder)
    if sentence_transformers:  # sentence-transformers records its pooling beside the weights
        (folder / "1_Pooling").mkdir()
        modes = {"word_embedding_dimension": 32, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True}
        (folder / "1_Pooling" / "config.json").write_text(json.dumps(modes))


@pytest.mark.slow
@pytest.mark.parametrize("model_type", SAVED)
def test_a_saved_folder_trains_predicts_and_exports_with_model_auto(tmp_path, capsys, model_type):
    import numpy as np
    import pandas as pd

    from sentiment_lora import predict as predict_lib
    from sentiment_lora.data import pipeline as data_lib
    from sentiment_lora.export import cli as export_lib
    from sentiment_lora.export.formats import FORMATS
    from sentiment_lora.loop import predict
    from sentiment_lora.trained import load_trained

    from .conftest import run_cli

    folder = tmp_path / f"my-{model_type}"
    mean = model_type in ("mpnet", "roberta")  # two of them as sentence-transformers folders
    save_folder(folder, model_type, sentence_transformers=mean)
    reviews = write_reviews(tmp_path / "reviews.csv", n=60)
    run_dir = tmp_path / "run"
    # qkvo: q, k, v and the attention output, on ModernBERT its fused Wqkv and Wo; the layer below cached.
    args = ["model=auto", f"model.path={folder}", "data=csv", f"data.path={reviews}", "trainer.epochs=1",
            "trainer.max_length=32", "trainer.progress=false", "trainer.precision=fp32", "lora/targets=qkvo",
            "lora.top_layers=1", "trainer.frozen_prefix=cache", f"hydra.run.dir={run_dir}"]  # fmt: skip
    done = run_cli(args, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "complete" and metrics["prefix_cache_s"] > 0
    assert (metrics["model"]["name"], metrics["model"]["pooling"]) == (f"my-{model_type}", "mean" if mean else "cls")

    # predict reproduces test_predictions.csv, digit for digit
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    test_csv, out = tmp_path / "test.csv", tmp_path / "scored.csv"
    data_lib.load_splits(cfg.data)["test"].to_csv(test_csv, index=False)
    predict_lib.main([str(run_dir), "--csv", str(test_csv), "--out", str(out)])
    saved, scored = pd.read_csv(run_dir / "test_predictions.csv", dtype=str), pd.read_csv(out, dtype=str)
    assert len(scored) == metrics["split_sizes"]["test"] > 3
    for column in ("row", "prob", "prediction"):
        assert scored[column].tolist() == saved[column].tolist(), column

    # the export loads with plain transformers and scores as the run's model does
    export_lib.main([str(run_dir), str(tmp_path / "exported")])
    capsys.readouterr()
    texts = ["A wonderful, moving film.", "awful boring movie", "the plot was fine, the cast weak"]
    trained = load_trained(cfg.model, run_dir)
    rows = data_lib.encode(pd.DataFrame({"text": texts, "label": 0}), trained.tokenizer, cfg.trainer.max_length)
    expected = predict(trained.model, rows, trained.tokenizer, 8, torch.device("cpu"), None)
    plain = FORMATS["transformers"].probabilities(tmp_path / "exported", texts)
    np.testing.assert_allclose(plain, expected, rtol=0, atol=1e-5)
    assert json.loads((tmp_path / "exported" / "config.json").read_text())["model_type"] == model_type


@pytest.mark.parametrize("model_type", ["modernbert", "albert"])
def test_model_auto_dry_run_counts_from_the_folders_config_without_loading_weights(tmp_path, capsys, model_type):
    folder = tmp_path / "folder"
    save_folder(folder, model_type, sentence_transformers=False)
    (folder / "model.safetensors").unlink()  # dry_run builds the architecture from config.json alone
    cfg = compose_config(["model=auto", f"model.path={folder}", "lora/targets=all", "dry_run=true"])
    dry_run(cfg, tmp_path)
    printed = capsys.readouterr().out
    layers = [0] if model_type == "albert" else [0, 1]
    expected = independent_count(model_type, all_targets(model_type), 4, layers)
    assert printed.startswith("folder lora r=4") and f"trainable {expected:,} of" in printed


@pytest.mark.slow
def test_model_auto_with_a_hub_id_from_the_local_hugging_face_cache(tmp_path, monkeypatch):
    from .conftest import run_cli

    # The cache's own layout: models--<org>--<name>/snapshots/<commit>/ and refs/main naming the commit.
    repo = tmp_path / "hf" / "models--acme--tiny-electra"
    save_folder(repo / "snapshots" / "0123abc", "electra", sentence_transformers=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    reviews = write_reviews(tmp_path / "reviews.csv", n=40)
    run_dir = tmp_path / "run"
    args = ["model=auto", "model.pretrained=acme/tiny-electra", "data=csv", f"data.path={reviews}",
            "trainer.epochs=1", "trainer.max_length=24", "trainer.progress=false"]  # fmt: skip
    args.append(f"hydra.run.dir={run_dir}")
    done = run_cli(args, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (metrics["status"], metrics["model"]["name"], metrics["model"]["pooling"]) == (
        "complete",
        "tiny-electra",
        "mean",
    )
    # Nothing named: one line.
    done = run_cli(["model=auto", "dry_run=true"], tmp_path)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0, done.stderr
    assert "give model.path=/folder/with/weights or model.pretrained=" in done.stderr


@pytest.mark.parametrize(
    "model_type,attention_keys,hidden_keys",
    [
        ("bert", ["attention_probs_dropout_prob"], ["hidden_dropout_prob"]),
        ("distilbert", ["attention_dropout"], ["dropout"]),
        ("modernbert", ["attention_dropout"], ["embedding_dropout", "mlp_dropout"]),
        ("mpnet", ["attention_probs_dropout_prob"], ["hidden_dropout_prob"]),
    ],
)
def test_dropout_overrides_reach_the_familys_own_config_keys(model_type, attention_keys, hidden_keys):
    from sentiment_lora.model import encoder_config

    cfg = compose_config(["model=tiny", "model.attention_dropout=0.25", "model.hidden_dropout=0.125"])
    with open_dict(cfg):
        cfg.model.arch = arch(model_type)
    config = encoder_config(cfg.model, None)
    assert [getattr(config, key) for key in attention_keys] == [0.25] * len(attention_keys)
    assert [getattr(config, key) for key in hidden_keys] == [0.125] * len(hidden_keys)


def test_model_auto_pooling_comes_from_1_pooling_else_the_family_and_an_unknown_mode_is_refused(tmp_path):
    from sentiment_lora.config import validate

    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "deberta-v2"}))
    cfg = compose_config(["model=auto", f"model.path={folder}"])
    assert (cfg.model.name, cfg.model.pooling) == ("my-model", "cls")
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_max_tokens": True}))
    cfg = compose_config(["model=auto", f"model.path={folder}"])
    with pytest.raises(UserError, match=r"config model.pooling: unknown value 'max_tokens \(from .*1_Pooling"):
        validate(cfg)
    assert compose_config(["model=auto", "model.pretrained=org/some-model"]).model.name == "some-model"


@pytest.mark.parametrize("model_type", ["modernbert", "deberta-v2", "distilbert"])
def test_lora_layers_picks_exactly_the_listed_layers_of_each_family(model_type):
    kwargs = {**arch(model_type), ("n_layers" if model_type == "distilbert" else "num_hidden_layers"): 3}
    torch.manual_seed(0)
    model = SentimentClassifier(
        AutoModel.from_config(AutoConfig.for_model(kwargs.pop("model_type"), **kwargs)), "mean", 0.0
    )
    cfg = lora_cfg(["qkv", "ffn"])
    cfg.layers = [0, 2]
    assert adapted_names(attach_lora(model, cfg)) == expected_modules(model_type, ["qkv", "ffn"], [0, 2])
