"""HRA (Yuan et al., 2024) through PEFT's HRAConfig: each adapted Linear's input is multiplied by a chain of r
Householder reflections, I - 2 u u^T / |u|^2, one trained vector u (in) each: r * in trained per Linear."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from sentiment_lora.methods.adapters import AdapterConfig, AdapterMethod
from sentiment_lora.methods.registry import register
from sentiment_lora.schema import AT_LEAST_ONE, described


@dataclass
class HraConfig(AdapterConfig):
    rank: int = described(
        "HRA's r (PEFT's r): Householder reflections per adapted Linear; method.budget chooses it.",
        8,
        within=AT_LEAST_ONE,
    )
    orthogonalize: bool = described(
        "Gram-Schmidt orthogonalisation of the reflection vectors (PEFT's apply_GS).", False
    )


@register
class Hra(AdapterMethod):
    name = "hra"
    title = "HRA"
    trains = "Householder reflections (PEFT HRAConfig) merged into the encoder's weights, and the head"
    schema = HraConfig
    default_lr = 2e-3  # an orthogonal method: PEFT's benchmarks train these at larger rates than LoRA
    knob = "rank"
    peft_knob = "r"
    groups = ("hra",)
    prefixes: ClassVar[dict[str, str]] = {"hra_": "hra"}
    marker = "P"

    def sizes(self, adapted):
        return range(1, min(layer.in_features for layer in adapted.values()) + 1)

    def build_config(self, method_cfg, target_modules, size, total_steps, adapted):
        import peft

        return peft.HRAConfig(r=size, apply_GS=method_cfg.orthogonalize, target_modules=target_modules)
