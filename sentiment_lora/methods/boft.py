"""BOFT (Liu et al., 2024) through PEFT's BOFTConfig: each adapted Linear's input is rotated by a product of
butterfly-structured orthogonal matrices of blocks of size b, and its output rescaled (a trained vector): at
PEFT's default butterfly factor 1 (one block-diagonal factor), in * b + out trained per Linear. The block size must
be even and divide every adapted input width."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from sentiment_lora.methods.adapters import AdapterConfig, AdapterMethod, common_divisors
from sentiment_lora.methods.registry import register
from sentiment_lora.schema import AT_LEAST_ONE, PROBABILITY, described


@dataclass
class BoftConfig(AdapterConfig):
    block_size: int = described(
        "BOFT's block size (PEFT's boft_block_size): even, a divisor of every adapted "
        "input width; method.budget chooses it.",
        4,
        within=AT_LEAST_ONE,
    )
    butterfly_factor: int = described(
        "BOFT's butterfly factor (PEFT's boft_n_butterfly_factor): 1 is OFT's block-diagonal form.",
        1,
        within=AT_LEAST_ONE,
    )
    dropout: float = described("Multiplicative dropout of whole blocks (PEFT's boft_dropout).", 0.0, within=PROBABILITY)


@register
class Boft(AdapterMethod):
    name = "boft"
    title = "BOFT"
    trains = (
        "butterfly orthogonal rotations and output scales (PEFT BOFTConfig) merged into the encoder's weights, and "
        "the head"
    )
    schema = BoftConfig
    default_lr = 2e-3  # an orthogonal method: PEFT's benchmarks train these at larger rates than LoRA
    knob = "block_size"
    peft_knob = "boft_block_size"
    groups = ("boft",)
    prefixes: ClassVar[dict[str, str]] = {"boft_": "boft"}
    marker = "d"

    def sizes(self, adapted):
        return [size for size in common_divisors([layer.in_features for layer in adapted.values()]) if size % 2 == 0]

    def build_config(self, method_cfg, target_modules, size, total_steps, adapted):
        import peft

        return peft.BOFTConfig(
            boft_block_size=size,
            boft_n_butterfly_factor=method_cfg.butterfly_factor,
            boft_dropout=method_cfg.dropout,
            target_modules=target_modules,
        )
