"""The fine-tuning methods beside LoRA (method=linear_probe|bitfit|ia3|full): exact trainable counts against counts
typed or computed here from module shapes, and the same run, resume, predict and export as LoRA, for these and
for PEFT's other methods (tests/test_peft_methods.py has their counts on every family)."""

from __future__ import annotations

import json
import re
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from huggingface_hub import ModelCard
from omegaconf import OmegaConf
from transformers import AutoConfig, AutoModel

from sentiment_lora import methods, prefix
from sentiment_lora import predict as predict_lib
from sentiment_lora.data import pipeline as data_lib
from sentiment_lora.errors import UserError
from sentiment_lora.export import cli as export_lib
from sentiment_lora.export.formats import FORMATS
from sentiment_lora.loop import predict
from sentiment_lora.model import SentimentClassifier, build_classifier, load_tokenizer
from sentiment_lora.run import dry_run, train
from sentiment_lora.rundir.record import config_id
from sentiment_lora.train import cli
from sentiment_lora.trained import attach_method, count_params, load_trained

from .conftest import CONF, REPO, TINY_FAST, compose_config, write_reviews
from .test_families import EXPECTED, FAMILIES, FUSED, tiny_config
from .test_peft_methods import NEW_METHODS, PER_LINEAR, TINY_KNOBS
from .test_predict_export import call
from .test_resume import Killed, kill_after_epoch, results_of

METHODS = ["lora", "linear_probe", "bitfit", "ia3", "full"]
OTHER_METHODS = METHODS[1:]
# The run, resume, predict and export tables: every registered method, with the knobs a tiny model needs.
RUN_METHODS = [*METHODS, *NEW_METHODS]
TINY_OVERRIDES = {name: [f"method.{PER_LINEAR[name][1]}={value}"] for name, value in TINY_KNOBS.items()}


# ---- exact counts, typed by hand for the real architectures ----

# tiny (conf/model/tiny.yaml): hidden 32, FFN 64, 2 layers, vocab 30522, 512 positions; the encoder holds 1,011,360
# parameters, 1,056 of them in the unused pooler (32 x 32 + 32). Head: 33.
TINY_ENCODER, TINY_POOLER = 1_011_360, 32 * 32 + 32
# Bias terms per BERT layer: q, k, v, attention output (4 x H), LayerNorm, FFN in (I), FFN out (H), LayerNorm.
TINY_BIASES = 2 * (4 * 32 + 32 + 64 + 32 + 32) + 32  # + the embeddings' LayerNorm: 608
TINY_IA3 = 2 * (32 + 32 + 64)  # k and v outputs, the FFN down projection's input, per layer: 256
# MiniLM (all-MiniLM-L6-v2): hidden 384, FFN 1536, 6 layers; encoder 22,713,216 with a 147,840 pooler; head 385.
MINILM_ENCODER, MINILM_POOLER = 22_713_216, 384 * 384 + 384
MINILM_BIASES = 6 * (4 * 384 + 384 + 1536 + 384 + 384) + 384  # 25,728
MINILM_IA3 = 6 * (384 + 384 + 1536)  # 13,824
# DistilBERT (distilbert-base-uncased): hidden 768, FFN 3072, 6 layers, no pooler; encoder 66,362,880; head 769.
DISTIL_ENCODER = 66_362_880
DISTIL_BIASES = 6 * (4 * 768 + 768 + 3072 + 768 + 768) + 768  # 51,456
DISTIL_IA3 = 6 * (768 + 768 + 3072)  # 27,648

# model, method -> (by_group without zeros, total parameters)
COUNTS = {
    ("tiny", "linear_probe"): ({"head": 33}, TINY_ENCODER + 33),
    ("tiny", "bitfit"): ({"encoder": TINY_BIASES, "head": 33}, TINY_ENCODER + 33),
    ("tiny", "ia3"): ({"ia3": TINY_IA3, "head": 33}, TINY_ENCODER + TINY_IA3 + 33),
    ("tiny", "full"): ({"encoder": TINY_ENCODER - TINY_POOLER, "head": 33}, TINY_ENCODER + 33),
    ("minilm", "linear_probe"): ({"head": 385}, MINILM_ENCODER + 385),
    ("minilm", "bitfit"): ({"encoder": MINILM_BIASES, "head": 385}, MINILM_ENCODER + 385),
    ("minilm", "ia3"): ({"ia3": MINILM_IA3, "head": 385}, MINILM_ENCODER + MINILM_IA3 + 385),
    ("minilm", "full"): ({"encoder": MINILM_ENCODER - MINILM_POOLER, "head": 385}, MINILM_ENCODER + 385),
    ("distilbert", "linear_probe"): ({"head": 769}, DISTIL_ENCODER + 769),
    ("distilbert", "bitfit"): ({"encoder": DISTIL_BIASES, "head": 769}, DISTIL_ENCODER + 769),
    ("distilbert", "ia3"): ({"ia3": DISTIL_IA3, "head": 769}, DISTIL_ENCODER + DISTIL_IA3 + 769),
    ("distilbert", "full"): ({"encoder": DISTIL_ENCODER, "head": 769}, DISTIL_ENCODER + 769),
}


@pytest.mark.parametrize("model,method", list(COUNTS), ids=[f"{m}-{x}" for m, x in COUNTS])
def test_dry_run_prints_and_records_the_exact_counts(tmp_path, capsys, model, method):
    groups, total = COUNTS[(model, method)]
    dry_run(compose_config([f"model={model}", f"method={method}", "dry_run=true"]), tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["method"] == method and metrics["lora"] is None  # lora.* is not read by this method
    params = metrics["params"]
    assert {key: value for key, value in params["by_group"].items() if value} == groups
    assert params["trainable"] == sum(groups.values()) and params["total"] == total
    printed = capsys.readouterr().out
    assert f"{model} {method}: trainable {params['trainable']:,} of {total:,}" in printed
    assert printed.rstrip().endswith(f"head {groups['head']:,}")


def test_minilm_linear_probe_trains_385():
    assert sum(COUNTS[("minilm", "linear_probe")][0].values()) == 385


# ---- exact counts on every family of the table, counted from a fresh model's module shapes ----


def unused(name: str) -> bool:
    """What the classifier's forward never reaches: poolers and Longformer's global-attention projections."""
    return name.startswith("pooler") or "_global" in name


def shape_count(model_type: str, method: str) -> dict[str, int]:
    """by_group (zeros left out) of a method on a fresh tiny model of the family, from its parameters' shapes and
    the module names typed in test_families.EXPECTED."""
    model = AutoModel.from_config(tiny_config(model_type))
    hidden = model.config.hidden_size
    counts = {"head": hidden + 1}
    used = {name: p.numel() for name, p in model.named_parameters() if not unused(name)}
    if method == "bitfit":
        counts["encoder"] = sum(n for name, n in used.items() if name.endswith("bias"))  # q_bias, v_bias too
    elif method == "full":
        counts["encoder"] = sum(used.values())
    elif method == "ia3":
        table = EXPECTED[model_type]
        scaled_out = table["qkv"] if model_type in FUSED else table["k"] + table["v"]
        layers = [0] if model_type == "albert" else [0, 1]  # ALBERT: one physical layer
        total = 0
        for index in layers:
            for name in scaled_out:
                total += model.get_submodule(name.replace(".N.", f".{index}.")).out_features
            total += model.get_submodule(table["ffn"][-1].replace(".N.", f".{index}.")).in_features
        counts["ia3"] = total
    return {key: value for key, value in counts.items() if value}


@pytest.mark.parametrize("method", OTHER_METHODS)
@pytest.mark.parametrize("model_type", FAMILIES)
def test_each_family_trains_exactly_what_its_shapes_say(model_type, method):
    torch.manual_seed(0)
    classifier = SentimentClassifier(AutoModel.from_config(tiny_config(model_type)), "mean", 0.0)
    cfg = compose_config(["model=tiny", f"method={method}"])
    expected = shape_count(model_type, method)
    if method == "bitfit" and "encoder" not in expected:  # ModernBERT and NomicBERT: no bias terms by default
        with pytest.raises(UserError, match=f"bitfit trains the encoder's bias terms, and this {model_type} encoder"):
            attach_method(classifier, cfg)
        return
    params = count_params(attach_method(classifier, cfg))
    assert {key: value for key, value in params["by_group"].items() if value} == expected
    assert params["trainable"] == sum(expected.values())


def test_ia3_scales_keys_values_and_the_ffn_input_of_each_layer():
    cfg = compose_config(["model=tiny", "method=ia3"])
    torch.manual_seed(0)
    model = attach_method(SentimentClassifier(AutoModel.from_config(tiny_config("bert")), "mean", 0.0), cfg)
    vectors = {name: tuple(p.shape) for name, p in model.named_parameters() if "ia3_l" in name}
    layer = "base_model.model.encoder.encoder.layer.{}.{}.ia3_l.default"
    assert vectors == {
        **{layer.format(i, "attention.self.key"): (32, 1) for i in (0, 1)},
        **{layer.format(i, "attention.self.value"): (32, 1) for i in (0, 1)},
        **{layer.format(i, "output.dense"): (1, 64) for i in (0, 1)},  # the FFN's, never attention.output.dense
    }


def test_lora_keys_are_ignored_by_the_other_methods_and_the_lora_default_keeps_its_config_id():
    base, other = ["model=tiny", "method=full"], ["lora.rank=8", "lora/targets=all", "lora.dora=true"]
    assert config_id(compose_config(base)) == config_id(compose_config([*base, *other]))
    assert config_id(compose_config(["model=tiny"])) != config_id(compose_config(["model=tiny", "lora.rank=8"]))
    # The default method adds nothing to a LoRA run's digest: runs made before methods existed keep their id.
    cfg = compose_config(["model=tiny"])
    without = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "method"])
    assert config_id(cfg) == config_id(without)


def test_full_fine_tuning_has_its_own_lower_learning_rate():
    from sentiment_lora.run import method_optimizer

    cfg = compose_config(["method=full"])
    assert (method_optimizer(cfg).lr, method_optimizer(cfg).weight_decay) == (5e-5, 0.01)
    assert method_optimizer(compose_config(["method=full", "method.lr=2e-5"])).lr == 2e-5
    assert method_optimizer(compose_config(["method=bitfit"])).lr == compose_config([]).optimizer.lr


@pytest.mark.parametrize("override,line", [
    ("method.name=adapters", "config method.name: unknown value 'adapters'; choose from lora, linear_probe"),
    ("method.lr=0", "config method.lr: must be > 0 or null, got 0"),
    ("method.weight_decay=-1", "config method.weight_decay: must be >= 0 or null, got -1"),
])  # fmt: skip
def test_bad_method_values_are_one_line(override, line):
    from sentiment_lora.config import validate

    with pytest.raises(UserError, match=line.replace("(", r"\(")):
        validate(compose_config(["model=tiny", override]))


def test_ia3_outside_the_family_table_is_one_line():
    cfg = compose_config(["model=tiny", "method=ia3"])
    config = AutoConfig.for_model("xlm", emb_dim=32, n_layers=2, n_heads=2, vocab_size=100)
    classifier = SentimentClassifier(AutoModel.from_config(config), "mean", 0.0, "attentions", hand_map=True)
    with pytest.raises(UserError, match="ia3 takes its modules from the family table, which lacks model_type 'xlm'"):
        attach_method(classifier, cfg)


def test_a_linear_probe_always_caches_the_pooled_vectors(tmp_path):
    cfg = compose_config(["model=tiny", "method=linear_probe", "trainer.frozen_prefix=live", "trainer.max_length=16"])
    torch.manual_seed(0)
    classifier = SentimentClassifier(AutoModel.from_config(tiny_config("bert")), "mean", 0.0)
    model = attach_method(classifier, cfg)
    tokenizer = load_tokenizer(cfg.model, None)
    frame = pd.DataFrame({"text": ["a good film", "a bad one"], "label": [1, 0]})
    rows = data_lib.encode(frame, tokenizer, 16)
    frozen = prefix.prepare(cfg, classifier, {name: rows for name in data_lib.SPLITS}, None, tokenizer,
                            torch.device("cpu"), None)  # fmt: skip
    assert frozen.mode == "cache" and frozen.rows["train"][0]["prefix"].shape == (32,)  # a pooled vector per review
    assert model is classifier


# ---- the same run, records, resume, predict and export as LoRA ----


def method_run(root, method: str, precision: str = "fp32"):
    """A tiny run of the method made through the real CLI (so .hydra/ and run.yaml are there, as for a user's)."""
    name = method if precision == "fp32" else f"{method}-{precision}"
    csv_path = write_reviews(root / f"{name}.csv", n=80)
    run_dir = root / name
    args = [*TINY_FAST, "trainer.epochs=1", "trainer.eval_batch_size=3", f"trainer.precision={precision}",
            "data=csv", f"data.path={csv_path}", f"method={method}", *TINY_OVERRIDES.get(method, [])]  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setattr(sys, "argv", ["sentiment_lora.train", *args, f"hydra.run.dir={run_dir}"])
        cli()
    return run_dir


@pytest.fixture(scope="module")
def method_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("methods")
    runs = {method: method_run(root, method) for method in RUN_METHODS}
    # bf16 autocast for the cached probe (pooled vectors computed once) and the whole encoder trained.
    return runs | {f"{method}-bf16": method_run(root, method, "bf16") for method in BF16_RUNS}


BF16_RUNS = ("linear_probe", "full")


# What each method's run directory holds of the model (random init: encoder.safetensors is its initial encoder).
SAVED = {
    "lora": {"adapter", "head.safetensors", "encoder.safetensors"},
    "ia3": {"adapter", "head.safetensors", "encoder.safetensors"},
    "linear_probe": {"head.safetensors", "encoder.safetensors"},
    "bitfit": {"head.safetensors", "encoder.safetensors", "encoder_trained.safetensors"},
    "full": {"head.safetensors", "encoder.safetensors"},
    **{name: {"adapter", "head.safetensors", "encoder.safetensors"} for name in NEW_METHODS},
}


def expected_changes(method: str, init: dict) -> tuple[set[str], set[str]]:
    """(must change, may change) of the merged encoder's tensors under one of PEFT's other methods on q and v."""
    if method == "ln_tuning":
        norms = {name for name in init if "LayerNorm" in name}
        return norms, norms
    if method in ("prompt_tuning", "p_tuning"):  # nothing merges: the encoder's own weights stay as seeded
        return set(), set()
    if method == "beft":  # its default target, v: the trained vector merges into the value projection's bias
        values = {name for name in init if re.search(r"self\.value\.bias$", name)}
        return values, values
    adapted = {name for name in init if re.search(r"self\.(query|value)\.(weight|bias)$", name)}
    # Every method here moves q's and v's weights; those rotating or rescaling outputs (BOFT, RoAd) their biases too.
    return {name for name in adapted if name.endswith("weight")}, adapted


@pytest.mark.parametrize("method", RUN_METHODS)
def test_a_short_run_completes_and_records_its_method(method_runs, method):
    run_dir = method_runs[method]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (metrics["status"], metrics["method"]) == ("complete", method)
    assert metrics["params"]["trainable"] == sum(metrics["params"]["by_group"].values())
    assert (metrics["lora"] is None) == (method != "lora")
    assert metrics["optimizer"]["lr"] == (methods.get(method).default_lr or 1e-2)  # else TINY_FAST's optimizer.lr
    assert metrics["speed"]["frozen_prefix"] == ("cache" if method == "linear_probe" else "live")
    saved = {path.name for path in run_dir.iterdir()} & {*SAVED["bitfit"], "adapter"}
    assert saved == SAVED[method]
    assert set(metrics["sha256"]) >= {name for name in SAVED[method] if name != "adapter"}
    # What the method trained moved away from the seeded init, and nothing else did.
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    torch.manual_seed(cfg.trainer.seed)
    init = build_classifier(cfg.model, None).encoder.state_dict()
    trained = load_trained(cfg.model, run_dir, method).model
    if method in ("prompt_tuning", "p_tuning"):
        encoder = trained.encoder.get_base_model()
    else:
        encoder = trained.merge_and_unload().encoder if methods.get(method).has_adapter else trained.encoder
    changed = {name for name, value in encoder.state_dict().items() if not torch.equal(value, init[name])}
    biases = {name for name in init if name.endswith(".bias") and not name.startswith("pooler")}
    # Not promised to move: the key's bias shifts every score of a query alike, which softmax ignores (its
    # gradient is zero up to rounding); IA3 scales k's and v's biases, zero at BERT's init.
    unpromised = {name for name in init if re.search(r"self\.(key|value)\.bias$", name)}
    unpromised = unpromised if method == "ia3" else {name for name in unpromised if ".key." in name}
    expected_changed = {
        "linear_probe": set(),
        "bitfit": biases,
        "lora": {name for name in init if name.endswith(("query.weight", "value.weight"))},  # merged adapters
        # IA3 merged: k's and v's output rows scaled (weight and bias), the FFN down projection's input columns.
        "ia3": {name for name in init if re.search(r"(key|value)\.(weight|bias)$|\d\.output\.dense\.weight$", name)},
    }
    if method in NEW_METHODS:
        must, may = expected_changes(method, init)
        assert must <= changed <= may
    elif method == "full":
        assert {name for name in init if not name.startswith("pooler")} - changed <= {"embeddings.position_ids"}
        assert not {name for name in changed if name.startswith("pooler")}
    else:
        assert expected_changed[method] - unpromised <= changed <= expected_changed[method]


@pytest.mark.parametrize("method", [*RUN_METHODS, *(f"{method}-bf16" for method in BF16_RUNS)])
def test_predict_reproduces_test_predictions_csv(method_runs, tmp_path, capsys, method):
    run_dir = method_runs[method]
    assert json.loads((run_dir / "metrics.json").read_text())["precision"] == ("bf16" if "bf16" in method else "fp32")
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    test_csv, out = tmp_path / "test.csv", tmp_path / "scored.csv"
    data_lib.load_splits(cfg.data)["test"].to_csv(test_csv, index=False)
    code, _, err = call(predict_lib.main, [run_dir, "--csv", test_csv, "--out", out], capsys)
    assert code == 0, err
    saved, scored = pd.read_csv(run_dir / "test_predictions.csv", dtype=str), pd.read_csv(out, dtype=str)
    for column in ("row", "prob", "prediction"):
        assert scored[column].tolist() == saved[column].tolist(), column


@pytest.mark.parametrize("method", RUN_METHODS)
def test_export_loads_with_plain_transformers_and_scores_as_the_run(method_runs, tmp_path, capsys, method):
    run_dir = method_runs[method]
    code, _, err = call(export_lib.main, [run_dir, tmp_path / "exported"], capsys)
    if methods.get(method).merge_refusal:  # prompt tuning: its virtual tokens are no weights to merge
        assert code == 2 and err.count("\n") == 1 and f"method={method}, which prepends trained virtual" in err
        assert not (tmp_path / "exported").exists()
        return
    assert code == 0, err
    folder = tmp_path / "exported"
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    texts = ["A wonderful, moving film.", "awful boring movie", "the plot was fine, the cast weak"]
    trained = load_trained(cfg.model, run_dir, method)
    rows = data_lib.encode(pd.DataFrame({"text": texts, "label": 0}), trained.tokenizer, cfg.trainer.max_length)
    expected = predict(trained.model, rows, trained.tokenizer, 8, torch.device("cpu"), None)
    np.testing.assert_allclose(FORMATS["transformers"].probabilities(folder, texts), expected, rtol=0, atol=1e-5)
    # The exported encoder is the run's: every tensor of a full fine-tune's encoder.safetensors, loaded plainly.
    plain = AutoModel.from_pretrained(folder)
    if method == "full":
        from safetensors.torch import load_file

        for name, value in load_file(str(run_dir / "encoder.safetensors")).items():
            torch.testing.assert_close(plain.state_dict()[name], value, rtol=0, atol=0)
    card = ModelCard.load(folder / "README.md").text.lstrip()
    title = methods.get(method).title
    assert card.startswith(f"# tiny + {title} sentiment classifier") and f"## Method: {title}" in card
    assert json.loads((folder / "classifier.json").read_text())["method"] == method


MERGED_NEW = [name for name in NEW_METHODS if not methods.get(name).merge_refusal]
# ONNX export takes ~10 s a run: PEFT's other methods, once merged plain encoders, run it in the slow tier.
EXPORT_CASES = [
    *(
        (method, export_format)
        for method in ("full", "bitfit", "ia3")
        for export_format in ("sentence-transformers", "onnx")
    ),
    *((method, "sentence-transformers") for method in MERGED_NEW),
    *(pytest.param(method, "onnx", marks=pytest.mark.slow) for method in MERGED_NEW),
]


@pytest.mark.parametrize("method,export_format", EXPORT_CASES)
def test_every_export_format_carries_each_method(method_runs, tmp_path, capsys, method, export_format):
    run_dir = method_runs[method]
    folder = tmp_path / "exported"
    code, _, err = call(export_lib.main, [run_dir, folder, "--format", export_format], capsys)
    assert code == 0, err
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    texts = ["A wonderful, moving film.", "awful boring movie"]
    trained = load_trained(cfg.model, run_dir, method)
    rows = data_lib.encode(pd.DataFrame({"text": texts, "label": 0}), trained.tokenizer, cfg.trainer.max_length)
    expected = predict(trained.model, rows, trained.tokenizer, 8, torch.device("cpu"), None)
    np.testing.assert_allclose(FORMATS[export_format].probabilities(folder, texts), expected, rtol=0, atol=1e-5)
    assert json.loads((folder / "classifier.json").read_text())["method"] == method


@pytest.mark.parametrize("method", [*OTHER_METHODS, *MERGED_NEW])
def test_export_adapter_is_refused_without_an_adapter(method_runs, tmp_path, capsys, method):
    if methods.get(method).has_adapter:
        code, _, err = call(export_lib.main, [method_runs[method], tmp_path / "out", "--adapter"], capsys)
        assert code == 0, err
        assert (tmp_path / "out" / "adapter" / "adapter_config.json").is_file()
        return
    code, _, err = call(export_lib.main, [method_runs[method], tmp_path / "out", "--adapter"], capsys)
    assert code == 2 and err.count("\n") == 1 and f"trained with method={method}, which has no adapter" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("method", RUN_METHODS)
def test_a_run_killed_between_epochs_resumes_to_the_uninterrupted_metrics(tmp_path, monkeypatch, method):
    reviews = write_reviews(tmp_path / "reviews.csv", n=60)
    cfg = compose_config([*TINY_FAST, "trainer.epochs=2", "trainer.precision=fp32", "data=csv",
                          f"data.path={reviews}", f"method={method}", *TINY_OVERRIDES.get(method, [])])  # fmt: skip
    (tmp_path / "whole").mkdir(), (tmp_path / "killed").mkdir()
    train(cfg, tmp_path / "whole")
    with monkeypatch.context() as patch:
        kill_after_epoch(patch, killed_after=1)
        with pytest.raises(Killed):
            train(cfg, tmp_path / "killed")
    assert not (tmp_path / "killed" / "metrics.json").exists()
    train(cfg, tmp_path / "killed")
    whole, resumed = results_of(tmp_path / "whole"), results_of(tmp_path / "killed")
    assert resumed[:3] == whole[:3]
    pd.testing.assert_frame_equal(resumed[3], whole[3])


# ---- the learning curve's evaluation sets ----


def test_the_evaluation_sets_are_the_same_rows_at_every_training_size(tmp_path):
    path = write_reviews(tmp_path / "pool.csv", n=700)
    splits = {
        n_train: data_lib.load_splits(
            compose_config(
                ["data=csv", f"data.path={path}", "data.n_val=50", "data.n_test=100", f"data.n_train={n_train}"]
            ).data  # fmt: skip
        )
        for n_train in (100, 400)
    }
    for name in ("val", "test"):
        pd.testing.assert_frame_equal(splits[100][name], splits[400][name])
    assert (len(splits[100]["train"]), len(splits[400]["train"])) == (100, 400)


def test_the_learning_curve_preset_sweeps_sizes_and_methods_on_fixed_evaluation_sets():
    preset = OmegaConf.load(CONF / "hparams_search" / "learning_curve.yaml")
    params = preset.hydra.sweeper.params
    assert [int(n) for n in str(params["data.n_train"]).split(",")] == [100, 200, 400, 800, 1600, 3200, 6400]
    assert str(params["method"]).split(",") == ["lora", "linear_probe", "full"]
    cfg = compose_config(["hparams_search=learning_curve"])
    assert (cfg.data.n_val, cfg.data.n_test) == (1000, 4000)  # drawn before the training sample, at every size


def test_the_docs_methods_table_states_the_counts_dry_run_gives_on_minilm():
    section = (REPO / "docs" / "configuration.md").read_text().split("## Methods")[1].split("\n## ")[0]
    for method in OTHER_METHODS:
        groups, _ = COUNTS[("minilm", method)]
        (row,) = [line for line in section.splitlines() if line.startswith(f"| `{method}` |")]
        assert f"{sum(groups.values()):,}" in row, method
    line = f"minilm linear_probe: trainable 385 of {COUNTS[('minilm', 'linear_probe')][1]:,} (0.002%) = head 385"
    assert line in section


def test_ia3_reads_the_family_table_not_loras_hand_map():
    hand_map = "+model.targets_map={q: ['encoder\\.layer\\.\\d+\\.attention\\.self\\.query']}"
    cfg = compose_config(["model=tiny", "method=ia3", hand_map, "lora/targets=q"])
    assert cfg.model.targets_map  # given, and not read
    classifier = SentimentClassifier(AutoModel.from_config(tiny_config("bert")), "mean", 0.0, hand_map=True)
    assert count_params(attach_method(classifier, cfg))["by_group"]["ia3"] == TINY_IA3
