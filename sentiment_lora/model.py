"""Encoder + pooling + single-unit head: the classifier, its frozen-prefix hooks, building and loading it (the
fine-tuning methods that wrap it are in sentiment_lora/methods/)."""

from __future__ import annotations

from contextlib import contextmanager
from operator import attrgetter
from pathlib import Path

import peft
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer

from sentiment_lora import encoder_weights, encoders
from sentiment_lora.errors import UserError
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

    None when the embeddings train, so nothing below the adapters is frozen. A tensor several layers hold (a
    trained vector or bank an adapter shares across layers) counts at the lowest of them: every one of them uses it.
    """
    layers = classifier.layers()
    first = len(layers)
    layer_ids: dict[int, int] = {}
    for index, layer in enumerate(layers):
        for parameter in layer.parameters():
            layer_ids.setdefault(id(parameter), index)
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
    where = f"model.path={weights}" if model_cfg.path else f"model '{model_cfg.name}'"
    if weights is None:
        encoder_weights.check_fits(config, f"{where}: model.arch")
        return AutoModel.from_config(config)
    return encoder_weights.load_pretrained(weights, config, where)


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
    try:  # a vocab.txt without [UNK] (another file by that name) loads, and fails on the first unknown word
        tokenizer("a review with an unknown word: \u2603qzx")
    except Exception as err:  # the tokenizers library raises a bare Exception
        raise UserError(f"{key}={source}: its tokenizer cannot encode text ({err})") from None
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


def classifier_of(wrapped: nn.Module) -> SentimentClassifier:
    return wrapped.base_model.model if isinstance(wrapped, peft.PeftModel) else wrapped


def plain_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().contiguous().cpu().clone() for key, value in module.state_dict().items()}
