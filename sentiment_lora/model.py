"""Encoder + pooling + single-unit head, LoRA wiring through PEFT, exact parameter counts, save and reload."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from operator import attrgetter
from pathlib import Path
from typing import NamedTuple

import peft
import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer

from sentiment_lora import encoders
from sentiment_lora.errors import UserError
from sentiment_lora.results import METRICS_FILE, new_file_mode, read_metrics
from sentiment_lora.runtime import DTYPES
from sentiment_lora.sources import resolve_weights, tokenizer_source


class _Stop(Exception):
    """Raised by a hook to end the encoder's forward once the frozen prefix's output has been seen."""


def _hidden_argument(args: tuple, kwargs: dict):
    """The hidden state a layer is called with: every family's loop passes it first (or as hidden_states)."""
    return args[0] if args else kwargs["hidden_states"]


class SentimentClassifier(nn.Module):
    """Encoder -> pooled vector -> dropout -> Linear(hidden, 1); forward returns one logit per review.

    forward also accepts `prefix`, the cached output of the frozen lower part of the encoder (see
    `frozen_depth`): a (batch, seq, hidden) state, the input of layer `cached_depth`, or (batch, hidden) pooled
    vectors when the whole encoder is frozen.

    The per-family facts (layer list, targets, positions) come from the architecture table (encoders.py) by the
    encoder's config.model_type; `layers_path` given by hand (model.layers_path) overrides the table's.
    """

    def __init__(
        self, encoder: nn.Module, pooling: str, head_dropout: float, layers_path: str | None = None, hand_map=False
    ):
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.dropout = nn.Dropout(head_dropout)
        self.head = nn.Linear(encoder.config.hidden_size, 1)
        self.model_type = encoder.config.model_type
        self.family = encoders.family(self.model_type, hand_map=hand_map)
        if layers_path is None and self.family is None:
            raise UserError(
                f"model.layers_path: model_type '{self.model_type}' is not in the family table; name its layer list "
                "(e.g. model.layers_path=encoder.layer) beside model.targets_map"
            )
        self.layers_path = layers_path or self.family.layers_path
        self.cached_depth = 0

    def layers(self) -> nn.ModuleList:
        found = attrgetter(self.layers_path)(self.encoder)
        if self.family is not None and self.family.shared_layers and layers_path_is_table(self):
            # ALBERT: the physical layers of every layer group (one by default, run at every depth).
            return nn.ModuleList([layer for group in found for layer in group.albert_layers])
        return found

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.pooling == "mean":
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return hidden[:, 0]

    @torch.inference_mode()
    def frozen_output(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, depth: int) -> torch.Tensor:
        """The input of layer `depth` as the model's own forward computes it (its embeddings, embedding
        projection, masks, relative positions, convolutions...), or pooled vectors when depth is every layer.

        A pre-hook on that layer records its input and stops the forward, so the layers above never run.
        transformers has no public "hidden state entering layer k" entry point; `output_hidden_states` gives the
        same tensor (tests/test_families.py checks it) but runs every layer.
        """
        if depth == len(self.layers()):
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            return self.pool(hidden, attention_mask)
        seen = []

        def record(_module, args, kwargs):
            seen.append(_hidden_argument(args, kwargs))
            raise _Stop

        handle = self.layers()[depth].register_forward_pre_hook(record, with_kwargs=True)
        try:
            self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        except _Stop:
            pass
        finally:
            handle.remove()
        return seen[0]

    @contextmanager
    def _from_cache(self, state: torch.Tensor):
        """Run the encoder's own forward with `state` as the input of layer `cached_depth`.

        Everything the model computes around its layer loop (masks, rotary or relative-position terms, final norms)
        still runs from the token ids; the layers below are skipped (their forward returns its input unchanged,
        in the form the family's loop unpacks) and a pre-hook replaces the input of the first layer above. Done
        with hooks because transformers has no public "start at layer k from this hidden state" entry point.
        """
        layers = list(self.layers())
        returns_tuple = self.family.layer_returns_tuple

        def skip(*args, **kwargs):
            hidden = _hidden_argument(args, kwargs)
            return (hidden, None) if returns_tuple else hidden

        def substitute(_module, args, kwargs):
            if args:
                return (state.to(args[0].dtype), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": state.to(kwargs["hidden_states"].dtype)}

        below = layers[: self.cached_depth]
        for layer in below:
            layer.forward = skip
        handle = layers[self.cached_depth].register_forward_pre_hook(substitute, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()
            for layer in below:
                del layer.forward

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prefix: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.head(self.dropout(self.features(input_ids, attention_mask, prefix))).squeeze(-1)

    def features(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prefix: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The pooled vector the head reads (a population of trials computes it once for all its members)."""
        if prefix is None:
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            # Prompt tuning's encoder puts virtual tokens before the review's: pool the review's own tokens (which
            # attended to them), so the mask still fits and [CLS] is still read as the cls token.
            pooled = self.pool(hidden[:, hidden.shape[1] - input_ids.shape[1] :], attention_mask)
        elif prefix.dim() == 2:
            pooled = prefix
        else:
            with self._from_cache(prefix):
                hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            pooled = self.pool(hidden, attention_mask)
        return pooled


def layers_path_is_table(classifier: SentimentClassifier) -> bool:
    return classifier.family is not None and classifier.layers_path == classifier.family.layers_path


def frozen_depth(classifier: SentimentClassifier) -> int | None:
    """How many leading encoder layers hold no trainable parameter (every layer when only the head trains).

    None when the embeddings train, so nothing below the adapters is frozen.
    """
    layers = classifier.layers()
    first = len(layers)
    layer_ids = {id(p): index for index, layer in enumerate(layers) for p in layer.parameters()}
    for parameter in classifier.encoder.parameters():
        if parameter.requires_grad:
            if id(parameter) not in layer_ids:
                return None
            first = min(first, layer_ids[id(parameter)])
    return first


@torch.inference_mode()
def frozen_modules(classifier: SentimentClassifier, depth: int) -> list[nn.Module]:
    """The modules below the first adapted layer: they run in eval mode under trainer.frozen_prefix=eval/cache.

    Found by running the encoder once on a few tokens and recording every module whose forward completes before
    layer `depth` starts: the embeddings, embedding projections, relative-position terms, the lower layers with
    their attention modules (whose own `training` flag switches attention dropout) and anything a family runs
    between its layers (DeBERTa-v2's convolution after layer 0) are caught wherever the family keeps them, while
    the modules still running (the encoder itself) are not.
    """
    if depth == len(classifier.layers()):
        return [classifier.encoder]
    completed: dict[int, nn.Module] = {}

    def note(module, _args, _output):
        completed.setdefault(id(module), module)

    def stop(_module, _args):
        raise _Stop

    handles = [module.register_forward_hook(note) for module in classifier.encoder.modules()]
    handles.append(classifier.layers()[depth].register_forward_pre_hook(stop))
    device = next(classifier.encoder.parameters()).device
    ids = torch.tensor([[2, 5, 6, 7, 3]], device=device)  # any few in-vocabulary tokens: only the calls matter
    try:
        classifier.encoder(input_ids=ids, attention_mask=torch.ones_like(ids))
    except _Stop:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return list(completed.values())


def check_frozen_prefix(classifier: SentimentClassifier, mode: str, depth: int) -> None:
    """Refuse a frozen-prefix mode the family cannot run exactly below its top layer (see encoders.FAMILIES)."""
    family = classifier.family
    if mode == "live" or depth == len(classifier.layers()):
        return
    reason = family.no_prefix if family else "its model_type is outside the family table"
    if reason is None and mode == "cache":
        reason = family.no_cache
    if reason:
        raise UserError(
            f"config trainer.frozen_prefix: '{mode}' is not supported for {classifier.model_type}: {reason}; use "
            "trainer.frozen_prefix=live, or adapt only the head (the whole encoder is then frozen and cached)"
        )


def _config_overrides(model_cfg, model_type: str) -> dict[str, float]:
    family = encoders.family(model_type, hand_map=True)
    return encoders.dropout_overrides(family, model_type, model_cfg.attention_dropout, model_cfg.get("hidden_dropout"))


def encoder_config(model_cfg, weights: str | None):
    """The encoder's transformers config: loaded with the weights, else built from model.arch; overrides applied."""
    if weights is None and not model_cfg.arch and (model_cfg.path or model_cfg.source != "random"):
        return encoder_config(model_cfg, resolve_weights(model_cfg))  # model=auto: the folder's or id's config.json
    if weights is None:
        # Plain lists and dicts: transformers' strict config dataclasses refuse OmegaConf's ListConfig.
        arch = (
            OmegaConf.to_container(model_cfg.arch) if isinstance(model_cfg.arch, DictConfig) else dict(model_cfg.arch)
        )
        model_type = arch.pop("model_type", None)
        if model_type is None:
            raise UserError(f"model '{model_cfg.name}': model.arch needs a model_type to build a random-init model")
        arch.update(_config_overrides(model_cfg, model_type))
        return AutoConfig.for_model(model_type, **arch)
    try:
        config = AutoConfig.from_pretrained(weights, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as err:  # an unknown model_type, a config.json that is no JSON
        reason = (str(err).strip().split(". ") or [type(err).__name__])[0].strip()
        key = f"model.path={weights}" if model_cfg.path else f"model '{model_cfg.name}'"
        raise UserError(f"{key}: transformers cannot read its config.json ({reason})") from None
    config.update(_config_overrides(model_cfg, config.model_type))
    return config


def build_encoder(model_cfg, weights: str | None) -> nn.Module:
    """Pretrained weights when given (safetensors only, no remote code), else random init from model.arch."""
    config = encoder_config(model_cfg, weights)
    if weights is None:
        return AutoModel.from_config(config)
    try:
        return AutoModel.from_pretrained(weights, config=config, use_safetensors=True, trust_remote_code=False)
    except OSError as err:
        raise UserError(f"model '{model_cfg.name}': cannot load safetensors weights from {weights}: {err}") from None


def build_classifier(model_cfg, weights: str | None) -> SentimentClassifier:
    """The configured encoder (pretrained, or random init when weights is None) with its pooling and head."""
    encoder = build_encoder(model_cfg, weights)
    return SentimentClassifier(
        encoder, model_cfg.pooling, model_cfg.head_dropout, model_cfg.layers_path, bool(model_cfg.targets_map)
    )


def load_tokenizer(model_cfg, weights: str | None, max_length: int | None = None):
    """The tokenizer that goes with the weights; with max_length, checked to fit the encoder (check_max_length)."""
    source = tokenizer_source(model_cfg, weights)
    key = "model.path" if model_cfg.path else "model.tokenizer" if weights is None else f"model '{model_cfg.name}'"
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    except (OSError, ValueError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(f"{key}={source}: cannot load a tokenizer from it ({reason})") from None
    # From a folder with config.json but no vocabulary files, transformers builds a tokenizer of special tokens
    # alone: every review would become [CLS] [UNK] ... [SEP] and the run would train on nothing.
    if len(tokenizer) <= len(tokenizer.all_special_tokens):
        folder = Path(source)
        found = ", ".join(sorted(p.name for p in folder.iterdir())) if folder.is_dir() else "nothing"
        raise UserError(
            f"{key}={source}: no tokenizer vocabulary there (found {found}); save the model's tokenizer files "
            "beside its weights (tokenizer.json or vocab.txt, as tokenizer.save_pretrained writes them)"
        )
    if max_length is not None:
        check_max_length(model_cfg, weights, tokenizer, max_length)
    return tokenizer


def check_max_length(model_cfg, weights: str | None, tokenizer, max_length: int) -> None:
    """trainer.max_length against the encoder's position limit and the special tokens the tokenizer adds."""
    config = encoder_config(model_cfg, weights)
    positions = encoders.usable_positions(encoders.family(config.model_type, hand_map=True), config)
    if positions is not None and max_length > positions:
        raise UserError(
            f"config trainer.max_length: {max_length} exceeds the {positions} positions of model "
            f"'{model_cfg.name}'; use {positions} or less"
        )
    specials = tokenizer.num_special_tokens_to_add()
    if max_length <= specials:
        raise UserError(
            f"config trainer.max_length: {max_length} leaves no token of text beside the tokenizer's {specials} "
            "special tokens"
        )


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


def max_rank(name: str, layer: nn.Linear) -> int:
    # An update of an out x in matrix has rank at most min(out, in); a larger rank only adds parameters. The head
    # has one output by design, so it is held to its input width: lora.rank is shared with the encoder's targets,
    # and the documented head presets run at rank 4.
    return layer.in_features if name == "head" else min(layer.in_features, layer.out_features)


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


def attach_lora(
    model: SentimentClassifier, lora_cfg, targets_map: dict[str, list[str]] | None = None
) -> peft.PeftModel:
    """Wrap with PEFT LoRA; everything but the adapters is frozen, then the head is unfrozen unless LoRA adapts it.

    The modules come from the architecture table unless `targets_map` (model.targets_map) gives them by hand.
    The head is not put in PEFT's modules_to_save: that keeps a frozen copy beside a trainable one, which
    would inflate the total parameter count and the saved adapter. With lora.budget the rank is chosen here;
    `adapter_rank` reads back the one used.
    """
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
    )
    wrapped = peft.get_peft_model(model, config)
    if "head" not in targets:
        for parameter in classifier_of(wrapped).head.parameters():
            parameter.requires_grad_(True)
    return wrapped


# ---- the other fine-tuning methods (method.name; conf/method/) ----

# Methods whose trained weights PEFT wraps and saves as an adapter (adapter/); the others train parameters of the
# classifier itself.
PEFT_METHODS = ("lora", "ia3")


def used_encoder_parameters(classifier: SentimentClassifier) -> set[str]:
    """Names of the encoder's parameters that the classifier's forward uses (they receive a gradient).

    Poolers (BERT's pooler.dense, ALBERT's pooler, ...) and Longformer's *_global projections (used only with a
    global attention mask) take no part in the classifier's forward: training them changes nothing, and counting
    them as trainable would overstate a method's size. One backward pass on a few tokens in eval mode (no dropout,
    so no random draw) finds them in every family; a name list could not.
    """
    flags = {name: p.requires_grad for name, p in classifier.named_parameters()}
    training = classifier.training
    classifier.eval()
    for parameter in classifier.parameters():
        parameter.requires_grad_(True)
    ids = torch.tensor([[2, 5, 6, 7, 3]])  # any few in-vocabulary tokens: only which parameters are reached matters
    try:
        classifier(ids, torch.ones_like(ids)).sum().backward()
        used = {name for name, p in classifier.encoder.named_parameters() if p.grad is not None}
    finally:
        for name, parameter in classifier.named_parameters():
            parameter.grad = None
            parameter.requires_grad_(flags[name])
        classifier.train(training)
    return used


def is_bias(name: str) -> bool:
    # DeBERTa v1 keeps its q and v biases as parameters q_bias and v_bias, not as a Linear's `bias`.
    last = name.rsplit(".", 1)[-1]
    return last == "bias" or last.endswith("_bias")


def train_only(classifier: SentimentClassifier, encoder_names: set[str]) -> SentimentClassifier:
    """Freeze the encoder except `encoder_names`; the head trains whole."""
    for name, parameter in classifier.encoder.named_parameters():
        parameter.requires_grad_(name in encoder_names)
    for parameter in classifier.head.parameters():
        parameter.requires_grad_(True)
    return classifier


def attach_ia3(classifier: SentimentClassifier) -> peft.PeftModel:
    """PEFT's IA3 on k, v and the FFN's down projection of every layer (encoders.ia3_modules), the head trained.
    The family table chooses the modules; model.targets_map, LoRA's, is not read."""
    if classifier.family is None:  # model.targets_map (LoRA's hand map) does not say which Linear is k, v or down
        raise UserError(
            f"config method.name: ia3 takes its modules from the family table, which lacks model_type "
            f"'{classifier.model_type}' (supported: {encoders.supported()}); use method=lora with model.targets_map"
        )
    targets, feedforward = encoders.ia3_modules(classifier.family)

    def pattern(patterns: list[str]) -> str:
        return "|".join(f"(?:encoder\\.(?:{item}))" for item in patterns)

    config = peft.IA3Config(target_modules=pattern(targets), feedforward_modules=pattern(feedforward))
    wrapped = peft.get_peft_model(classifier, config)
    for parameter in classifier_of(wrapped).head.parameters():
        parameter.requires_grad_(True)
    return wrapped


def attach_method(classifier: SentimentClassifier, cfg) -> nn.Module:
    """The classifier set up for cfg.method.name: what trains is requires_grad, the rest frozen.

    lora and ia3 return a PEFT model; linear_probe, bitfit and full return the classifier itself, with the head
    and (bitfit) the encoder's used bias terms or (full) every used encoder parameter trainable.
    """
    method = cfg.method.name
    if method == "lora":
        return attach_lora(classifier, cfg.lora, cfg.model.targets_map)
    if method == "ia3":
        return attach_ia3(classifier)
    if method == "linear_probe":
        return train_only(classifier, set())
    used = used_encoder_parameters(classifier)
    if method == "bitfit":
        biases = {name for name in used if is_bias(name)}
        if not biases:
            raise UserError(
                f"config method.name: bitfit trains the encoder's bias terms, and this {classifier.model_type} "
                "encoder has none (its config turns them off); choose another method"
            )
        return train_only(classifier, biases)
    return train_only(classifier, used)  # full


def adapter_rank(wrapped: nn.Module) -> int | None:
    """The LoRA rank used (lora.budget may have chosen it); None for a model without LoRA."""
    config = wrapped.peft_config["default"] if isinstance(wrapped, peft.PeftModel) else None
    return config.r if isinstance(config, peft.LoraConfig) else None


def classifier_of(wrapped: nn.Module) -> SentimentClassifier:
    return wrapped.base_model.model if isinstance(wrapped, peft.PeftModel) else wrapped


def count_params(wrapped: nn.Module) -> dict[str, object]:
    """Counted from named_parameters, not from PEFT's printout (some versions double-count saved modules)."""
    groups = {"lora": 0, "dora_magnitude": 0, "head": 0, "encoder": 0}
    if any("ia3_l" in name for name, _ in wrapped.named_parameters()):
        groups["ia3"] = 0  # IA3's scaling vectors: a group of their own, present under method=ia3 only
    total = trainable = 0
    for name, parameter in wrapped.named_parameters():
        count = parameter.numel()
        total += count
        if not parameter.requires_grad:
            continue
        trainable += count
        if "ia3_l" in name:
            groups["ia3"] += count
        elif "lora_magnitude_vector" in name:  # DoRA's: a vector per adapted layer, not part of the low-rank update
            groups["dora_magnitude"] += count
        elif "lora_" in name:
            groups["lora"] += count
        elif ".head." in f".{name}":
            groups["head"] += count
        else:
            groups["encoder"] += count
    return {"trainable": trainable, "total": total, "trainable_pct": 100.0 * trainable / total, "by_group": groups}


def plain_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().contiguous().cpu().clone() for key, value in module.state_dict().items()}


ENCODER_FILE = "encoder.safetensors"  # the whole encoder: random init (its initial state) or method=full (trained)
ENCODER_TRAINED_FILE = "encoder_trained.safetensors"  # method=bitfit: the encoder tensors it trained, by name


def trained_encoder_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The encoder parameters a method without PEFT trained (bitfit's biases, full's everything), by name."""
    encoder = classifier_of(model).encoder
    return {name: p.detach().contiguous().cpu().clone() for name, p in encoder.named_parameters() if p.requires_grad}


def save_trained(
    wrapped: nn.Module, run_dir: Path, encoder_state: dict[str, torch.Tensor] | None, method: str = "lora"
) -> None:
    """What reloads the trained classifier: the adapter in PEFT format (lora, ia3), the head's base weights, and of
    the encoder what its source cannot give back.

    encoder_state is the random-init encoder captured before the method was attached (None for pretrained weights,
    which are reloaded from their source instead). method=full saves the whole trained encoder in its place, and
    method=bitfit the bias terms it trained beside it. Written into a temporary folder in the run directory and
    renamed into place: a full disk or a kill leaves no half-written weights under the final names.
    """
    staging = Path(tempfile.mkdtemp(dir=run_dir, prefix=".saving.", suffix=".tmp"))
    try:
        if method in PEFT_METHODS:
            wrapped.save_pretrained(str(staging / "adapter"), safe_serialization=True)
        head = classifier_of(wrapped).head
        head = head.base_layer if isinstance(head, peft.tuners.lora.LoraLayer) else head
        save_file(plain_state(head), str(staging / "head.safetensors"))
        if method == "full":
            encoder_state = plain_state(classifier_of(wrapped).encoder)
        if encoder_state is not None:
            save_file(encoder_state, str(staging / ENCODER_FILE))
        if method == "bitfit":
            save_file(trained_encoder_tensors(wrapped), str(staging / ENCODER_TRAINED_FILE))
        # safetensors (0.8) writes through a temporary file created 0o600 and renamed into place, and mkdtemp makes
        # a 0o700 folder (safetensors/safetensors#782): give every file the umask's mode, as results.atomic_target
        # does, before anything gets its final name.
        file_mode = new_file_mode()
        for path in staging.rglob("*"):
            os.chmod(path, (file_mode | (file_mode & 0o444) >> 2) if path.is_dir() else file_mode)
        for path in sorted(staging.iterdir()):
            target = run_dir / path.name
            if target.is_dir():  # a retried run's leftovers (a completed run is never rewritten: immutable.py)
                shutil.rmtree(target)
            os.replace(path, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


class Trained(NamedTuple):
    model: nn.Module  # a PeftModel (lora, ia3) or the SentimentClassifier itself (linear_probe, bitfit, full)
    tokenizer: object
    # The run's autocast dtype (None: fp32), from metrics.json's `precision`. Evaluate in it: a bf16 run evaluated
    # in fp32 gives other probabilities (by ~1e-4 on the tiny test model) than its test_predictions.csv.
    dtype: torch.dtype | None


def run_dtype(run_dir: Path) -> torch.dtype | None:
    """The autocast dtype a completed run trained and tested in."""
    path = Path(run_dir) / METRICS_FILE
    try:
        precision = read_metrics(run_dir).get("precision")
    except FileNotFoundError:
        raise UserError(f"{path}: not found; the run did not complete, so its precision is unknown") from None
    except (OSError, ValueError, AttributeError) as err:
        raise UserError(f"{path}: cannot read the run's precision ({err})") from None
    if precision not in DTYPES:
        raise UserError(f"{path}: precision is {precision!r}, expected one of {', '.join(DTYPES)}")
    return DTYPES[precision]


def load_trained(model_cfg, run_dir: Path, method: str = "lora") -> Trained:
    """Rebuild a completed run's classifier from its run directory (safetensors only), its tokenizer, and the
    autocast dtype to evaluate it in."""
    run_dir = Path(run_dir)
    dtype = run_dtype(run_dir)
    weights = resolve_weights(model_cfg)  # None for a random-init model, whose encoder.safetensors is its init
    classifier = build_classifier(model_cfg, weights)
    if (run_dir / ENCODER_FILE).exists():
        classifier.encoder.load_state_dict(load_file(str(run_dir / ENCODER_FILE)))
    if method == "bitfit":
        trained = load_file(str(run_dir / ENCODER_TRAINED_FILE))
        unexpected = classifier.encoder.load_state_dict(trained, strict=False).unexpected_keys
        if unexpected:
            raise UserError(f"{run_dir / ENCODER_TRAINED_FILE}: holds {unexpected[0]}, which this encoder lacks")
    classifier.head.load_state_dict(load_file(str(run_dir / "head.safetensors")))
    model = classifier
    if method in PEFT_METHODS:
        model = peft.PeftModel.from_pretrained(classifier, str(run_dir / "adapter"))
    model.eval()
    return Trained(model, load_tokenizer(model_cfg, weights), dtype)
