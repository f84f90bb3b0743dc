"""OFT (Qiu et al., 2023) through PEFT's OFTConfig: each adapted Linear's input is rotated by a block-diagonal
orthogonal matrix (a Cayley transform of skew-symmetric blocks of size b): (in / b) * b(b - 1) / 2 trained per
Linear. The block size must divide every adapted input width (PEFT would otherwise pick another one silently)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from sentiment_lora.methods.adapters import AdapterConfig, AdapterMethod, common_divisors
from sentiment_lora.methods.registry import register
from sentiment_lora.schema import AT_LEAST_ONE, PROBABILITY, described


@dataclass
class OftConfig(AdapterConfig):
    block_size: int = described(
        "OFT's block size (PEFT's oft_block_size), a divisor of every adapted input width; method.budget chooses it.",
        32,
        within=AT_LEAST_ONE,
    )
    constrained: bool = described("Constrained OFT: rotations kept near the identity (PEFT's coft).", False)
    block_share: bool = described("One rotation block shared by all blocks of a layer (PEFT's block_share).", False)
    module_dropout: float = described(
        "Probability of dropping a whole rotation block while training.", 0.0, within=PROBABILITY
    )


@register
class Oft(AdapterMethod):
    name = "oft"
    title = "OFT"
    trains = "block-diagonal orthogonal rotations (PEFT OFTConfig) merged into the encoder's weights, and the head"
    schema = OftConfig
    default_lr = 2e-3  # an orthogonal method: PEFT's benchmarks train these at larger rates than LoRA
    knob = "block_size"
    peft_knob = "oft_block_size"
    groups = ("oft",)
    prefixes: ClassVar[dict[str, str]] = {"oft_": "oft"}
    marker = "8"

    def sizes(self, adapted):
        # A block of 1 is a 1 x 1 skew-symmetric matrix: nothing to train.
        return [size for size in common_divisors([layer.in_features for layer in adapted.values()]) if size > 1]

    def build_config(self, method_cfg, target_modules, size, total_steps, adapted):
        import peft

        return peft.OFTConfig(
            r=0,
            oft_block_size=size,
            coft=method_cfg.constrained,
            block_share=method_cfg.block_share,
            module_dropout=method_cfg.module_dropout,
            target_modules=target_modules,
        )
