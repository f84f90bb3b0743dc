"""TinyLoRA (Morris et al., 2026, "Learning to Reason in 13 Parameters") through PEFT's TinyLoraConfig: LoRA-XS's
frozen truncated SVD of each adapted Linear, B = U_r sqrt(S_r) (out x r) and A = sqrt(S_r) V_r (r x in), with the
r x r matrix between them R = sum_i v_i P_i, u fixed random r x r matrices P_i mixed by one trained vector v of u
entries. Layers may share a v (weight tying: a fraction t of them tied, in round(N (1 - t)) groups of the N adapted
Linears): u trained per group, u per Linear untied, u in all fully tied. The count depends on u and the grouping,
never on the widths. Past r^2 entries (4 at PEFT's r 2, already below its u 64) v spans no new R."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from sentiment_lora.errors import UserError
from sentiment_lora.methods.adapters import AdapterConfig, AdapterMethod, smallest_width
from sentiment_lora.methods.registry import register
from sentiment_lora.schema import AT_LEAST_ONE, PROBABILITY, Range, described

# The largest v a budget may choose (its entries are trained per group of layers, whatever their widths).
MAX_VECTOR_SIZE = 65536
FRACTION = Range(0, 1)  # weight tying: 0 (every layer its own v) to 1 (one v for all)


@dataclass
class TinyloraConfig(AdapterConfig):
    vector_size: int = described(
        "Entries of each trained vector v (PEFT's u), the count of fixed random r x r matrices it mixes; "
        "method.budget chooses it.",
        64,
        within=AT_LEAST_ONE,
    )
    rank: int = described(
        "The frozen SVD's rank r (PEFT's r): R is r x r; at most the smaller width of every adapted Linear.",
        2,
        within=AT_LEAST_ONE,
    )
    tying: float = described(
        "The fraction of adapted Linears that share a v (PEFT's weight_tying): round(N (1 - tying)) groups of the "
        "N Linears, each one v; 0: a v per Linear, 1: one v for all.",
        0.0,
        within=FRACTION,
    )
    dropout: float = described("Dropout on the input of each TinyLoRA adapter.", 0.0, within=PROBABILITY)
    projection_seed: int = described("Seed of the fixed random matrices P (PEFT's projection_seed).", 42)


@register
class Tinylora(AdapterMethod):
    name = "tinylora"
    title = "TinyLoRA"
    trains = (
        "TinyLoRA vectors mixing fixed random matrices between the frozen SVD factors of each weight (PEFT "
        "TinyLoraConfig) merged into the encoder's weights, and the head"
    )
    schema = TinyloraConfig
    # PEFT documents no rate of its own (its MetaMathQA comparison runs the untied default at its common 1e-4,
    # the tied one at 1e-3, both within method_comparison's 0.3-3x): the optimizer's lr, as LoRA's
    default_lr = None
    knob = "vector_size"
    peft_knob = "u"
    groups = ("tinylora",)
    prefixes: ClassVar[dict[str, str]] = {"tinylora_v": "tinylora"}  # the vectors; A, B and P are frozen buffers
    marker = "."

    def sizes(self, adapted):
        return range(1, MAX_VECTOR_SIZE + 1)

    def peft_config(self, classifier, cfg, total_steps):
        pattern, adapted = self.adapted(classifier, cfg)
        smallest = smallest_width(adapted)
        if cfg.method.rank > smallest:  # PEFT would silently truncate the SVD to the smaller width
            raise UserError(
                f"config method.rank: TinyLoRA on {classifier.model_type}: {cfg.method.rank} exceeds the adapted "
                f"layers' smaller width {smallest}; values that fit: 1 to {smallest}"
            )
        size = self.size_for(classifier, cfg, adapted, total_steps)
        return self.build_config(cfg.method, pattern, size, total_steps, adapted)

    def count_at(self, adapted, method_cfg, size, total_steps):
        """The trained vectors depend on how PEFT groups the adapted Linears, not on their shapes (the base's
        one probe per shape would see one group each): PEFT wraps as many 1 x 1 Linears and its count is taken."""
        import peft
        from torch import nn

        probe = nn.ModuleDict({f"layer{index}": nn.Linear(1, 1) for index in range(len(adapted))})
        config = self.build_config(method_cfg, r"layer\d+", size, total_steps, adapted)
        model = peft.get_peft_model(probe, config)
        return sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)

    def build_config(self, method_cfg, target_modules, size, total_steps, adapted):
        import peft

        return peft.TinyLoraConfig(
            u=size,
            r=method_cfg.rank,
            weight_tying=method_cfg.tying,
            tinylora_dropout=method_cfg.dropout,
            projection_seed=method_cfg.projection_seed,
            save_projection=True,
            target_modules=target_modules,
        )
