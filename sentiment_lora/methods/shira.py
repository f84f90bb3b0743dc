"""SHiRA (Bhardwaj et al., 2024) through PEFT's ShiraConfig: each adapted Linear trains a sparse set of its own
weight entries, as many as a rank-r LoRA pair has, r * (in + out), at random positions (PEFT's random mask): a
high-rank sparse update, r * (in + out) trained per Linear, at most in * out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from sentiment_lora.methods.adapters import AdapterConfig, AdapterMethod
from sentiment_lora.methods.registry import register
from sentiment_lora.schema import AT_LEAST_ONE, described


@dataclass
class ShiraConfig(AdapterConfig):
    rank: int = described(
        "SHiRA's r (PEFT's r): each adapted Linear trains r * (in + out) of its entries, as a rank-r LoRA pair "
        "would; at most in * out / (in + out); method.budget chooses it.",
        32,
        within=AT_LEAST_ONE,
    )
    mask_seed: int | None = described(
        "Seed of the random mask's positions (PEFT's random_seed); null: PEFT's default, a fresh generator's fixed "
        "seed, so Linears of one shape share their positions.",
        None,
    )


@register
class Shira(AdapterMethod):
    name = "shira"
    title = "SHiRA"
    trains = "sparse entries of the encoder's weights (PEFT ShiraConfig) merged into them, and the head"
    schema = ShiraConfig
    # SHiRA trains as many values as LoRA at one r and PEFT's example trains it at its trainer's default rate:
    # the optimizer's lr, as LoRA's
    default_lr = None
    knob = "rank"
    peft_knob = "r"
    groups = ("shira",)
    prefixes: ClassVar[dict[str, str]] = {"shira_": "shira"}
    marker = "2"

    def sizes(self, adapted):
        largest = min(
            layer.in_features * layer.out_features // (layer.in_features + layer.out_features)
            for layer in adapted.values()
        )
        return range(1, largest + 1)

    def build_config(self, method_cfg, target_modules, size, total_steps, adapted):
        import peft

        return peft.ShiraConfig(r=size, random_seed=method_cfg.mask_seed, target_modules=target_modules)
