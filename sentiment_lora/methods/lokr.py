"""LoKr (Yeh et al., 2024, LyCORIS) through PEFT's LoKrConfig: the update of each adapted Linear is a Kronecker
product W1 (x) (W2a W2b) of a small full factor and a rank-r one (PEFT factorises each width; once r reaches half
the larger side of W2, W2 is trained whole, so the count stops growing)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from sentiment_lora.methods.adapters import AdapterConfig, AdapterMethod
from sentiment_lora.methods.registry import register
from sentiment_lora.schema import AT_LEAST_ONE, POSITIVE, PROBABILITY, described


@dataclass
class LokrConfig(AdapterConfig):
    rank: int = described(
        "LoKr's r (PEFT's r) of its second Kronecker factor; method.budget chooses it.", 8, within=AT_LEAST_ONE
    )
    alpha: float = described("LoKr's alpha: the update is scaled by alpha / rank.", 8.0, within=POSITIVE)
    rank_dropout: float = described("Dropout on the update's rank dimension while training.", 0.0, within=PROBABILITY)


@register
class Lokr(AdapterMethod):
    name = "lokr"
    title = "LoKr"
    trains = "low-rank Kronecker-product adapters (PEFT LoKrConfig) merged into the encoder's weights, and the head"
    schema = LokrConfig
    knob = "rank"
    peft_knob = "r"
    groups = ("lokr",)
    prefixes: ClassVar[dict[str, str]] = {"lokr_": "lokr"}
    marker = "H"

    def sizes(self, adapted):
        return range(1, min(min(layer.in_features, layer.out_features) for layer in adapted.values()) + 1)

    def build_config(self, method_cfg, target_modules, size, total_steps, adapted):
        import peft

        return peft.LoKrConfig(
            r=size, alpha=method_cfg.alpha, rank_dropout=method_cfg.rank_dropout, target_modules=target_modules
        )
