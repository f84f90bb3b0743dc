"""DeLoRA (Bini et al., 2025) through PEFT's DeloraConfig: a rank-r pair B (out x r) and A (r x in) whose r rank-one
terms are each normalised to unit norm and scaled by one trained bound lambda / r (the update's norm is at most
lambda, times the frozen weight's column norms): r * (in + out) + 1 trained per Linear."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from sentiment_lora.methods.adapters import AdapterConfig, AdapterMethod, smallest_width
from sentiment_lora.methods.registry import register
from sentiment_lora.schema import AT_LEAST_ONE, POSITIVE, PROBABILITY, described


@dataclass
class DeloraConfig(AdapterConfig):
    rank: int = described("DeLoRA's r (PEFT's r); method.budget chooses it.", 8, within=AT_LEAST_ONE)
    bound: float = described(
        "The initial bound on the update's norm, trained with it (PEFT's delora_lambda).", 15.0, within=POSITIVE
    )
    dropout: float = described(
        "Probability of skipping a DeLoRA module in a training step (PEFT's module_dropout).", 0.0, within=PROBABILITY
    )


@register
class Delora(AdapterMethod):
    name = "delora"
    title = "DeLoRA"
    trains = "norm-bounded low-rank updates (PEFT DeloraConfig) merged into the encoder's weights, and the head"
    schema = DeloraConfig
    # A LoRA pair with a bounded norm: PEFT documents no rate of its own, so the optimizer's lr, as LoRA's
    default_lr = None
    knob = "rank"
    peft_knob = "r"
    groups = ("delora",)
    prefixes: ClassVar[dict[str, str]] = {"delora_": "delora"}
    marker = "3"

    def sizes(self, adapted):
        return range(1, smallest_width(adapted) + 1)

    def build_config(self, method_cfg, target_modules, size, total_steps, adapted):
        import peft

        return peft.DeloraConfig(
            r=size,
            delora_lambda=method_cfg.bound,
            module_dropout=method_cfg.dropout,
            target_modules=target_modules,
        )
