"""The step's levers (sentiment_lora.fastpath) keep dropout's meaning and the model's numbers: masks at the
configured rate, seeded by torch's generator (same seed: same masks; other seeds: other masks), the same mask in
the backward pass; frozen weights held in bf16 give the logits autocast gave, bit for bit; a run's model carries
them, its trainable parameters stay fp32."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from sentiment_lora import fastpath
from sentiment_lora.methods.lora_adapters import attach_lora
from sentiment_lora.model import build_classifier, classifier_of
from sentiment_lora.run import set_up, train

from .conftest import TINY_FAST, compose_config, write_reviews

CPU = torch.device("cpu")


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_masks_drop_at_the_configured_rate(p):
    torch.manual_seed(0)
    kept = fastpath.keep_mask(torch.Size([1000, 1000]), p, CPU)
    # 1e6 draws: the binomial's standard deviation is at most 5e-4; 2^-16 rounding adds at most 8e-6.
    assert abs((1 - kept.float().mean().item()) - p) < 3e-3


def test_the_same_seed_gives_the_same_masks_and_other_seeds_other_masks():
    def masks(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        return torch.stack([fastpath.keep_mask(torch.Size([64, 32]), 0.1, CPU) for _ in range(3)])

    assert torch.equal(masks(1), masks(1))
    other = masks(2)
    assert not torch.equal(masks(1), other)
    # Successive draws (layers of one step, steps of one run) are not the same mask either.
    assert not torch.equal(other[0], other[1])


def test_rows_of_one_draw_are_independent_so_population_members_get_their_own_masks():
    torch.manual_seed(0)
    kept = fastpath.keep_mask(torch.Size([2, 4096]), 0.5, CPU)  # two members' rows, drawn in one call
    agree = (kept[0] == kept[1]).float().mean().item()
    assert 0.45 < agree < 0.55  # independent rows agree half the time at p=0.5; equal rows would agree always


def test_dropout_scales_the_kept_values_and_masks_the_gradient_the_same_way():
    torch.manual_seed(0)
    x = torch.randn(32, 64, requires_grad=True)
    y = fastpath.dropout(x, 0.2, training=True)
    kept = y != 0
    assert torch.allclose(y[kept], x[kept] / 0.8)
    y.sum().backward()
    assert torch.equal(x.grad, kept.float() / 0.8)
    assert fastpath.dropout(x, 0.2, training=False) is x
    assert fastpath.dropout(x, 0.0, training=True) is x  # rate 0: nothing drawn


def test_frozen_weights_in_bf16_give_autocasts_logits_bit_for_bit():
    cfg = compose_config(["model=tiny", "lora/targets=all"])
    torch.manual_seed(0)
    plain = attach_lora(build_classifier(cfg.model, None), cfg.lora)
    torch.manual_seed(0)
    classifier = build_classifier(cfg.model, None)
    fast = attach_lora(classifier, cfg.lora)
    fastpath.prepare_for_steps(fast, classifier.encoder, torch.bfloat16)
    plain.eval(), fast.eval()
    ids = torch.randint(5, 1000, (4, 16))
    mask = torch.ones_like(ids)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.inference_mode():  # as evaluation runs
        assert torch.equal(plain(ids, mask), fast(ids, mask))
    for name, parameter in fast.named_parameters():
        if parameter.requires_grad:
            assert parameter.dtype == torch.float32, name
    assert classifier_of(fast).encoder.encoder.layer[0].attention.self.query.base_layer.weight.dtype == torch.bfloat16
    assert classifier_of(fast).head.base_layer.weight.dtype == torch.float32  # saved with the run: fp32
    assert not classifier_of(fast).head.cast_input_dtype_enabled  # LoRA inputs reach autocast as they come


def _attention_inputs(requires_grad: bool) -> list[torch.Tensor]:
    torch.manual_seed(0)
    return [torch.randn(2, 4, 24, 8).bfloat16().requires_grad_(requires_grad) for _ in range(3)]


def test_attention_that_trains_runs_in_fp32_under_bf16_and_evaluation_keeps_sdpa_in_bf16():
    attention = fastpath.AttentionInterface().get_interface(fastpath.TRAINED_ATTENTION_FP32, None)
    module = nn.Module()
    module.is_causal = False
    mask = torch.zeros(2, 1, 24, 24, dtype=torch.bfloat16)
    mask[0, :, :, 20:] = torch.finfo(torch.bfloat16).min  # padding in the first row
    sdpa = torch.nn.functional.scaled_dot_product_attention
    with torch.autocast("cpu", dtype=torch.bfloat16):
        query, key, value = _attention_inputs(requires_grad=True)
        trained, _ = attention(module, query, key, value, mask)
        with torch.autocast("cpu", enabled=False):
            expected = sdpa(query.float(), key.float(), value.float(), attn_mask=mask.float()).transpose(1, 2)
        assert trained.dtype == torch.bfloat16 and torch.equal(trained, expected.bfloat16())
        trained.float().sum().backward()
        assert query.grad is not None and query.grad.abs().sum() > 0
        with torch.inference_mode():
            query, key, value = _attention_inputs(requires_grad=False)
            evaluated, _ = attention(module, query, key, value, mask)
            assert torch.equal(evaluated, sdpa(query, key, value, attn_mask=mask).transpose(1, 2))


@pytest.mark.parametrize(("attention", "dtype", "switched"),
    [("sdpa", torch.bfloat16, True), ("sdpa", None, False), ("eager", torch.bfloat16, False)])  # fmt: skip
def test_only_sdpa_encoders_under_bf16_switch_their_trained_attention(attention, dtype, switched):
    cfg = compose_config(["model=tiny"])
    classifier = build_classifier(cfg.model, None)
    classifier.encoder.config._attn_implementation = attention
    assert fastpath.trained_attention_in_fp32(classifier.encoder, dtype) == switched
    expected = fastpath.TRAINED_ATTENTION_FP32 if switched else attention
    assert classifier.encoder.config._attn_implementation == expected


def test_fp32_runs_keep_fp32_weights():
    cfg = compose_config(["model=tiny"])
    classifier = build_classifier(cfg.model, None)
    assert fastpath.frozen_weights_in(classifier.encoder, None) == 0
    assert all(p.dtype == torch.float32 for p in classifier.parameters())


def test_a_runs_model_uses_cheap_dropout_at_every_configured_rate(tmp_path):
    csv = write_reviews(tmp_path / "reviews.csv")
    cfg = compose_config([*TINY_FAST, "data=csv", f"data.path={csv}", "trainer.precision=bf16", "lora.dropout=0.07",
                          "model.hidden_dropout=0.2", "model.head_dropout=0.3"])  # fmt: skip
    run = set_up(cfg, tmp_path)
    modules = list(run.model.modules())
    assert not [m for m in modules if type(m) is nn.Dropout]
    rates = sorted({round(m.p, 6) for m in modules if isinstance(m, fastpath.MaskDropout)})
    assert {0.07, 0.2, 0.3} <= set(rates)
    assert run.classifier.encoder.encoder.layer[0].output.dense.weight.dtype == torch.bfloat16


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_same_config_and_seed_give_the_same_run_and_another_seed_another(tmp_path, precision):
    csv = write_reviews(tmp_path / "reviews.csv")
    base = [*TINY_FAST, "data=csv", f"data.path={csv}", f"trainer.precision={precision}", "save_adapter=false"]

    def history(name: str, seed: int) -> list:
        (tmp_path / name).mkdir()
        train(compose_config([*base, f"trainer.seed={seed}"]), tmp_path / name)
        return [entry["train_loss"] for entry in json.loads((tmp_path / name / "metrics.json").read_text())["history"]]

    first = history("a", 1)
    assert history("b", 1) == first
    assert history("c", 2) != first
