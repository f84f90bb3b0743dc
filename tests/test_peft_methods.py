"""PEFT's other methods (LoHa, LoKr, AdaLoRA, VeRA, OFT, BOFT, HRA, FourierFT, MiSS, C3A, RoAd, VB-LoRA, RandLoRA,
SHiRA, DeLoRA, HiRA, GraLoRA, WaveFT, TinyLoRA, BEFT, LN tuning, prompt tuning) on every family of the table: exact
counts by group against counts typed here from each method's paper formula and the module shapes of a fresh tiny
model, method.budget against the same formulas, and the one-line refusals. The run, resume, predict and export of each
method are in tests/test_methods.py's tables."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoModel

from sentiment_lora import methods
from sentiment_lora.errors import UserError
from sentiment_lora.model import SentimentClassifier
from sentiment_lora.trained import count_params

from .conftest import compose_config
from .test_families import EXPECTED, FAMILIES, FUSED, tiny_config

# Per method: its params.by_group key, the knob method.budget sets, and the trainable count of one adapted Linear
# (in, out) at knob value k, typed from the method's paper and PEFT's docs (not read from PEFT's layers).


def lokr_count(n_in: int, n_out: int, rank: int) -> int:
    """LoKr: W1 (x) W2 with each width split m * n, m the largest divisor <= sqrt(width) (LyCORIS's factorization);
    W1 (out_m x in_m) whole, W2 (out_n x in_n) as a rank-r product unless r reaches half its larger side."""

    def split(width):
        small = max(d for d in range(1, math.isqrt(width) + 1) if width % d == 0)
        return small, width // small

    (in_m, in_n), (out_m, out_n) = split(n_in), split(n_out)
    second = rank * (out_n + in_n) if rank < max(out_n, in_n) / 2 else out_n * in_n
    return out_m * in_m + second


def randlora_count(smaller: int, rank: int) -> int:
    """RandLoRA: n = ceil(smaller / r) frozen rank-r bases, each scaled by a trained lambda (r) and gamma (smaller)."""
    bases = -(-smaller // rank)
    return rank * bases + bases * smaller


PER_LINEAR = {
    "loha": ("loha", "rank", lambda i, o, r: 2 * r * (i + o)),
    "lokr": ("lokr", "rank", lokr_count),
    "adalora": ("adalora", "init_rank", lambda i, o, r: r * (i + o) + r),  # P, Q and the singular values E
    "vera": ("vera", "rank", lambda i, o, r: r + o),  # d (r) and b (out); the shared A and B are frozen
    "oft": ("oft", "block_size", lambda i, o, b: (i // b) * b * (b - 1) // 2),  # skew-symmetric blocks
    "boft": ("boft", "block_size", lambda i, o, b: i * b + o),  # one butterfly factor of b x b blocks, output scale
    "hra": ("hra", "rank", lambda i, o, r: r * i),  # r Householder vectors of the input width
    "fourierft": ("fourierft", "n_frequency", lambda i, o, n: n),
    "miss": ("miss", "rank", lambda i, o, r: r * o),
    "c3a": ("c3a", "block_size", lambda i, o, b: i * o // b),  # (out / b) x (in / b) circulant kernels of b
    "road": ("road", "variant", lambda i, o, v: int(v[-1]) * o),  # road_1: one angle and scale per output pair...
    # r = 4 pairs composed from the bank: r * (in + out) / L logits over n vectors; the bank is counted once below.
    "vblora": ("vblora", "num_vectors", lambda i, o, n, length: 4 * (i // length + o // length) * n),
    "randlora": ("randlora", "rank", lambda i, o, r: randlora_count(min(i, o), r)),
    "shira": ("shira", "rank", lambda i, o, r: r * (i + o)),  # a rank-r LoRA pair's count of the weight's entries
    "delora": ("delora", "rank", lambda i, o, r: r * (i + o) + 1),  # B and A, and the one norm bound lambda
    "hira": ("hira", "rank", lambda i, o, r: r * (i + o)),  # B (out x r) and A (r x in), applied through W0
    "gralora": ("gralora", "rank", lambda i, o, r: 2 * (r * (i // 2) + (o // 2) * r)),  # k = 2 A and B blocks
    "waveft": ("waveft", "n_frequency", lambda i, o, n: n),  # n wavelet coefficients
    "tinylora": ("tinylora", "vector_size", lambda i, o, u: u),  # one vector v of u entries per Linear (untied)
    "beft": ("beft", None, lambda i, o, _: o),  # one vector added to the Linear's bias; no knob
}
# Families whose q and v (or fused qkv) Linears have no bias (typed from the transformers modeling code): BEFT, which
# merges into that bias, refuses them.
NO_BIAS = {"deberta", "modernbert", "nomic_bert"}
NO_KNOB = ("ln_tuning", "beft")


def vblora_length(shapes) -> int:
    """VB-LoRA's vector length: PEFT's 256 where it divides every width, else the largest divisor below it."""
    return max(d for d in range(1, 257) if all(i % d == 0 and o % d == 0 for i, o in shapes))


# Methods whose adapted layers share one trained tensor besides their own, counted once from every adapted shape.
SHARED = {"vblora": lambda shapes, n: n * vblora_length(shapes)}  # the bank: n vectors of length L


def adapters_count(method: str, shapes, knob) -> int:
    """The method's trained adapter parameters over the adapted (in, out) shapes at knob value `knob`."""
    per_linear = PER_LINEAR[method][2]
    if method == "vblora":  # each Linear's logits count pieces of the shared vector length
        length = vblora_length(shapes)
        return SHARED[method](shapes, knob) + sum(per_linear(i, o, knob, length) for i, o in shapes)
    return sum(per_linear(i, o, knob) for i, o in shapes) + (SHARED[method](shapes, knob) if method in SHARED else 0)


WHOLE = ("ln_tuning", "prompt_tuning", "p_tuning")
NEW_METHODS = [*PER_LINEAR, *WHOLE]
# Knob values a tiny model (hidden 32) needs where PEFT's default does not fit it.
# SHiRA: r (in + out) <= in * out, so r <= 16 on 32 x 32; WaveFT: PEFT's 2,592 coefficients exceed 32 x 32.
TINY_KNOBS = {"miss": 8, "shira": 8, "waveft": 500}


def tiny_classifier(model_type: str) -> SentimentClassifier:
    torch.manual_seed(0)
    return SentimentClassifier(AutoModel.from_config(tiny_config(model_type)), "mean", 0.0)


def method_cfg(method: str, model_type: str = "bert", *extra: str):
    targets = "[qkv]" if model_type in FUSED else "[q,v]"
    overrides = ["model=tiny", f"method={method}", "trainer.max_length=32"]
    if method in PER_LINEAR:
        overrides.append(f"method.targets={targets}")
    if method in TINY_KNOBS and not any(item.startswith("method.budget") for item in extra):
        overrides.append(f"method.{PER_LINEAR[method][1]}={TINY_KNOBS[method]}")
    return compose_config([*overrides, *extra])


@functools.cache
def adapted_shapes(model_type: str) -> list[tuple[int, int]]:
    """(in, out) of the Linears q and v (a fused family: its qkv Linear) in every physical layer, from a fresh
    model and the names test_families.EXPECTED types."""
    model = AutoModel.from_config(tiny_config(model_type))
    table = EXPECTED[model_type]
    names = table["qkv"] if model_type in FUSED else table["q"] + table["v"]
    layers = [0] if model_type == "albert" else [0, 1]
    shapes = []
    for name in names:
        for index in layers:
            linear = model.get_submodule(name.replace(".N.", f".{index}."))
            shapes.append((linear.in_features, linear.out_features))
    return shapes


@functools.cache
def layer_norm_count(model_type: str) -> int:
    """Every LayerNorm's weight and bias, found by class name on a fresh model (DeBERTa v1's own class too)."""
    model = AutoModel.from_config(tiny_config(model_type))
    return sum(
        sum(p.numel() for p in module.parameters(recurse=False))
        for module in model.modules()
        if type(module).__name__.endswith("LayerNorm")
    )


@functools.cache
def embedding_width(model_type: str) -> int:
    return AutoModel.from_config(tiny_config(model_type)).get_input_embeddings().embedding_dim


def expected_groups(method: str, model_type: str, knob) -> dict[str, int]:
    head = 33  # Linear(32, 1)
    if method == "ln_tuning":
        return {"ln_tuning": layer_norm_count(model_type), "head": head}
    if method in ("prompt_tuning", "p_tuning"):
        width = embedding_width(model_type)
        # p-tuning's prompt encoder: Linear(d, d), Linear(d, d), Linear(d, d) (PEFT's MLP at the embedding width).
        encoder = 3 * (width * width + width) if method == "p_tuning" else 0
        return {"prompt": knob * width + encoder, "head": head}
    return {PER_LINEAR[method][0]: adapters_count(method, adapted_shapes(model_type), knob), "head": head}


DEFAULT_KNOB = {"adalora": 12, "vera": 256, "oft": 32, "boft": 4, "hra": 8, "fourierft": 1000, "c3a": 32,
                "road": "road_1", "loha": 8, "lokr": 8, "miss": 8, "prompt_tuning": 20, "p_tuning": 20,
                "ln_tuning": None, "vblora": 256, "randlora": 32, "shira": 8, "delora": 8, "hira": 32,
                "gralora": 32, "waveft": 500, "tinylora": 64, "beft": None}  # fmt: skip


@pytest.mark.parametrize("model_type", FAMILIES)
@pytest.mark.parametrize("method", NEW_METHODS)
def test_counts_by_group_equal_the_papers_formulas_on_every_family(method, model_type):
    if method == "beft" and model_type in NO_BIAS:
        with pytest.raises(UserError, match=f"config method.targets: BEFT .* this {model_type} encoder's .* has none"):
            methods.get(method).attach(tiny_classifier(model_type), method_cfg(method, model_type), 40)
        return
    wrapped = methods.get(method).attach(tiny_classifier(model_type), method_cfg(method, model_type), 40)
    params = count_params(wrapped, methods.get(method))
    groups = {key: value for key, value in params["by_group"].items() if value}
    assert groups == expected_groups(method, model_type, DEFAULT_KNOB[method])
    assert params["trainable"] == sum(groups.values())


BUDGETS = (1_000, 3_000)


@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("method", [name for name in NEW_METHODS if name not in NO_KNOB])
def test_a_budget_chooses_the_knob_whose_formula_count_is_nearest(method, budget):
    """Against every knob value the formula allows on tiny BERT (q and v, 32 -> 32): the chosen one's count is
    the nearest to the budget, and it is what the model trains."""
    candidates = {
        "oft": [2, 4, 8, 16, 32], "boft": [2, 4, 8, 16, 32], "c3a": [1, 2, 4, 8, 16, 32],
        "road": ["road_1", "road_2", "road_4"], "vera": range(1, 4000), "fourierft": range(1, 1025),
        "prompt_tuning": range(1, 200), "p_tuning": range(1, 200), "vblora": range(1, 4000),
        "randlora": [32, 16, 8, 4, 2, 1], "shira": range(1, 17), "gralora": range(2, 33, 2),
        "waveft": range(1, 1025), "tinylora": range(1, 4000),
    }.get(method, range(1, 33))  # fmt: skip
    counts = {value: sum(expected_groups(method, "bert", value).values()) for value in candidates}
    ordered = sorted(counts.values())
    # As lora.budget: refused only when the nearest size lies half a step past either end.
    reachable = ordered[0] - (ordered[1] - ordered[0]) / 2 <= budget <= ordered[-1] + (ordered[-1] - ordered[-2]) / 2
    cfg = method_cfg(method, "bert", f"method.budget={budget}")
    if not reachable:
        with pytest.raises(UserError, match=rf"config method.budget: {budget:,} is too (large|small) for"):
            methods.get(method).attach(tiny_classifier("bert"), cfg, 40)
        return
    wrapped = methods.get(method).attach(tiny_classifier("bert"), cfg, 40)
    trained = count_params(wrapped, methods.get(method))["trainable"]
    assert abs(trained - budget) == min(abs(count - budget) for count in counts.values())
    facts = methods.get(method).run_facts(wrapped, cfg)
    (used,) = facts.values() if method != "adalora" else [facts["init_rank_used"]]
    assert counts[used] == trained


@pytest.mark.parametrize(
    "method,override,message",
    [
        ("oft", "method.block_size=5", r"config method.block_size: OFT on bert: 5 does not fit the adapted layers "
                                       r"\(widths 32\); values that fit: 2, 4, 8, 16, 32"),
        ("boft", "method.block_size=1", "config method.block_size: BOFT on bert: 1 does not fit"),
        ("c3a", "method.block_size=3", "config method.block_size: C3A on bert: 3 does not fit"),
        ("miss", "method.rank=64", "config method.rank: MiSS on bert: 64 does not fit the adapted layers .*1 to 32"),
        ("hra", "method.rank=33", "config method.rank: HRA on bert: 33 does not fit .*1 to 32"),
        ("road", "method.group_size=6", "config method: RoAd cannot adapt this bert encoder: .*by group_size"),
        ("adalora", "method.target_rank=20", "config method.target_rank: 20 exceeds method.init_rank 12"),
        ("prompt_tuning", "method.virtual_tokens=490", "config method.virtual_tokens: 490 virtual tokens and "
                                                       "trainer.max_length 32 exceed the 512 positions"),
        ("loha", "method.budget=10", "config method.budget: 10 is too small for LoHa: rank=1 trains 545"),
        ("vblora", "method.vector_length=12", r"config method.vector_length: VB-LoRA on bert: 12 does not divide the "
                                              r"adapted layers' widths \(32\); values that fit: 1, 2, 4, 8, 16, 32"),
        ("vblora", "method.num_vectors=1", "config method.topk: 2 exceeds the bank's 1 vectors"),
        ("randlora", "method.rank=33", "config method.rank: RandLoRA on bert: 33 exceeds the adapted layers' smaller "
                                       "width 32; values that fit: 1 to 32"),
        ("shira", "method.rank=17", "config method.rank: SHiRA on bert: 17 does not fit the adapted layers .*1 to 16"),
        ("delora", "method.rank=33", "config method.rank: DeLoRA on bert: 33 does not fit .*1 to 32"),
        ("hira", "method.rank=33", "config method.rank: HiRA on bert: 33 does not fit .*1 to 32"),
        ("gralora", "method.rank=7", "config method.rank: GraLoRA on bert: 7 is not a multiple of method.subblocks 2 "
                                     "from 2 to 32"),
        ("gralora", "method.subblocks=3", r"config method.subblocks: GraLoRA on bert: 3 does not divide the adapted "
                                          r"layers' widths \(32\); values that fit: 1, 2, 4, 8, 16, 32"),
        ("waveft", "method.n_frequency=1025", "config method.n_frequency: WaveFT on bert: 1025 does not fit .*1 to "
                                              "1024"),
        ("beft", "method.targets=[]", "config method.targets: is empty; name at least one of q, k, v"),
        ("tinylora", "method.rank=33", "config method.rank: TinyLoRA on bert: 33 exceeds the adapted layers' smaller "
                                       "width 32; values that fit: 1 to 32"),
    ],
)  # fmt: skip
def test_a_setting_that_cannot_adapt_the_encoder_is_one_line(method, override, message):
    cfg = method_cfg(method, "bert", override)
    with pytest.raises(UserError, match=message) as caught:
        registered = methods.get(method)
        registered.validate(cfg)
        registered.attach(tiny_classifier("bert"), cfg, 40)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("model_type", sorted(FUSED))
@pytest.mark.parametrize("method", list(PER_LINEAR))
def test_q_alone_on_a_fused_family_names_the_methods_key(method, model_type):
    cfg = method_cfg(method, model_type, "method.targets=[q,v]")
    with pytest.raises(UserError, match=r"method.targets: 'q' cannot be adapted alone on .*use target 'qkv'"):
        methods.get(method).attach(tiny_classifier(model_type), cfg, 40)


@pytest.mark.parametrize("tying,groups", [(0.5, 2), (0.8, 1), (1.0, 1)])
def test_tinylora_tied_layers_share_one_vector_per_group(tying, groups):
    """Tying a fraction t of the N = 4 adapted Linears (q and v of 2 layers) leaves round(N (1 - t)) groups, at least
    one, each training one vector of u entries; a budget counts the groups too."""
    cfg = method_cfg("tinylora", "bert", f"method.tying={tying}")
    wrapped = methods.get("tinylora").attach(tiny_classifier("bert"), cfg, 40)
    assert count_params(wrapped, methods.get("tinylora"))["by_group"]["tinylora"] == 64 * groups
    cfg = method_cfg("tinylora", "bert", f"method.tying={tying}", "method.budget=1000")
    wrapped = methods.get("tinylora").attach(tiny_classifier("bert"), cfg, 40)
    nearest = min((u * groups + 33 for u in range(1, 4000)), key=lambda count: (abs(count - 1000), count))
    assert count_params(wrapped, methods.get("tinylora"))["trainable"] == nearest


def test_tinylora_vectors_shared_by_every_adapted_layer_leave_no_layer_frozen():
    """PEFT registers the model's one dict of v vectors in every adapted Linear: the lowest adapted layer is the
    first that trains (not the last holding the dict), so no frozen prefix covers an adapted layer."""
    from sentiment_lora.model import classifier_of

    wrapped = methods.get("tinylora").attach(tiny_classifier("bert"), method_cfg("tinylora"), 40)
    assert methods.get("tinylora").frozen_depth(classifier_of(wrapped)) == 0


@pytest.mark.parametrize("method", NO_KNOB)
def test_a_method_without_a_knob_has_no_budget_to_choose(method):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="method.budget"):
        compose_config(["model=tiny", f"method={method}", "method.budget=1000"])


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_prompt_tuning_pools_the_reviews_own_tokens(pooling):
    """The virtual tokens' outputs are not pooled: mean pooling averages the review's unpadded tokens (padding
    changes nothing), and cls pooling reads the review's [CLS], which attended to the virtual tokens."""
    torch.manual_seed(0)
    classifier = SentimentClassifier(AutoModel.from_config(tiny_config("bert")), pooling, 0.0)
    model = methods.get("prompt_tuning").attach(classifier, method_cfg("prompt_tuning"), 40).eval()
    ids = torch.randint(1000, 2000, (2, 9))
    ids[:, 0] = 101
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    with torch.no_grad():
        full = model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        assert full.shape[1] == 20 + 9  # the virtual tokens come first
        review = full[:, 20:]
        if pooling == "mean":
            expected = (review * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
        else:
            expected = review[:, 0]
        torch.testing.assert_close(model.features(ids, mask), expected, rtol=0, atol=1e-6)
        repadded = ids.clone()
        repadded[1, 5:] = 0
        torch.testing.assert_close(model(repadded, mask), model(ids, mask), rtol=0, atol=1e-6)


def test_prompt_tuning_refuses_the_cache_and_the_merge():
    method = methods.get("prompt_tuning")
    assert "virtual tokens change the sequence" in method.cache_refusal
    model = method.attach(tiny_classifier("bert"), method_cfg("prompt_tuning"), 40)
    assert method.frozen_depth(model) is None  # nothing below the virtual tokens is frozen
    with pytest.raises(UserError, match="cannot be merged into the encoder: prepends trained virtual tokens"):
        method.merged(model)


@pytest.mark.parametrize("init", ["loftq", "eva", "corda"])
def test_lora_inits_that_cannot_run_here_are_one_line(init):
    cfg = compose_config(["model=tiny", f"lora.init={init}"])
    with pytest.raises(UserError, match=f"config lora.init: '{init}' cannot run here: "):
        methods.get("lora").validate(cfg)


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_pissa_and_olora_start_the_adapted_model_at_the_base_models_function(init):
    """PiSSA and OLoRA move the top singular (QR) directions into A and B and leave the residual in the base: the
    adapted model starts as the base model computes, and its base weights differ from the seeded ones."""
    ids = torch.randint(1000, 2000, (2, 7))
    mask = torch.ones_like(ids)
    before = tiny_classifier("bert").eval()
    with torch.no_grad():
        expected = before(ids, mask)
    wrapped = methods.get("lora").attach(tiny_classifier("bert"), compose_config(["model=tiny", f"lora.init={init}"]))
    wrapped.eval()
    with torch.no_grad():
        torch.testing.assert_close(wrapped(ids, mask), expected, rtol=0, atol=1e-5)
    query = wrapped.base_model.model.encoder.encoder.layer[0].attention.self.query
    assert not torch.allclose(query.base_layer.weight, before.encoder.encoder.layer[0].attention.self.query.weight)
    assert wrapped.peft_config["default"].init_lora_weights == init


@pytest.mark.parametrize("method", NEW_METHODS)
def test_dry_run_prints_and_records_the_exact_counts(tmp_path, capsys, method):
    import json

    from sentiment_lora.run import dry_run

    dry_run(method_cfg(method, "bert", "dry_run=true"), tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    params = metrics["params"]
    expected = expected_groups(method, "bert", DEFAULT_KNOB[method])
    assert {key: value for key, value in params["by_group"].items() if value} == expected
    printed = capsys.readouterr().out
    assert f"trainable {params['trainable']:,} of {params['total']:,}" in printed
    assert f"tiny {method}" in printed and printed.rstrip().endswith("head 33")
    knob = PER_LINEAR[method][1] if method in PER_LINEAR else None if method in NO_KNOB else "virtual_tokens"
    if knob:  # the size used, as the dry run chose it
        assert f"{knob}={DEFAULT_KNOB[method]}" in printed


def test_lr_scale_multiplies_each_methods_own_lr_and_its_default_keeps_the_digest():
    from sentiment_lora.run import method_optimizer
    from sentiment_lora.rundir.record import config_id

    assert method_optimizer(compose_config(["method=vera", "method.lr_scale=3"])).lr == pytest.approx(3 * 5e-3)
    assert method_optimizer(compose_config(["optimizer.lr=1e-3", "method.lr_scale=0.3"])).lr == pytest.approx(3e-4)
    cfg = compose_config(["model=tiny"])
    without = OmegaConf.create(OmegaConf.to_container(cfg))
    del without.method["lr_scale"]
    assert config_id(cfg) == config_id(without)  # LoRA runs made before the key keep their configuration id
    assert config_id(compose_config(["model=tiny", "method.lr_scale=3"])) != config_id(cfg)


@pytest.fixture(scope="module")
def comparison_runs(tmp_path_factory):
    """LoRA at its default, VeRA at two lrs and VeRA at a budget: what hparams_search=method_comparison makes."""
    from sentiment_lora.run import train

    from .conftest import TINY_FAST, write_reviews

    root = tmp_path_factory.mktemp("comparison")
    reviews = write_reviews(root / "reviews.csv", n=80)
    base = [*TINY_FAST, "trainer.epochs=1", "trainer.precision=fp32", "data=csv", f"data.path={reviews}"]
    runs = {"lora": [], "vera-low": ["method=vera", "method.lr_scale=0.1"], "vera-high": ["method=vera"],
            "vera-budget": ["method=vera", "method.budget=3000"]}  # fmt: skip
    for name, overrides in runs.items():
        (root / name).mkdir()
        cfg = compose_config([*base, *overrides])
        train(cfg, root / name)
        (root / name / ".hydra").mkdir()  # as the CLI writes it: summarize reads a run's config there
        OmegaConf.save(cfg, root / name / ".hydra" / "config.yaml")
    return root


def test_effect_method_compares_each_method_at_its_lr_chosen_on_validation(comparison_runs):
    from sentiment_lora.analysis.ranking import effects
    from sentiment_lora.analysis.summary import build_table

    table, _ = build_table([comparison_runs])
    found, notes = effects(table, "method")
    assert sorted(found["value"]) == ["vera", "vera (budget 3,000)"] and set(found["baseline"]) == {"lora"}
    vera = table[(table["method"] == "vera") & table["run"].str.contains("vera-(low|high)")]
    chosen = vera[vera["val_acc"] == vera["val_acc"].max()]
    row = found[found["value"] == "vera"].iloc[0]
    assert row["test_acc"] in set(chosen["test_acc"])  # a run validation chose, whatever its test score
    assert any(note.startswith("vera: lr ") and "chosen on validation among 2" in note for note in notes)


def test_the_method_comparison_preset_runs_every_method_at_its_defaults_and_at_the_lora_budget():
    from .conftest import CONF

    params = OmegaConf.load(CONF / "hparams_search" / "method_comparison.yaml").hydra.sweeper.params
    listed = [item.strip() for item in str(params["method"]).split(",")]
    assert {name for name in listed if "/" not in name} == set(methods.names())
    sized = {name.split("/")[1] for name in listed if name.startswith("at_lora_budget/")}
    knobbed = {method.name for method in methods.all_methods() if method.budget_key == "method.budget"}
    assert sized == knobbed - {"lokr"}  # LoKr's Kronecker factors cannot reach the budget (the preset says why)
    for name in sized:
        cfg = compose_config(["model=minilm", f"method=at_lora_budget/{name}"])
        assert (cfg.method.name, cfg.method.budget) == (name, 84_484)
    assert [float(value) for value in str(params["method.lr_scale"]).split(",")] == [0.3, 1.0, 3.0]


MINILM_QV = [(384, 384)] * 12  # q and v of MiniLM's 6 layers
MINILM_ALL = [(384, 384)] * 24 + [(384, 1536), (1536, 384)] * 6  # q, k, v, output and the FFN's two


def minilm_count(method: str, knob) -> int:
    """Trainable parameters on MiniLM (head 385) from the papers' formulas, as conf/method/at_lora_budget sets it."""
    if method == "prompt_tuning":
        return knob * 384 + 385
    if method == "p_tuning":  # a 64-wide prompt encoder
        return knob * 384 + (384 * 64 + 64) + (64 * 64 + 64) + (64 * 384 + 384) + 385
    shapes = MINILM_ALL if method == "road" else MINILM_QV
    return adapters_count(method, shapes, knob) + 385


@pytest.mark.slow
@pytest.mark.parametrize("method", ["loha", "adalora", "vera", "oft", "boft", "hra", "fourierft", "miss", "c3a",
                                    "road", "prompt_tuning", "p_tuning", "vblora", "randlora", "shira",
                                    "delora", "hira", "gralora", "waveft", "tinylora"])  # fmt: skip
def test_the_budget_rows_train_the_count_nearest_the_lora_default_on_minilm(tmp_path, method):
    import json

    from sentiment_lora.run import dry_run

    divisors_384 = [d for d in range(1, 385) if 384 % d == 0]
    candidates = {
        "oft": divisors_384[1:], "boft": [d for d in divisors_384 if d % 2 == 0], "c3a": divisors_384,
        "road": ["road_1", "road_2", "road_4"], "vera": range(1, 20_000), "fourierft": range(1, 20_000),
        "prompt_tuning": range(1, 290), "p_tuning": range(1, 290), "vblora": range(1, 1000),
        "randlora": divisors_384, "shira": range(1, 193), "gralora": range(2, 385, 2),
        "waveft": range(1, 20_000), "tinylora": range(1, 20_000),
    }.get(method, range(1, 385))  # fmt: skip
    nearest = min((minilm_count(method, value) for value in candidates), key=lambda count: (abs(count - 84_484), count))
    dry_run(compose_config(["model=minilm", f"method=at_lora_budget/{method}", "dry_run=true"]), tmp_path)
    assert json.loads((tmp_path / "metrics.json").read_text())["params"]["trainable"] == nearest


@pytest.mark.slow
@pytest.mark.parametrize("model_type", FAMILIES)
@pytest.mark.parametrize("method", NEW_METHODS)
def test_a_one_epoch_run_predicts_and_exports_on_every_family(tmp_path, method, model_type):
    """A 1-epoch run of the method on a tiny model of the family; predict reproduces its test_predictions.csv,
    and the plain-transformers export scores as the run's model does (or is refused in one line)."""
    import json

    import numpy as np
    import pandas as pd
    from omegaconf import open_dict

    from sentiment_lora.data import pipeline as data_lib
    from sentiment_lora.export import cli as export_lib
    from sentiment_lora.export.formats import FORMATS
    from sentiment_lora.loop import predict
    from sentiment_lora.predict import main as predict_main
    from sentiment_lora.run import train
    from sentiment_lora.trained import load_trained

    from .conftest import write_reviews
    from .test_families import arch

    reviews = write_reviews(tmp_path / "reviews.csv", n=40)
    if method == "beft" and model_type in NO_BIAS:  # refused before training (the counts test checks the line)
        return
    cfg = method_cfg(method, model_type, "data=csv", f"data.path={reviews}", "trainer.epochs=1",
                     "trainer.batch_size=8", "trainer.max_length=24", "trainer.progress=false",
                     "trainer.precision=fp32")  # fmt: skip
    with open_dict(cfg):
        cfg.model.arch = arch(model_type)  # lists do not fit a command-line override
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")  # as the CLI writes it: predict and export read it
    train(cfg, run_dir)
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "complete"
    test_csv, out = tmp_path / "test.csv", tmp_path / "scored.csv"
    data_lib.load_splits(cfg.data)["test"].to_csv(test_csv, index=False)
    predict_main([str(run_dir), "--csv", str(test_csv), "--out", str(out)])
    saved, scored = pd.read_csv(run_dir / "test_predictions.csv", dtype=str), pd.read_csv(out, dtype=str)
    assert scored["prob"].tolist() == saved["prob"].tolist()
    if methods.get(method).merge_refusal:
        with pytest.raises(SystemExit):
            export_lib.main([str(run_dir), str(tmp_path / "exported")])
        assert not (tmp_path / "exported").exists()
        return
    export_lib.main([str(run_dir), str(tmp_path / "exported")])
    texts = ["A wonderful, moving film.", "awful boring movie"]
    trained = load_trained(cfg.model, run_dir, method)
    rows = data_lib.encode(pd.DataFrame({"text": texts, "label": 0}), trained.tokenizer, cfg.trainer.max_length)
    expected = predict(trained.model, rows, trained.tokenizer, 8, torch.device("cpu"), None)
    exported = FORMATS["transformers"].probabilities(tmp_path / "exported", texts)
    np.testing.assert_allclose(exported, expected, rtol=0, atol=1e-5)
