"""One frozen encoder for a whole population: every frozen module runs once per step over the members' batches
stacked along the batch dimension, and each adapted Linear adds each member's own LoRA update to its own rows.

Why by hand: PEFT's mixed-adapter batches (`adapter_names=`) are inference-only, and its adapters live inside
one model per trial; nothing in PEFT (or transformers) trains several adapters of one base in one forward. The
members' adapters stay in their own PEFT models (their initialisation, optimizers, checkpoints and saved adapters
are a single run's); this module only calls their lora_A/lora_B weights on the right rows.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import peft
import torch
from torch import nn
from torch.nn import functional

from sentiment_lora import fastpath
from sentiment_lora.model import SentimentClassifier, build_classifier, classifier_of
from sentiment_lora.population.memory import frozen_tensors, share_frozen


@dataclass
class Rows:
    """Which rows of the stacked batch belong to which member: the members' positions in the stack, in order,
    and each one's row count (equal for all but, in principle, a last short batch)."""

    members: list[int] = field(default_factory=list)  # indices into the population's member list
    counts: list[int] = field(default_factory=list)

    def slices(self) -> list[slice]:
        starts = [sum(self.counts[:position]) for position in range(len(self.counts))]
        return [slice(start, start + count) for start, count in zip(starts, self.counts, strict=True)]


def lora_of(layer: peft.tuners.lora.LoraLayer) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """(A, B, scaling, dropout p) of a PEFT LoRA layer's default adapter."""
    dropout = layer.lora_dropout["default"]
    p = dropout.p if isinstance(dropout, nn.Dropout) else 0.0
    return layer.lora_A["default"].weight, layer.lora_B["default"].weight, layer.scaling["default"], p


class StackedLoRALinear(nn.Module):
    """A frozen Linear called once over the stacked batch, plus each member's LoRA update on its own rows.

    PEFT's LoRA forward is base(x) + B(A(dropout(x))) * scaling; here base(x) is one product for every member, and
    the updates of members with the same rank and dropout are one batched product (torch.bmm over the members'
    rows). A member that does not adapt this module adds nothing (a zero update that stays zero); members of
    different ranks are computed in separate groups, so no padding enters any member's numbers.
    """

    def __init__(self, base: nn.Module, adapters: list[peft.tuners.lora.LoraLayer | None], rows: Rows):
        super().__init__()
        self.base = base
        # Plain lists, not submodules: the adapters' parameters belong to the members' own models (and optimizers).
        self.adapters = adapters
        self.rows = rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        members, counts = self.rows.members, self.rows.counts
        if len(set(counts)) == 1:
            return self._grouped(x, out, members, counts[0])
        for member, rows in zip(members, self.rows.slices(), strict=True):  # unequal row counts: one at a time
            layer = self.adapters[member]
            if layer is not None:
                a, b, scaling, p = lora_of(layer)
                part = fastpath.dropout(x[rows], p, self.training)
                delta = functional.linear(functional.linear(part.to(a.dtype), a), b) * scaling
                out = out.index_add(0, torch.arange(rows.start, rows.stop, device=out.device), delta.to(out.dtype))
        return out

    def _grouped(self, x: torch.Tensor, out: torch.Tensor, members: list[int], count: int) -> torch.Tensor:
        groups: dict[tuple, list[int]] = defaultdict(list)  # (rank, dropout p) -> positions in the stack
        for position, member in enumerate(members):
            layer = self.adapters[member]
            if layer is not None:
                groups[(layer.r["default"], lora_of(layer)[3])].append(position)
        if not groups:
            return out
        stacked_x = x.reshape(len(members), -1, x.shape[-1])  # (members, rows x tokens, in)
        stacked_out = out.reshape(len(members), -1, out.shape[-1])
        for (_rank, p), positions in groups.items():
            parts = [lora_of(self.adapters[members[position]]) for position in positions]
            a = torch.stack([part[0] for part in parts])  # (group, rank, in): differentiable, to each member's A
            b = torch.stack([part[1] for part in parts])  # (group, out, rank)
            scaling = torch.tensor([part[2] for part in parts], dtype=a.dtype, device=a.device).view(-1, 1, 1)
            index = torch.tensor(positions, device=x.device)
            inputs = stacked_x.index_select(0, index).to(a.dtype)
            if p:
                inputs = fastpath.dropout(inputs, p, self.training)  # one draw per element: masks independent
            delta = torch.bmm(torch.bmm(inputs, a.transpose(1, 2)), b.transpose(1, 2)) * scaling
            stacked_out = stacked_out.index_add(0, index, delta.to(stacked_out.dtype))
        return stacked_out.reshape(out.shape)


def shared_encoder(first, members: list, device) -> tuple[SentimentClassifier, Rows]:
    """The population's one frozen classifier (its encoder as the members' own, built from the same weights), with
    every Linear that some member adapts wrapped in a StackedLoRALinear; and the Rows those wrappers read.

    `first` is the first member's Run; `members` every member's classifier (PEFT-wrapped in place)."""
    with torch.random.fork_rng(devices=[]):  # the members' own random streams are not disturbed
        torch.manual_seed(first.cfg.trainer.seed)  # a random-init encoder: the members' (they share this seed)
        shared = build_classifier(first.cfg.model, first.weights)
    shared.requires_grad_(False)
    shared.cached_depth = first.classifier.cached_depth
    fastpath.prepare_for_steps(shared, shared.encoder, first.dtype)
    share_frozen(shared, frozen_tensors(first.classifier))  # the members' one copy, not a fifth
    rows = Rows()
    adapted: dict[str, list] = defaultdict(lambda: [None] * len(members))
    for index, classifier in enumerate(members):
        for name, module in classifier.named_modules():
            if isinstance(module, peft.tuners.lora.LoraLayer) and name != "head" and not name.startswith("head."):
                adapted[name][index] = module
    for name, adapters in adapted.items():
        parent_name, _, child = name.rpartition(".")
        parent = shared.get_submodule(parent_name) if parent_name else shared
        wrapper = StackedLoRALinear(getattr(parent, child), adapters, rows)
        setattr(parent, child, wrapper)
    return shared.to(device), rows


def frozen_names(run) -> set[str]:
    """Names (relative to the classifier) of the modules a member keeps in eval mode while training."""
    classifier = run.classifier
    ids = {id(module) for module in run.frozen.modules}
    return {name for name, module in classifier.named_modules() if id(module) in ids}


class Stacker:
    """Stacks the members' batches: token ids and masks padded to the longest member's length (the tokenizer's
    pad id, mask 0: attention gives padding no weight, so a member's rows compute what they would alone) and
    cached prefix states padded with zeros, as the loaders pad within a batch."""

    def __init__(self, tokenizer):
        self.pad_id = tokenizer.pad_token_id or 0  # what the loaders' collator pads with

    def __call__(self, batches: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        length = max(batch["input_ids"].shape[1] for batch in batches)

        def padded(tensor: torch.Tensor, value) -> torch.Tensor:
            extra = length - tensor.shape[1]
            if extra == 0:
                return tensor
            pad = [0, 0] * (tensor.dim() - 2) + [0, extra]  # pad dimension 1 (tokens) only
            return functional.pad(tensor, pad, value=value)

        stacked = {
            "input_ids": torch.cat([padded(batch["input_ids"], self.pad_id) for batch in batches]),
            "attention_mask": torch.cat([padded(batch["attention_mask"], 0) for batch in batches]),
            "labels": torch.cat([batch["labels"] for batch in batches]),
        }
        if "prefix" in batches[0]:
            prefixes = [batch["prefix"] for batch in batches]
            stacked["prefix"] = torch.cat(prefixes if prefixes[0].dim() == 2 else [padded(t, 0.0) for t in prefixes])
        return stacked


def head_logits(run, pooled: torch.Tensor) -> torch.Tensor:
    """A member's logits from its rows of the shared pooled vectors: its own head dropout and head (LoRA'd or
    trained whole), as its classifier's forward would apply them."""
    classifier = classifier_of(run.model)
    return classifier.head(classifier.dropout(pooled)).squeeze(-1)
