"""GraLoRA (Jung et al., 2025) through PEFT's GraloraConfig: each adapted Linear's update is cut into k x k
blocks, each its own low-rank product, from k A blocks (r x in / k) and k B blocks (out / k x r): as many trained
parameters as a rank-r LoRA pair, r * (in + out) per Linear, with k times its rank; a hybrid part adds a plain
LoRA pair of rank h, h * (in + out). r must be a multiple of k, and k must divide every adapted width."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from sentiment_lora.errors import UserError
from sentiment_lora.methods.adapters import AdapterConfig, AdapterMethod, common_divisors, smallest_width, widths_of
from sentiment_lora.methods.registry import register
from sentiment_lora.schema import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, PROBABILITY, described


@dataclass
class GraloraConfig(AdapterConfig):
    rank: int = described(
        "GraLoRA's r (PEFT's r), a multiple of method.subblocks: its count is a rank-r LoRA pair's; "
        "method.budget chooses it.",
        32,
        within=AT_LEAST_ONE,
    )
    subblocks: int = described(
        "k (PEFT's gralora_k): the update is k x k blocks; k must divide every adapted width.", 2, within=AT_LEAST_ONE
    )
    alpha: float = described(
        "GraLoRA's alpha: the update is scaled by alpha / (r + hybrid_rank).", 64.0, within=POSITIVE
    )
    hybrid_rank: int = described(
        "Rank of a plain LoRA pair beside the blocks (PEFT's hybrid_r; 0: none).", 0, within=NON_NEGATIVE
    )
    dropout: float = described("Dropout on the input of each GraLoRA adapter.", 0.0, within=PROBABILITY)


@register
class Gralora(AdapterMethod):
    name = "gralora"
    title = "GraLoRA"
    trains = "block-wise low-rank updates (PEFT GraloraConfig) merged into the encoder's weights, and the head"
    schema = GraloraConfig
    # LoRA's parameter count and scale (alpha / r): PEFT documents no rate of its own, so the optimizer's lr
    default_lr = None
    knob = "rank"
    peft_knob = "r"
    groups = ("gralora",)
    prefixes: ClassVar[dict[str, str]] = {"gralora_": "gralora"}
    marker = "|"

    def sizes(self, adapted):
        return range(1, smallest_width(adapted) + 1)

    def ranks(self, adapted, subblocks: int) -> list[int]:
        """The ranks that fit: multiples of k up to the smallest adapted width."""
        return [rank for rank in self.sizes(adapted) if rank % subblocks == 0]

    def size_for(self, classifier, cfg, adapted, total_steps):
        k = cfg.method.subblocks
        widths = sorted(set(widths_of(adapted)))
        if any(width % k for width in widths):
            raise UserError(
                f"config method.subblocks: GraLoRA on {classifier.model_type}: {k} does not divide the adapted "
                f"layers' widths ({', '.join(map(str, widths))}); values that fit: "
                f"{', '.join(map(str, common_divisors(widths)))}"
            )
        ranks = self.ranks(adapted, k)
        budget = cfg.method.get("budget")
        if budget is None:
            rank = cfg.method.rank
            if rank not in ranks:
                raise UserError(
                    f"config method.rank: GraLoRA on {classifier.model_type}: {rank} is not a multiple of "
                    f"method.subblocks {k} from {k} to {ranks[-1]}"
                )
            return rank
        head = sum(p.numel() for p in classifier.head.parameters())
        return self.nearest(adapted, cfg.method, budget, head, total_steps, sizes=ranks)

    def build_config(self, method_cfg, target_modules, size, total_steps, adapted):
        import peft

        return peft.GraloraConfig(
            r=size,
            gralora_k=method_cfg.subblocks,
            alpha=method_cfg.alpha,
            hybrid_r=method_cfg.hybrid_rank,
            gralora_dropout=method_cfg.dropout,
            target_modules=target_modules,
        )
