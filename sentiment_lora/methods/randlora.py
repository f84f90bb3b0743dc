"""RandLoRA (Albert et al., 2025) through PEFT's RandLoraConfig: the update of each adapted Linear is a full-rank
sum of n = ceil(min(in, out) / r) frozen random rank-r bases shared by every adapted layer (drawn from a fixed
seed, saved with the adapter), each scaled by trained diagonals: per Linear a lambda (r x n) and a gamma
(n x min(in, out)), r * n + n * min(in, out) trained. A smaller r trains more (more bases), so method.budget
chooses r among the divisors of every adapted Linear's smaller width, where the bases cover it exactly."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from sentiment_lora.methods.adapters import AdapterConfig, AdapterMethod, common_divisors
from sentiment_lora.methods.registry import register
from sentiment_lora.schema import AT_LEAST_ONE, POSITIVE, PROBABILITY, described


@dataclass
class RandloraConfig(AdapterConfig):
    rank: int = described(
        "RandLoRA's r (PEFT's r): the rank of each random basis; a smaller r means more bases and more trained "
        "parameters; method.budget chooses it.",
        32,
        within=AT_LEAST_ONE,
    )
    alpha: float | None = described(
        "RandLoRA's alpha (PEFT's randlora_alpha); the update is scaled by alpha / r. null: 20 r, PEFT's guidance "
        "(its default 640 at its default r 32).",
        None,
        within=POSITIVE,
    )
    sparse: bool = described("Ternary sparse random bases (PEFT's sparse).", False)
    dropout: float = described("Dropout on the input of each RandLoRA adapter.", 0.0, within=PROBABILITY)
    projection_seed: int = described("Seed of the frozen shared bases (PEFT's projection_prng_key).", 0)


def _smaller_widths(adapted) -> list[int]:
    return [min(layer.in_features, layer.out_features) for layer in adapted.values()]


@register
class Randlora(AdapterMethod):
    name = "randlora"
    title = "RandLoRA"
    trains = (
        "RandLoRA diagonal scales of frozen shared random bases (PEFT RandLoraConfig) merged into the encoder's "
        "weights, and the head"
    )
    schema = RandloraConfig
    # The paper's and PEFT's RandLoRA scale alpha / r = 20 keeps the update LoRA-sized: the optimizer's lr, as LoRA's
    default_lr = None
    knob = "rank"
    peft_knob = "r"
    groups = ("randlora",)
    prefixes: ClassVar[dict[str, str]] = {"randlora_lambda": "randlora", "randlora_gamma": "randlora"}
    marker = "+"

    def sizes(self, adapted):
        return sorted(common_divisors(_smaller_widths(adapted)), reverse=True)  # larger bases train fewer

    def size_refusal(self, adapted, size):
        # Any r up to the smallest width runs (PEFT rounds the bases up to cover it); only the budget keeps to
        # the divisors, where the count grows as r falls.
        largest = min(_smaller_widths(adapted))
        if 1 <= size <= largest:
            return None
        return f"{size} exceeds the adapted layers' smaller width {largest}; values that fit: 1 to {largest}"

    def build_config(self, method_cfg, target_modules, size, total_steps, adapted):
        import peft

        alpha = method_cfg.alpha if method_cfg.alpha is not None else 20 * size
        return peft.RandLoraConfig(
            r=size,
            randlora_alpha=alpha,
            sparse=method_cfg.sparse,
            randlora_dropout=method_cfg.dropout,
            projection_prng_key=method_cfg.projection_seed,
            save_projection=True,
            target_modules=target_modules,
        )
