"""VB-LoRA (Li et al., 2024) through PEFT's VBLoRAConfig: one trained vector bank of n vectors of length L, shared
by every adapted layer, and per Linear a rank-r LoRA pair whose every length-L piece is a top-k mix of the bank's
vectors, chosen by trained logits: n * L trained once, plus r * (in + out) / L * n logits per Linear. L must divide
every adapted width; PEFT's default 256 divides neither MiniLM's 384 nor a tiny model's 32, so null takes PEFT's
256 where it fits and otherwise the largest length below it that does (192 on MiniLM)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from sentiment_lora.errors import UserError
from sentiment_lora.methods.adapters import AdapterConfig, AdapterMethod, common_divisors, widths_of
from sentiment_lora.methods.registry import register
from sentiment_lora.schema import AT_LEAST_ONE, POSITIVE, PROBABILITY, described

PEFT_VECTOR_LENGTH = 256
# The largest bank a budget may choose (each vector adds L bank entries and r * (in + out) / L logits per Linear).
MAX_VECTORS = 65536


@dataclass
class VbloraConfig(AdapterConfig):
    num_vectors: int = described(
        "Vectors in VB-LoRA's shared bank (PEFT's num_vectors); method.budget chooses it.", 256, within=AT_LEAST_ONE
    )
    rank: int = described("The rank of each adapted Linear's composed LoRA pair (PEFT's r).", 4, within=AT_LEAST_ONE)
    vector_length: int | None = described(
        "Length of the bank's vectors, a divisor of every adapted width; null: PEFT's 256 where it divides them, "
        "else the largest that does below it.",
        None,
        within=AT_LEAST_ONE,
    )
    topk: int = described("Bank vectors mixed into each piece (PEFT's topk).", 2, within=AT_LEAST_ONE)
    dropout: float = described("Dropout on the input of each VB-LoRA adapter.", 0.0, within=PROBABILITY)
    init_vector_bank_bound: float = described(
        "The bank starts uniform in [-bound, bound] (PEFT's init_vector_bank_bound).", 0.02, within=POSITIVE
    )
    init_logits_std: float = described("Std of the logits' normal init (PEFT's init_logits_std).", 0.1, within=POSITIVE)


@register
class Vblora(AdapterMethod):
    name = "vblora"
    title = "VB-LoRA"
    trains = (
        "a shared vector bank and per-layer top-k logits composing LoRA pairs (PEFT VBLoRAConfig) merged into the "
        "encoder's weights, and the head"
    )
    schema = VbloraConfig
    # VB-LoRA's reference optimizer trains the bank at 1e-3 and the logits at 1e-2; one rate here, the bank's
    default_lr = 1e-3
    knob = "num_vectors"
    groups = ("vblora",)
    prefixes: ClassVar[dict[str, str]] = {"vblora_": "vblora"}  # the logits and the shared bank
    marker = "x"
    shared = ("vblora_vector_bank",)  # one bank for every adapted layer: counted once

    def vector_length(self, method_cfg, adapted) -> int:
        if method_cfg.vector_length is not None:
            return method_cfg.vector_length
        return max(size for size in common_divisors(widths_of(adapted)) if size <= PEFT_VECTOR_LENGTH)

    def sizes(self, adapted):
        return range(1, MAX_VECTORS + 1)

    def peft_config(self, classifier, cfg, total_steps):
        pattern, adapted = self.adapted(classifier, cfg)
        length = self.vector_length(cfg.method, adapted)
        widths = sorted(set(widths_of(adapted)))
        if any(width % length for width in widths):
            fitting = ", ".join(map(str, common_divisors(widths)))
            shown = ", ".join(map(str, widths))
            raise UserError(
                f"config method.vector_length: VB-LoRA on {classifier.model_type}: {length} does not divide the "
                f"adapted layers' widths ({shown}); values that fit: {fitting}"
            )
        size = self.size_for(classifier, cfg, adapted, total_steps)
        if cfg.method.topk > size:
            raise UserError(
                f"config method.topk: {cfg.method.topk} exceeds the bank's {size} vectors (method.num_vectors)"
            )
        return self.build_config(cfg.method, pattern, size, total_steps, adapted)

    def build_config(self, method_cfg, target_modules, size, total_steps, adapted):
        import peft

        return peft.VBLoRAConfig(
            num_vectors=size,
            r=method_cfg.rank,
            vector_length=self.vector_length(method_cfg, adapted),
            topk=method_cfg.topk,
            vblora_dropout=method_cfg.dropout,
            init_vector_bank_bound=method_cfg.init_vector_bank_bound,
            init_logits_std=method_cfg.init_logits_std,
            target_modules=target_modules,
        )
