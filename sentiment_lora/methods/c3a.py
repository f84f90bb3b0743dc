"""C3A (Chen et al., 2025) through PEFT's C3AConfig: the update of each adapted Linear is a block-circulant matrix,
a circular convolution with trained kernels of size b: in * out / b trained per Linear. b must divide every adapted
width, in and out; PEFT's default 256 divides neither MiniLM's 384 nor a tiny model's 32, so null takes PEFT's 256
where it fits and otherwise the largest block size below it that does."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from sentiment_lora.methods.adapters import AdapterConfig, AdapterMethod, common_divisors, widths_of
from sentiment_lora.methods.registry import register
from sentiment_lora.schema import AT_LEAST_ONE, described

PEFT_BLOCK_SIZE = 256


@dataclass
class C3aConfig(AdapterConfig):
    block_size: int | None = described(
        "C3A's block size (kernel length), a divisor of every adapted width; null: PEFT's 256 where it divides "
        "them, else the largest that does below it; method.budget chooses it (smaller blocks train more).",
        None,
        within=AT_LEAST_ONE,
    )


@register
class C3a(AdapterMethod):
    name = "c3a"
    title = "C3A"
    trains = "block-circulant convolution kernels (PEFT C3AConfig) merged into the encoder's weights, and the head"
    schema = C3aConfig
    knob = "block_size"
    groups = ("c3a",)
    prefixes: ClassVar[dict[str, str]] = {"c3a_": "c3a"}
    marker = "X"

    def sizes(self, adapted):
        return sorted(common_divisors(widths_of(adapted)), reverse=True)  # larger blocks train fewer parameters

    def configured_size(self, method_cfg, adapted):
        if method_cfg.block_size is not None:
            return method_cfg.block_size
        return max(size for size in common_divisors(widths_of(adapted)) if size <= PEFT_BLOCK_SIZE)

    def build_config(self, method_cfg, target_modules, size, total_steps, adapted):
        import peft

        return peft.C3AConfig(block_size=size, target_modules=target_modules)
