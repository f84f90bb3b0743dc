"""RoAd (Liao et al., 2024) through PEFT's RoadConfig: each adapted Linear's output is rotated pairwise by trained
2 x 2 rotations with scales. Its size is its variant: road_1 trains out (one angle and one scale per pair, shared
in the pair), road_2 2 * out, road_4 4 * out per Linear. The output pairs are taken inside groups of group_size
outputs, which must divide every adapted output width."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from sentiment_lora.methods.adapters import AdapterConfig, AdapterMethod, common_divisors
from sentiment_lora.methods.registry import register
from sentiment_lora.schema import AT_LEAST_ONE, described

VARIANTS = ("road_1", "road_2", "road_4")  # in order of size
PEFT_GROUP_SIZE = 64


@dataclass
class RoadConfig(AdapterConfig):
    variant: str = described("RoAd's variant, its size; method.budget chooses it.", "road_1", choices=VARIANTS)
    group_size: int | None = described(
        "Outputs per rotation group, even, a divisor of every adapted output width; null: PEFT's 64 where it "
        "divides them, else the largest even divisor below it.",
        None,
        within=AT_LEAST_ONE,
    )


@register
class Road(AdapterMethod):
    name = "road"
    title = "RoAd"
    trains = "2 x 2 output rotations and scales (PEFT RoadConfig) merged into the encoder's weights, and the head"
    schema = RoadConfig
    default_lr = 2e-3  # a rotation method: trained at larger rates than LoRA (the paper's RoBERTa rates are 1e-3+)
    knob = "variant"
    groups = ("road",)
    prefixes: ClassVar[dict[str, str]] = {"road_": "road"}
    marker = "1"

    def sizes(self, adapted):
        return list(VARIANTS)

    def build_config(self, method_cfg, target_modules, size, total_steps, adapted):
        import peft

        outputs = [layer.out_features for layer in adapted.values()]
        group_size = method_cfg.group_size
        if group_size is None:
            even = [value for value in common_divisors(outputs) if value % 2 == 0 and value <= PEFT_GROUP_SIZE]
            group_size = max(even, default=2)
        return peft.RoadConfig(variant=size, group_size=group_size, target_modules=target_modules)

    def table_columns(self, section: dict) -> dict[str, Any]:
        variant = section.get("variant_used", section.get("variant"))
        return {"variant": f"{self.title} {variant}", "rank": None, "alpha": None, "targets": section.get("targets")}
