"""Building an encoder only when it is the encoder its config describes and fits the machine.

transformers loads a folder whose safetensors lack a layer's keys, or name them otherwise, with a warning, and
initialises those weights at random: the run trains a random encoder and reports complete. It also starts building
whatever config.json describes (num_hidden_layers=100000 allocates for minutes before it fails). These checks turn
both into one line before anything trains.
"""

from __future__ import annotations

import copy
import logging
import os

import torch
from safetensors import SafetensorError
from torch import nn
from transformers import AutoModel
from transformers.utils import logging as transformers_logging

from sentiment_lora.errors import UserError

log = logging.getLogger(__name__)

SHOWN_KEYS = 4  # how many of the keys at fault a message names before "... (N in all)"
BYTES_PER_PARAMETER = 4  # encoders are built in fp32, whatever the autocast precision the run trains in


def _some(keys) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:SHOWN_KEYS])
    return shown if len(keys) <= SHOWN_KEYS else f"{shown}, ... ({len(keys)} in all)"


def _meta_parameters(config) -> int:
    """Parameters of the encoder `config` describes, counted on the meta device (nothing allocated)."""
    with torch.device("meta"):
        return sum(parameter.numel() for parameter in AutoModel.from_config(config).parameters())


def parameter_count(config) -> int:
    """The encoder's parameter count, from two meta-device builds of one and two layers: building every layer even
    on the meta device takes minutes at num_hidden_layers=100000, and each layer of an encoder holds as many
    parameters as the next (ALBERT's shared layers add none, which the difference shows too)."""
    layers = getattr(config, "num_hidden_layers", None)
    if not isinstance(layers, int) or layers < 2:
        return _meta_parameters(config)
    counts = []
    for depth in (1, 2):
        shallow = copy.deepcopy(config)
        shallow.num_hidden_layers = depth
        counts.append(_meta_parameters(shallow))
    return counts[0] + (layers - 1) * (counts[1] - counts[0])


def machine_memory() -> int:
    """This machine's physical memory in bytes (the encoder is built in it before it moves to any device)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_fits(config, where: str) -> None:
    """Refuse an encoder whose fp32 weights alone exceed the machine's memory, before building it. The weights are
    a lower bound of what training takes (gradients, optimizer state and activations come on top), so a config
    refused here could never have run; one let through may still be too big, and fails as it always did."""
    try:
        needed = parameter_count(config) * BYTES_PER_PARAMETER
    except Exception as err:  # noqa: BLE001 - a family whose __init__ cannot run on the meta device: build as before
        log.debug("%s: no parameter estimate on the meta device (%s)", where, err)
        return
    memory = machine_memory()
    if needed > memory:
        layers = getattr(config, "num_hidden_layers", "?")
        hidden = getattr(config, "hidden_size", "?")
        raise UserError(
            f"{where}: the encoder it describes (num_hidden_layers={layers}, hidden_size={hidden}) holds "
            f"{needed / BYTES_PER_PARAMETER:,.0f} parameters, {needed / 2**30:,.1f} GiB in fp32, more than this "
            f"machine's {memory / 2**30:,.1f} GiB of memory; check its config"
        )


def _is_unused_part(key: str) -> bool:
    # The pooler (BERT's pooler.dense, ALBERT's pooler): the classifier pools the hidden states itself
    # (model.pooling), so a checkpoint saved without it loses nothing.
    return "pooler" in key.split(".")


def _check_loading_info(encoder: nn.Module, info: dict, where: str) -> None:
    """Missing, misnamed or misshaped encoder weights are refused; a checkpoint's own task head (cls.*,
    classifier.*, lm_head.*: keys outside the encoder's modules) is not the encoder's, and is left out quietly."""
    mismatched = info.get("mismatched_keys") or []
    if mismatched:
        shapes = {f"{key} {tuple(saved)} vs {tuple(wanted)}" for key, saved, wanted in mismatched}
        raise UserError(
            f"{where}: {len(mismatched)} weights have other shapes than config.json describes (saved vs config: "
            f"{_some(shapes)}); the config does not belong to these weights"
        )
    missing = {key for key in info.get("missing_keys") or () if not _is_unused_part(key)}
    children = {name for name, _ in encoder.named_children()}
    unexpected = {key for key in info.get("unexpected_keys") or () if key.split(".")[0] in children}
    if missing or unexpected:
        parts = [f"{len(missing)} encoder weights missing ({_some(missing)})"] if missing else []
        parts += [f"{len(unexpected)} unexpected ({_some(unexpected)})"] if unexpected else []
        raise UserError(
            f"{where}: the safetensors do not hold the encoder config.json describes: {'; '.join(parts)}"
            + ("; transformers would initialise the missing ones at random" if missing else "")
        )
    unused = set(info.get("missing_keys") or ()) - missing
    if unused:
        log.info("%s: %d weights of parts the classifier does not use absent (%s)", where, len(unused), _some(unused))
    others = set(info.get("unexpected_keys") or ()) - unexpected
    if others:
        log.info("%s: %d checkpoint tensors outside the encoder left out (%s)", where, len(others), _some(others))


def load_pretrained(weights: str, config, where: str) -> nn.Module:
    """The encoder in `weights` (a folder or a cached hub id), checked to be the one its config describes."""
    check_fits(config, where)
    verbosity = transformers_logging.get_verbosity()
    # transformers' own loading report is a table of the same keys, printed before they are judged here.
    transformers_logging.set_verbosity_error()
    try:
        # ignore_mismatched_sizes: transformers then reports the misshaped keys instead of raising a RuntimeError
        # that points at a log; they are refused below, so nothing random is kept.
        encoder, info = AutoModel.from_pretrained(
            weights,
            config=config,
            use_safetensors=True,
            trust_remote_code=False,
            output_loading_info=True,
            ignore_mismatched_sizes=True,
        )
    except SafetensorError as err:  # a truncated or corrupt model.safetensors
        raise UserError(f"{where}: its model.safetensors is damaged or truncated ({err})") from None
    except OSError as err:
        raise UserError(f"{where}: cannot load safetensors weights from {weights}: {err}") from None
    finally:
        transformers_logging.set_verbosity(verbosity)
    _check_loading_info(encoder, info, where)
    return encoder
