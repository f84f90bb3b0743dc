"""LoRA (the default method): PEFT LoraConfig adapters on the abstract targets (lora.targets through the family
table, methods/targets.py), with rsLoRA, DoRA, LoRA+, layer choice and the parameter budget (lora.budget). Its keys
live in the top-level `lora` group (conf/lora/), kept from before methods existed so old runs and sweeps still read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from omegaconf import OmegaConf

from sentiment_lora.errors import UserError
from sentiment_lora.methods.base import ADAPTER_DIR, PeftMethod
from sentiment_lora.methods.registry import register
from sentiment_lora.schema import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, PROBABILITY, described

if TYPE_CHECKING:
    from torch import nn

    from sentiment_lora.model import SentimentClassifier

# Abstract LoRA targets. The architecture table (encoders.py) maps them onto each family's modules; a model config
# may map them by hand instead (model.targets_map). qkv: q, k and v together (one fused Linear where a family has one).
TARGETS = ("q", "k", "v", "qkv", "output", "ffn", "head")
# lora.init -> PEFT's init_lora_weights; the inits PEFT has that cannot run here, and why.
LORA_INIT_WEIGHTS = {"default": True, "gaussian": "gaussian", "pissa": "pissa", "olora": "olora"}
REFUSED_INITS = {
    "loftq": "LoftQ initialises against a quantised base model (bitsandbytes, a CUDA GPU), which this harness does "
    "not load",
    "eva": "EVA initialises from activations of passes over training data before training (PEFT "
    "initialize_lora_eva_weights), which runs have no step for",
    "corda": "CorDA initialises from covariance of passes over training data before training (PEFT "
    "preprocess_corda), which runs have no step for",
}
LORA_INITS = (*LORA_INIT_WEIGHTS, *REFUSED_INITS)


@dataclass
class LoraConfig:
    rank: int = described(
        "LoRA rank r, at most the width of each adapted layer; lora.budget, when set, chooses it instead.",
        4,
        within=AT_LEAST_ONE,
    )
    alpha: float = described(
        "LoRA alpha; the update is scaled by alpha / rank (alpha / sqrt(rank) under lora.scaling=rslora).",
        16.0,
        within=POSITIVE,
    )
    dropout: float = described("Dropout on the input of each LoRA adapter.", 0.05, within=PROBABILITY)
    targets: list[str] = described(
        "Abstract modules that get LoRA, from {q, k, v, qkv, output, ffn, head}; qkv is q, k and v together (the "
        "one fused Linear of ModernBERT and DeBERTa v1, where q, k or v alone is refused). Without 'head' the "
        "single-unit head is trained fully; with 'head' its weight stays frozen at its seeded init and LoRA adapts it.",
        factory=lambda: ["q", "v"],
        choices=TARGETS,
    )
    top_layers: int | None = described(
        "Put adapters only in the last N encoder layers; null adapts every layer. The layers below stay frozen, "
        "which trainer.frozen_prefix=cache can compute once instead of every step. Excludes lora.layers.",
        None,
        within=AT_LEAST_ONE,
    )
    layers: list[int] | None = described(
        "Put adapters only in these encoder layers (0-based indices along model.layers_path, each once); null "
        "adapts every layer. The layers below the lowest one stay frozen, as with lora.top_layers, which it excludes.",
        None,
        within=NON_NEGATIVE,
    )
    scaling: str = described(
        "How the update is scaled: 'standard' by alpha / rank, 'rslora' by alpha / sqrt(rank) (rank-stabilized "
        "LoRA; PEFT's use_rslora).",
        "standard",
        choices=("standard", "rslora"),
    )
    dora: bool = described(
        "Weight-decomposed LoRA (DoRA; PEFT's use_dora): each adapted layer also trains a magnitude vector of its "
        "output width, counted as params.by_group.dora_magnitude.",
        False,
    )
    loraplus_lr_ratio: float | None = described(
        "LoRA+: the B matrices learn at this multiple of optimizer.lr, the A matrices and the head at optimizer.lr "
        "(PEFT's create_loraplus_optimizer; DoRA magnitudes go with B there). null: one learning rate for all.",
        None,
        within=POSITIVE,
    )
    init: str = described(
        "How the adapters start (PEFT's init_lora_weights): 'default' (A Kaiming-uniform, B zero), 'gaussian' (A "
        "normal with std 1/rank), 'pissa' (A and B from the weight's top-rank SVD, the base keeping the residual) "
        "or 'olora' (from its QR decomposition). 'loftq', 'eva' and 'corda' are refused: LoftQ quantises the base "
        "(bitsandbytes, a GPU), EVA and CorDA need passes over data before training.",
        "default",
        choices=LORA_INITS,
    )
    budget: int | None = described(
        "Target number of trainable parameters (LoRA + DoRA magnitudes + head): the run sets the rank whose count "
        "is nearest (ties: the lower rank) and ignores lora.rank; metrics.json records it as lora.rank_used. A "
        "budget whose nearest rank is below 1 or above the narrowest adapted layer's width is an error. null: "
        "lora.rank.",
        None,
        within=AT_LEAST_ONE,
    )


# Variants named in a front point's label.
PLOT_TAGS = {"rsLoRA": "rs", "DoRA": "DoRA", "LoRA+": "LoRA+"}


def rank_used(section: dict) -> int | None:
    """The rank a run trained with: recorded as rank_used once the model is built (lora.budget may have chosen
    it); before that, or in older records, the configured one, unless a budget was to choose it."""
    if section.get("rank_used") is not None:
        return section["rank_used"]
    return None if section.get("budget") is not None else section.get("rank")


def variant_of(section: dict) -> str:
    """What else than targets, rank and alpha shapes the adapters, in a few words: "LoRA" when nothing does."""
    parts = []
    if section.get("scaling") == "rslora":
        parts.append("rsLoRA")
    if section.get("dora"):
        parts.append("DoRA")
    if section.get("init") not in (None, "default"):
        parts.append({"pissa": "PiSSA", "olora": "OLoRA"}.get(section["init"], section["init"]))
    if section.get("loraplus_lr_ratio"):
        parts.append(f"LoRA+ x{section['loraplus_lr_ratio']:g}")
    if section.get("layers") is not None:
        parts.append("layers " + ",".join(str(index) for index in section["layers"]))
    elif section.get("top_layers") is not None:
        parts.append(f"top {section['top_layers']}")
    if section.get("budget") is not None:
        parts.append(f"budget {section['budget']:,}")
    return " ".join(parts) or "LoRA"


def _validate_layers(lora: Any) -> None:
    """Layer choices that need no model; an index past the encoder's last layer is refused where it is built."""
    if lora.layers is None:
        return
    if lora.top_layers is not None:
        raise UserError("config lora.layers: excludes lora.top_layers: set one of them, the other null")
    if not lora.layers:
        raise UserError("config lora.layers: is empty; list at least one layer index, or null for every layer")
    if len(set(lora.layers)) != len(lora.layers):
        raise UserError(f"config lora.layers: lists a layer twice: {list(lora.layers)}")


def init_weights(init: str) -> bool | str:
    """PEFT's init_lora_weights for lora.init; an init that cannot run here is one line with the reason."""
    if init in REFUSED_INITS:
        raise UserError(f"config lora.init: '{init}' cannot run here: {REFUSED_INITS[init]}")
    return LORA_INIT_WEIGHTS[init]


@register
class Lora(PeftMethod):
    name = "lora"
    title = "LoRA"
    trains = "low-rank adapters (PEFT LoraConfig) merged into the encoder's weights, and the head"
    config_section = "lora"
    groups = ("lora", "dora_magnitude")
    # DoRA's magnitude vectors (one per adapted layer, not part of the low-rank update) first: their names hold
    # "lora_" too.
    prefixes: ClassVar[dict[str, str]] = {"lora_magnitude_vector": "dora_magnitude", "lora_": "lora"}
    budget_key = "lora.budget"
    marker = "o"

    def attach(self, classifier: SentimentClassifier, cfg, total_steps: int | None = None) -> nn.Module:
        from sentiment_lora.methods.lora_adapters import attach_lora

        return attach_lora(classifier, cfg.lora, cfg.model.targets_map)

    def untrained_layers(self, cfg, n_layers: int) -> int:
        from sentiment_lora.methods.targets import adapted_layers

        if list(cfg.lora.targets) == ["head"]:
            return n_layers
        adapted = adapted_layers(n_layers, cfg.lora.top_layers, cfg.lora.layers)
        return 0 if adapted is None else min(adapted)

    def validate(self, cfg) -> None:
        if not cfg.lora.targets:
            raise UserError("config lora.targets: is empty; name at least one of " + ", ".join(TARGETS))
        if len(set(cfg.lora.targets)) != len(cfg.lora.targets):
            raise UserError(f"config lora.targets: lists a target twice: {list(cfg.lora.targets)}")
        hand_map = cfg.model.targets_map  # empty: the architecture table maps every target (checked on the model)
        for target in cfg.lora.targets:
            if hand_map and target not in ("head", "qkv") and target not in hand_map:
                raise UserError(f"config model.targets_map: model '{cfg.model.name}' does not map target '{target}'")
        _validate_layers(cfg.lora)
        init_weights(cfg.lora.get("init", "default"))  # a refused init is one line before anything is written

    def optimizer(self, model: nn.Module, cfg, optimizer_cfg):
        # LoRA+: the B matrices at a multiple of the learning rate (PEFT's create_loraplus_optimizer).
        from sentiment_lora.runtime import make_optimizer

        return make_optimizer(model, optimizer_cfg, cfg.lora.loraplus_lr_ratio)

    def config_record(self, cfg) -> dict[str, Any]:
        lora = cfg.lora
        return {
            "rank": lora.rank,
            "alpha": lora.alpha,
            "dropout": lora.dropout,
            "targets": list(lora.targets),
            "top_layers": lora.top_layers,
            "layers": None if lora.layers is None else list(lora.layers),
            "scaling": lora.scaling,
            "dora": lora.dora,
            "loraplus_lr_ratio": lora.loraplus_lr_ratio,
            "budget": lora.budget,
            "init": lora.get("init", "default"),
        }

    def run_facts(self, model: nn.Module, cfg) -> dict[str, Any]:
        from sentiment_lora.methods.lora_adapters import adapter_rank

        return {"rank_used": adapter_rank(model)}

    def unread_keys(self, cfg) -> tuple[str, ...]:
        # The budget chooses the rank: a lora.rank beside it changes nothing.
        # lora.init=default is LoRA as it ran before the key existed: left out, so those runs keep their id.
        unread = ("lora.rank",) if cfg.lora.get("budget") is not None else ()
        default_init = ("lora.init",) if cfg.lora.get("init", "default") == "default" else ()
        return (*super().unread_keys(cfg), *unread, *default_init)

    def table_columns(self, section: dict) -> dict[str, Any]:
        return {"variant": variant_of(section), "rank": rank_used(section), "alpha": section.get("alpha"),
                "targets": section.get("targets")}  # fmt: skip

    def point_label(self, row) -> str:
        targets = row.get("targets")
        label = str(targets) if isinstance(targets, str) and targets else self.name
        rank = row.get("rank")
        if rank is not None and rank == rank:  # NaN in a pandas row: no rank recorded
            label += f" r{int(rank)}"
        variant = str(row.get("variant") or "")
        return label + "".join(f" {tag}" for word, tag in PLOT_TAGS.items() if word in variant)

    def counts_line(self, cfg, params: dict[str, Any], facts: dict | None) -> str:
        groups = params["by_group"]
        rank = (facts or {}).get("rank_used")
        budget = "" if cfg.lora.budget is None else f" (budget {cfg.lora.budget:,})"
        dora = f" + dora_magnitude {groups['dora_magnitude']:,}" if groups["dora_magnitude"] else ""
        return (
            f"{cfg.model.name} {self.name} r={rank}{budget} targets={list(cfg.lora.targets)}: "
            f"trainable {params['trainable']:,} of {params['total']:,} ({params['trainable_pct']:.3f}%) "
            f"= {self.name} {groups['lora']:,}{dora} + head {groups['head']:,}"
        )

    def card_lines(self, cfg, run_dir: Path, metrics: dict) -> list[str]:
        from sentiment_lora.export.card import card_value as _shown  # the card imports the registry

        lines = ["| key | value |", "| --- | --- |"]
        for key, value in OmegaConf.to_container(cfg.lora, resolve=True).items():
            shown = ", ".join(map(str, value)) if isinstance(value, list) else _shown(value)
            lines.append(f"| lora.{key} | {shown} |")
        try:
            peft_cfg = json.loads((run_dir / ADAPTER_DIR / "adapter_config.json").read_text())
        except (OSError, ValueError):
            peft_cfg = {}
        for key in ("r", "lora_alpha", "lora_dropout", "use_dora", "use_rslora", "peft_version"):
            if key in peft_cfg:
                lines.append(f"| PEFT {key} | {_shown(peft_cfg[key])} |")
        if "target_modules" in peft_cfg:
            pattern = str(peft_cfg["target_modules"]).replace("|", "\\|")  # a bare | would end the table cell
            lines.append(f"| PEFT target_modules | `{pattern}` |")
        return lines

    def population_refusal(self, cfg) -> str | None:
        if cfg.lora.get("dora"):
            return "lora.dora=true: DoRA's weight normalisation is not in the population's stacked layers"
        if cfg.lora.get("init", "default") in ("pissa", "olora"):
            return f"lora.init={cfg.lora.init}: it rewrites each trial's base weights, which the population shares"
        return None
