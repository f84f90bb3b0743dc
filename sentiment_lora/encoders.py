"""The architecture table: every per-family fact the harness uses, keyed by transformers' `config.model_type`.

Where each family keeps its layer list and the Linear modules behind the abstract targets q, k, v, output, ffn
(and qkv), its dropout keys, its usable position limit, its default pooling, whether q/k/v are one fused Linear,
whether its layers are shared, and whether the frozen-prefix cache is exact for it. Facts read from the
transformers 5.24 modeling code (docs/configuration.md#encoder-families has the table for users).

Module patterns are full paths relative to the AutoModel base with `{i}` standing for the layer index, so a
suffix two modules share (BERT's attention `output.dense` and FFN `output.dense`) never selects the wrong one,
and nothing a target does not name (Longformer's `*_global`, DeBERTa's `pos_*` projections, poolers, embedding
projections) is ever picked up.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from sentiment_lora.errors import UserError

QKV = ("q", "k", "v")


@dataclass(frozen=True)
class Family:
    layer: str  # the module path of layer {i}
    layers_path: str  # attribute path of the layer list (ALBERT: of its layer groups)
    q: tuple[str, ...] = ()  # module paths inside a layer (empty when q/k/v are fused)
    k: tuple[str, ...] = ()
    v: tuple[str, ...] = ()
    output: tuple[str, ...] = ()
    ffn: tuple[str, ...] = ()
    fused_qkv: str | None = None  # the one Linear computing q, k and v together
    attention_dropout: tuple[str, ...] = ("attention_probs_dropout_prob",)
    hidden_dropout: tuple[str, ...] = ("hidden_dropout_prob",)
    position_offset: int = 0  # positions the model reserves (RoBERTa family: ids start at padding_idx + 1)
    pooling: str = "cls"  # HF's own classification heads read token 0
    shared_layers: bool = False  # one physical layer run at every depth (ALBERT)
    layer_returns_tuple: bool = False  # a layer returns (hidden, attentions), not a tensor (its encoder's loop unpacks)
    no_prefix: str | None = None  # why trainer.frozen_prefix=eval/cache below the top is refused (None: exact)
    no_cache: str | None = None  # why trainer.frozen_prefix=cache below the top is refused (eval works)

    def modules(self, target: str) -> tuple[str, ...]:
        """Module paths (relative to a layer) of an abstract target; qkv is the three projections or the fused one."""
        if target == "qkv":
            return (self.fused_qkv,) if self.fused_qkv else (*self.q, *self.k, *self.v)
        return getattr(self, target)


def _bert_like(**changes) -> Family:
    base = dict(
        layer="encoder.layer.{i}",
        layers_path="encoder.layer",
        q=("attention.self.query",),
        k=("attention.self.key",),
        v=("attention.self.value",),
        output=("attention.output.dense",),
        ffn=("intermediate.dense", "output.dense"),
    )
    return Family(**{**base, **changes})


_PADS = "pads the sequence inside its forward (to its attention window or block size), so the hidden state below "
FAMILIES: dict[str, Family] = {
    "bert": _bert_like(),
    "roberta": _bert_like(position_offset=2),
    "xlm-roberta": _bert_like(position_offset=2),
    "camembert": _bert_like(position_offset=2),
    "ernie": _bert_like(),
    "electra": _bert_like(),  # embeddings_project (embedding size != hidden) runs before layer 0: never a target
    "big_bird": _bert_like(no_cache=_PADS + "a layer is not one per review token"),
    "longformer": _bert_like(position_offset=2, no_cache=_PADS + "a layer is not one per review token"),
    "deberta-v2": _bert_like(
        q=("attention.self.query_proj",),
        k=("attention.self.key_proj",),
        v=("attention.self.value_proj",),
        layer_returns_tuple=True,
    ),
    "deberta": _bert_like(q=(), k=(), v=(), fused_qkv="attention.self.in_proj", layer_returns_tuple=True),
    "distilbert": Family(
        layer="transformer.layer.{i}",
        layers_path="transformer.layer",
        q=("attention.q_lin",),
        k=("attention.k_lin",),
        v=("attention.v_lin",),
        output=("attention.out_lin",),
        ffn=("ffn.lin1", "ffn.lin2"),
        attention_dropout=("attention_dropout",),
        hidden_dropout=("dropout",),
    ),
    "mpnet": _bert_like(
        q=("attention.attn.q",),
        k=("attention.attn.k",),
        v=("attention.attn.v",),
        output=("attention.attn.o",),
        position_offset=2,
        layer_returns_tuple=True,
    ),
    "modernbert": Family(
        layer="layers.{i}",
        layers_path="layers",
        fused_qkv="attn.Wqkv",
        output=("attn.Wo",),
        ffn=("mlp.Wi", "mlp.Wo"),
        attention_dropout=("attention_dropout",),
        hidden_dropout=("embedding_dropout", "mlp_dropout"),
    ),
    "nomic_bert": Family(
        layer="layers.{i}",
        layers_path="layers",
        q=("self_attn.q_proj",),
        k=("self_attn.k_proj",),
        v=("self_attn.v_proj",),
        output=("self_attn.o_proj",),
        ffn=("mlp.up_proj", "mlp.gate_proj", "mlp.down_proj"),
    ),
    "albert": Family(
        layer="encoder.albert_layer_groups.{g}.albert_layers.{i}",
        layers_path="encoder.albert_layer_groups",
        q=("attention.query",),
        k=("attention.key",),
        v=("attention.value",),
        output=("attention.dense",),
        ffn=("ffn", "ffn_output"),
        shared_layers=True,
        no_prefix="ALBERT runs one shared layer at every depth, so no layer below the adapters is frozen",
    ),
}

# Families transformers knows that the table refuses, and why.
REFUSED: dict[str, str] = {
    "xlm": "XLM keeps its layers as four parallel lists (attentions, layer_norm1, ffns, layer_norm2) and adds "
    "positions, a norm and functional dropout outside any module, so layers, targets and the frozen prefix have no "
    "single place to live",
}


def supported() -> str:
    return ", ".join(sorted(FAMILIES))


def family(model_type: str, hand_map: bool = False) -> Family | None:
    """The table's entry; None for a type outside it when model.targets_map is given by hand."""
    if model_type in FAMILIES:
        return FAMILIES[model_type]
    if hand_map:
        return None
    if model_type in REFUSED:
        raise UserError(f"model_type '{model_type}' is not supported: {REFUSED[model_type]}")
    raise UserError(
        f"model_type '{model_type}' is not in the family table (supported: {supported()}); give its modules by hand "
        "as model.targets_map (target -> regexes of full module names relative to the encoder, e.g. "
        "'{q: [\"encoder\\.layer\\.\\d+\\.attention\\.q\"], ...}') and model.layers_path (its layer list, e.g. "
        "encoder.layer)"
    )


def layer_pattern(fam: Family, indices: list[int] | None) -> str:
    """Regex of the module path of the given layers (None: every layer)."""
    index = r"\d+" if indices is None else "(?:" + "|".join(str(i) for i in indices) + ")"
    escaped = re.escape(fam.layer).replace(r"\{i\}", "{i}").replace(r"\{g\}", r"\d+")
    return escaped.replace("{i}", index)


def targets_map(fam: Family, indices: list[int] | None = None) -> dict[str, list[str]]:
    """Abstract target -> full-path regexes (relative to the encoder) of the table's Linears, in the given layers."""
    prefix = layer_pattern(fam, indices)
    mapped = {
        target: [f"{prefix}\\.{re.escape(module)}" for module in fam.modules(target)]
        for target in (*QKV, "output", "ffn", "qkv")
    }
    return {target: patterns for target, patterns in mapped.items() if patterns}


def ia3_modules(fam: Family) -> tuple[list[str], list[str]]:
    """(target, feedforward) full-path regexes of IA3's modules, relative to the encoder, in every layer.

    IA3 (Liu et al., 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context
    Learning") rescales the keys, the values and the FFN's inner activation. In PEFT's terms: k and v are targets
    (their output is scaled), the FFN's down projection is a target and a feedforward module (its input is scaled).
    A family's `ffn` lists its FFN Linears input side first, so the down projection is the last one. Where q, k and
    v are one fused Linear, IA3 can only scale its whole output (q's part too), as LoRA can only adapt it whole.
    """
    prefix = layer_pattern(fam, None)
    attention = (fam.fused_qkv,) if fam.fused_qkv else (*fam.k, *fam.v)
    down = fam.ffn[-1]
    targets = [f"{prefix}\\.{re.escape(module)}" for module in (*attention, down)]
    return targets, [f"{prefix}\\.{re.escape(down)}"]


def resolve_targets(fam: Family | None, model_type: str, targets: list[str]) -> list[str]:
    """The targets to adapt: q, k and v together on a fused family become qkv; q, k or v alone there is refused."""
    targets = list(targets)
    if "qkv" in targets and set(QKV) & set(targets):
        raise UserError(
            f"lora.targets: 'qkv' already holds {', '.join(t for t in QKV if t in targets)}; list qkv or q, k, v"
        )
    if fam is None or not fam.fused_qkv:
        return targets
    if set(QKV) <= set(targets):
        first = min(targets.index(t) for t in QKV)
        rest = [t for t in targets if t not in QKV]
        return [*rest[:first], "qkv", *rest[first:]]
    alone = [t for t in QKV if t in targets]
    if alone:
        raise UserError(
            f"lora.targets: '{alone[0]}' cannot be adapted alone on {model_type}: q, k and v are one fused Linear "
            f"({fam.layer.format(i='N', g='G')}.{fam.fused_qkv}); use target 'qkv' (lora.targets=[qkv, ...])"
        )
    return targets


def usable_positions(fam: Family | None, config) -> int | None:
    positions = getattr(config, "max_position_embeddings", None)
    if positions is None or fam is None:
        return positions
    return positions - fam.position_offset


def dropout_overrides(fam: Family | None, model_type: str, attention: float | None, hidden: float | None) -> dict:
    """transformers config keys for model.attention_dropout and model.hidden_dropout."""
    overrides = {}
    for key, value, keys in (
        ("attention_dropout", attention, fam.attention_dropout if fam else ()),
        ("hidden_dropout", hidden, fam.hidden_dropout if fam else ()),
    ):
        if value is None:
            continue
        if not keys:
            raise UserError(f"model.{key}: not supported for model_type '{model_type}' (not in the family table)")
        overrides |= dict.fromkeys(keys, value)
    return overrides


# ---- model=auto: name and pooling from the folder or the local Hugging Face cache ----


def _local_file(path: str | None, pretrained: str | None, name: str) -> Path | None:
    if path:
        candidate = Path(path).expanduser() / name
        return candidate if candidate.is_file() else None
    if pretrained:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(pretrained, name)
        return Path(found) if isinstance(found, str) else None
    return None


def auto_name(path: str | None, pretrained: str | None) -> str:
    """A run-directory-safe name from the folder's or the id's last part."""
    source = Path(path).expanduser().resolve().name if path else (pretrained or "auto").rstrip("/").split("/")[-1]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", source).strip("-") or "auto"


def auto_pooling(path: str | None, pretrained: str | None) -> str:
    """A sentence-transformers folder's pooling (1_Pooling/config.json), else the family's default (the table's).

    A pooling mode the harness lacks (max, weighted mean, ...) comes back by name, so validation refuses it.
    """
    found = _local_file(path, pretrained, "1_Pooling/config.json")
    if found is None:
        config = _local_file(path, pretrained, "config.json")
        try:
            model_type = json.loads(config.read_text()).get("model_type") if config else None
        except (OSError, ValueError):
            model_type = None  # an unreadable config.json is reported where the weights are loaded
        return FAMILIES[model_type].pooling if model_type in FAMILIES else "cls"
    try:
        modes = json.loads(found.read_text())
    except (OSError, ValueError):
        return "unreadable 1_Pooling/config.json"
    if modes.get("pooling_mode_mean_tokens"):
        return "mean"
    if modes.get("pooling_mode_cls_token"):
        return "cls"
    chosen = [key.removeprefix("pooling_mode_") for key, value in modes.items() if value is True]
    return f"{'+'.join(chosen) or 'none'} (from {found})"
