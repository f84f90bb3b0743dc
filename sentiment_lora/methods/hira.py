"""HiRA (Huang et al., 2025) through PEFT's HiraConfig: the update of each adapted Linear is the Hadamard product
of its frozen weight and a rank-r product B A, W0 * (B A), high-rank where B A is not: r * (in + out) trained per
Linear, as a rank-r LoRA pair."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from sentiment_lora.methods.adapters import AdapterConfig, AdapterMethod, smallest_width
from sentiment_lora.methods.registry import register
from sentiment_lora.schema import AT_LEAST_ONE, PROBABILITY, described


@dataclass
class HiraConfig(AdapterConfig):
    rank: int = described(
        "HiRA's r (PEFT's r): the rank of the product B A that scales the frozen weight entry by entry; "
        "method.budget chooses it.",
        32,
        within=AT_LEAST_ONE,
    )
    dropout: float = described("Dropout on the input of each HiRA adapter.", 0.0, within=PROBABILITY)


@register
class Hira(AdapterMethod):
    name = "hira"
    title = "HiRA"
    trains = (
        "Hadamard high-rank updates, the frozen weight times a low-rank product (PEFT HiraConfig), merged into the "
        "encoder's weights, and the head"
    )
    schema = HiraConfig
    # A LoRA pair applied through the frozen weight: PEFT documents no rate of its own, so the optimizer's lr
    default_lr = None
    knob = "rank"
    peft_knob = "r"
    groups = ("hira",)
    prefixes: ClassVar[dict[str, str]] = {"hira_": "hira"}
    marker = "4"

    def sizes(self, adapted):
        # B A has rank at most the smaller width: a larger r adds parameters and nothing else
        return range(1, smallest_width(adapted) + 1)

    def build_config(self, method_cfg, target_modules, size, total_steps, adapted):
        import peft

        return peft.HiraConfig(r=size, hira_dropout=method_cfg.dropout, target_modules=target_modules)
