"""What a population costs in memory, and how a batch of trials is split into populations that fit.

Members share one frozen encoder (`share_frozen`: the same tensors, not equal copies), so what each added member
costs is its own: its adapters with their gradients and AdamW moments, and its rows of the stacked activations
that the backward pass keeps. The activations are estimated, not measured (measuring would need a step of every
population size): per token and per trained layer, the tensors a transformer layer saves for its backward pass,
about 16 hidden-wide and 2 FFN-wide values (Korthikanti et al. 2022 count 34 bytes x hidden in 16-bit for a layer
with 4x FFN; kept in fp32 here, where autocast keeps fp32 copies beside the bf16 ones). bench/README.md,
"Populations", compares the estimate with measured peaks.
"""

from __future__ import annotations

import logging
import math

import torch

from sentiment_lora.model import frozen_depth

log = logging.getLogger(__name__)

BUDGET_SHARE = 0.8  # of the memory available when the populations form: room for evaluation batches and the allocator
BYTES_PER_VALUE = 4
OPTIMIZER_VALUES = 4  # parameter, gradient, two AdamW moments, all fp32


def frozen_tensors(classifier) -> dict[str, torch.Tensor]:
    """The encoder's frozen parameters by their name in the plain encoder (PEFT's `.base_layer` left out)."""
    return {name.replace(".base_layer", ""): p.data for name, p in classifier.encoder.named_parameters()
            if not p.requires_grad}  # fmt: skip


def share_frozen(classifier, shared: dict[str, torch.Tensor]) -> int:
    """Point `classifier`'s frozen encoder parameters at the tensors of `shared` (name -> tensor) where name, shape
    and dtype agree, and add the rest to `shared`; returns how many now share. Their own copies are freed."""
    sharing = 0
    for name, parameter in classifier.encoder.named_parameters():
        if parameter.requires_grad:
            continue
        key = name.replace(".base_layer", "")
        tensor = shared.get(key)
        if tensor is not None and tensor.shape == parameter.shape and tensor.dtype == parameter.dtype:
            parameter.data = tensor
            sharing += 1
        else:
            shared[key] = parameter.data
    return sharing


def member_bytes(run) -> int:
    """Estimated memory one more member of this run's population takes while training."""
    trainable = sum(p.numel() for p in run.model.parameters() if p.requires_grad)
    config = run.classifier.encoder.config
    hidden = config.hidden_size
    intermediate = getattr(config, "intermediate_size", 4 * hidden)
    trained_layers = len(run.classifier.layers()) - (frozen_depth(run.classifier) or 0)  # backward stops below
    tokens = run.cfg.trainer.batch_size * run.cfg.trainer.max_length
    activations = tokens * trained_layers * (16 * hidden + 2 * intermediate)
    return (OPTIMIZER_VALUES * trainable + activations) * BYTES_PER_VALUE


def available_bytes(device: torch.device) -> int:
    """Free memory where the population trains: the GPU's, or the host's available RAM."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        import psutil

        return psutil.virtual_memory().available
    except ImportError:  # psutil is not a declared dependency: Linux's own count
        with open("/proc/meminfo") as info:
            fields = dict(line.split(":", 1) for line in info)
        return int(fields["MemAvailable"].split()[0]) * 1024


def split_to_fit(members: list, per_member: int, budget: int) -> list[list]:
    """`members` in consecutive populations of near-equal size, each at most budget // per_member (at least 1)."""
    fits = max(1, budget // max(per_member, 1))
    parts = math.ceil(len(members) / fits)
    size, extra = divmod(len(members), parts)
    split, start = [], 0
    for index in range(parts):
        end = start + size + (1 if index < extra else 0)
        split.append(members[start:end])
        start = end
    return split


def populations(group: list, runs: list, budget_mb: int | None) -> list[list]:
    """`group` (jobs that can join) split into populations that fit the memory budget (MB; None: BUDGET_SHARE of
    the memory available now), with a log line saying how."""
    first = runs[0]
    per_member = member_bytes(first)
    budget = budget_mb * 2**20 if budget_mb is not None else int(BUDGET_SHARE * available_bytes(first.device))
    split = split_to_fit(group, per_member, budget)
    if len(split) > 1:
        log.info("population split: %d trials into %d populations of at most %d (about %d MB per member, "
                 "budget %d MB on %s), trained one after another", len(group), len(split), len(split[0]),
                 per_member // 2**20, budget // 2**20, first.device)  # fmt: skip
    return split
