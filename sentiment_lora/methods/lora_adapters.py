"""LoRA's adapters through PEFT: the rank checked against the adapted layers, chosen by lora.budget, and the
LoraConfig built on the modules methods/targets.py selects."""

from __future__ import annotations

import peft
from torch import nn

from sentiment_lora.errors import UserError
from sentiment_lora.methods.targets import check_targets, target_pattern, targets_and_map
from sentiment_lora.model import SentimentClassifier, classifier_of


def max_rank(name: str, layer: nn.Linear) -> int:
    # An update of an out x in matrix has rank at most min(out, in); a larger rank only adds parameters. The head
    # has one output by design, so it is held to its input width: lora.rank is shared with the encoder's targets,
    # and the documented head presets run at rank 4.
    return layer.in_features if name == "head" else min(layer.in_features, layer.out_features)


def check_rank(adapted: dict[str, nn.Linear], rank: int) -> None:
    """The rank must fit every adapted layer."""
    for name, layer in adapted.items():
        if rank > max_rank(name, layer):
            raise UserError(
                f"config lora.rank: {rank} exceeds the width of {name} ({layer.in_features} -> "
                f"{layer.out_features}); use lora.rank={max_rank(name, layer)} or less"
            )


def trainable_at_rank(adapted: dict[str, nn.Linear], dora: bool, head_trained: int) -> tuple[int, int]:
    """Trainable parameters as (per unit of rank, fixed): LoRA adds r * (in + out) per adapted Linear, DoRA one
    magnitude per output, and a head trained fully its own weight and bias."""
    per_rank = sum(layer.in_features + layer.out_features for layer in adapted.values())
    magnitudes = sum(layer.out_features for layer in adapted.values()) if dora else 0
    return per_rank, magnitudes + head_trained


def rank_for_budget(adapted: dict[str, nn.Linear], dora: bool, head_trained: int, budget: int, targets) -> int:
    """The rank whose trainable count is nearest `budget` (ties: the lower rank); counts are linear in the rank, so
    it is computed, not searched."""
    per_rank, fixed = trainable_at_rank(adapted, dora, head_trained)
    limit = min(max_rank(name, layer) for name, layer in adapted.items())
    whole, rest = divmod(max(budget - fixed, 0), per_rank)
    rank = whole + (2 * rest > per_rank)
    described = f"targets {list(targets)} ({per_rank:,} per unit of rank + {fixed:,})"
    if rank < 1:
        raise UserError(
            f"config lora.budget: {budget:,} is too small for {described}: rank 1 trains {per_rank + fixed:,}"
        )
    if rank > limit:
        raise UserError(
            f"config lora.budget: {budget:,} is too large for {described}: rank {limit}, the narrowest adapted "
            f"layer's width, trains {limit * per_rank + fixed:,}"
        )
    return rank


def attach_lora(
    model: SentimentClassifier, lora_cfg, targets_map: dict[str, list[str]] | None = None
) -> peft.PeftModel:
    """Wrap with PEFT LoRA; everything but the adapters is frozen, then the head is unfrozen unless LoRA adapts it.

    The modules come from the architecture table unless `targets_map` (model.targets_map) gives them by hand.
    The head is not put in PEFT's modules_to_save: that keeps a frozen copy beside a trainable one, which
    would inflate the total parameter count and the saved adapter. With lora.budget the rank is chosen here;
    `adapter_rank` reads back the one used.
    """
    from sentiment_lora.methods.lora import init_weights  # lora.py imports this module when a run attaches LoRA

    targets, targets_map, only_layers = targets_and_map(model, lora_cfg, targets_map)
    adapted = check_targets(model, targets_map, targets, only_layers)
    dora = bool(lora_cfg.get("dora", False))
    if lora_cfg.get("budget") is None:
        rank = lora_cfg.rank
    else:
        head_trained = 0 if "head" in targets else sum(p.numel() for p in model.head.parameters())
        rank = rank_for_budget(adapted, dora, head_trained, lora_cfg.budget, targets)
    check_rank(adapted, rank)
    config = peft.LoraConfig(
        r=rank,
        lora_alpha=lora_cfg.alpha,
        lora_dropout=lora_cfg.dropout,
        target_modules=target_pattern(targets_map, targets, only_layers),
        bias="none",
        use_rslora=lora_cfg.get("scaling", "standard") == "rslora",
        use_dora=dora,
        init_lora_weights=init_weights(lora_cfg.get("init", "default")),
    )
    wrapped = peft.get_peft_model(model, config)
    if "head" not in targets:
        for parameter in classifier_of(wrapped).head.parameters():
            parameter.requires_grad_(True)
    return wrapped


def adapter_rank(wrapped: nn.Module) -> int | None:
    """The LoRA rank used (lora.budget may have chosen it); None for a model without LoRA."""
    config = wrapped.peft_config["default"] if isinstance(wrapped, peft.PeftModel) else None
    return config.r if isinstance(config, peft.LoraConfig) else None
