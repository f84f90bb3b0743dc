"""MiSS (Kang and Yin, 2025; formerly Bone) through PEFT's MissConfig: one trained shard matrix (r x out) per
adapted Linear, expanded over the weight's input blocks: r * out trained per Linear."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from sentiment_lora.methods.adapters import AdapterConfig, AdapterMethod
from sentiment_lora.methods.registry import register
from sentiment_lora.schema import AT_LEAST_ONE, PROBABILITY, described


@dataclass
class MissConfig(AdapterConfig):
    rank: int = described(
        "MiSS's r (PEFT's r): rows of the shard, at most the narrowest input width; method.budget chooses it.",
        64,
        within=AT_LEAST_ONE,
    )
    dropout: float = described("Dropout on the input of each MiSS adapter.", 0.0, within=PROBABILITY)


@register
class Miss(AdapterMethod):
    name = "miss"
    title = "MiSS"
    trains = "a shard matrix per adapted Linear (PEFT MissConfig) merged into the encoder's weights, and the head"
    schema = MissConfig
    knob = "rank"
    peft_knob = "r"
    groups = ("miss",)
    prefixes: ClassVar[dict[str, str]] = {"miss_": "miss"}
    marker = "p"

    def sizes(self, adapted):
        return range(1, min(layer.in_features for layer in adapted.values()) + 1)

    def build_config(self, method_cfg, target_modules, size, total_steps, adapted):
        import peft

        return peft.MissConfig(r=size, miss_dropout=method_cfg.dropout, target_modules=target_modules)
