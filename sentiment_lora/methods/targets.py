"""Target modules from the abstract targets (q, k, v, qkv, output, ffn, head) through the architecture table, or
model.targets_map given by hand: for every method that adapts chosen Linear layers (LoRA, and PEFT's others)."""

from __future__ import annotations

import re

from torch import nn

from sentiment_lora import encoders
from sentiment_lora.errors import UserError
from sentiment_lora.model import SentimentClassifier


def adapted_layers(n_layers: int, top_layers: int | None, layers: list[int] | None) -> list[int] | None:
    """The encoder layers that get adapters, from lora.top_layers or lora.layers (None: every layer)."""
    if top_layers is not None:
        if top_layers > n_layers:
            raise UserError(f"config lora.top_layers: {top_layers} exceeds the encoder's {n_layers} layers")
        return list(range(n_layers - top_layers, n_layers))
    if layers is not None:
        outside = [index for index in layers if not 0 <= index < n_layers]
        if outside:
            raise UserError(
                f"config lora.layers: index {outside[0]} is out of range for the encoder's {n_layers} layers "
                f"(0 to {n_layers - 1})"
            )
        return sorted(layers)
    return None


def layer_filter(layers_path: str, indices: list[int] | None) -> str:
    """A regex lookahead admitting only modules inside the given layers ('' admits every layer)."""
    if indices is None:
        return ""
    alternatives = "|".join(str(index) for index in indices)
    return f"(?=encoder\\.{re.escape(layers_path)}\\.(?:{alternatives})\\.)"


def target_pattern(targets_map: dict[str, list[str]], targets: list[str], only_layers: str = "") -> str:
    """One regex, full-matched by PEFT against module names of SentimentClassifier.

    Model configs give full-name patterns relative to the encoder, so a suffix shared by two modules (BERT's
    attention 'output.dense' vs the FFN's 'output.dense') can never select the wrong one.
    """
    alternatives = [
        f"{only_layers}encoder\\.(?:{pattern})"
        for target in targets
        if target != "head"
        for pattern in targets_map[target]
    ]
    if "head" in targets:
        alternatives.append("head")
    return "|".join(f"(?:{alternative})" for alternative in alternatives)


def matched_modules(model: nn.Module, pattern: str) -> list[str]:
    return [name for name, module in model.named_modules() if name and re.fullmatch(pattern, name)]


def check_targets(
    model: nn.Module, targets_map: dict[str, list[str]], targets: list[str], only_layers: str
) -> dict[str, nn.Linear]:
    """The modules LoRA will adapt, by name: every requested target must select at least one Linear layer and
    nothing but Linear layers."""
    modules = dict(model.named_modules())
    adapted = {}
    for target in targets:
        names = matched_modules(model, target_pattern(targets_map, [target], only_layers))
        if not names:
            raise UserError(f"lora.targets: '{target}' matches no module of this encoder; check model.targets_map")
        wrong = [name for name in names if not isinstance(modules[name], nn.Linear)]
        if wrong:
            raise UserError(f"model.targets_map: '{target}' selects non-Linear module {wrong[0]}")
        adapted |= {name: modules[name] for name in names}
    return adapted


def targets_and_map(
    model: SentimentClassifier, lora_cfg, hand_map: dict[str, list[str]] | None
) -> tuple[list[str], dict[str, list[str]], str]:
    """(targets, target -> full-path regexes, layer lookahead) for a classifier: from the architecture table, or
    from model.targets_map given by hand (which overrides the table)."""
    targets = encoders.resolve_targets(model.family, model.model_type, list(lora_cfg.targets))
    top_layers, layers = lora_cfg.get("top_layers"), lora_cfg.get("layers")
    if model.family is not None and model.family.shared_layers and (top_layers is not None or layers is not None):
        key = "lora.top_layers" if top_layers is not None else "lora.layers"
        raise UserError(
            f"config {key}: {model.model_type} runs one shared layer at all {model.encoder.config.num_hidden_layers} "
            "depths, so adapters cannot be limited to some layers; set it to null (adapters then count once)"
        )
    indices = adapted_layers(len(model.layers()), top_layers, layers)
    if not hand_map:
        return targets, encoders.targets_map(model.family, indices), ""
    hand_map = {key: list(value) for key, value in hand_map.items()}
    if "qkv" not in hand_map and all(target in hand_map for target in encoders.QKV):
        hand_map["qkv"] = [pattern for target in encoders.QKV for pattern in hand_map[target]]
    missing = [target for target in targets if target != "head" and target not in hand_map]
    if missing:
        raise UserError(f"model.targets_map: does not map target '{missing[0]}'")
    return targets, hand_map, layer_filter(model.layers_path, indices)
