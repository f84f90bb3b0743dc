"""LoHa (Hyeon-Woo et al., 2022, FedPara) through PEFT's LoHaConfig: the update of each adapted Linear is the
Hadamard product of two rank-r products, (W1a W1b) * (W2a W2b): 2r(in + out) trained per Linear, rank up to r^2."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from sentiment_lora.methods.adapters import AdapterConfig, AdapterMethod
from sentiment_lora.methods.registry import register
from sentiment_lora.schema import AT_LEAST_ONE, POSITIVE, PROBABILITY, described


@dataclass
class LohaConfig(AdapterConfig):
    rank: int = described(
        "LoHa's r (PEFT's r) of each of its two factors; method.budget chooses it.", 8, within=AT_LEAST_ONE
    )
    alpha: float = described("LoHa's alpha: the update is scaled by alpha / rank.", 8.0, within=POSITIVE)
    rank_dropout: float = described("Dropout on the update's rank dimension while training.", 0.0, within=PROBABILITY)


@register
class Loha(AdapterMethod):
    name = "loha"
    title = "LoHa"
    trains = "low-rank Hadamard-product adapters (PEFT LoHaConfig) merged into the encoder's weights, and the head"
    schema = LohaConfig
    knob = "rank"
    peft_knob = "r"
    groups = ("loha",)
    prefixes: ClassVar[dict[str, str]] = {"hada_": "loha"}
    marker = "h"

    def sizes(self, adapted):
        return range(1, min(min(layer.in_features, layer.out_features) for layer in adapted.values()) + 1)

    def build_config(self, method_cfg, target_modules, size, total_steps, adapted):
        import peft

        return peft.LoHaConfig(
            r=size, alpha=method_cfg.alpha, rank_dropout=method_cfg.rank_dropout, target_modules=target_modules
        )
