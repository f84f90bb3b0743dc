"""AdaLoRA (Zhang et al., 2023) through PEFT's AdaLoraConfig: SVD-form adapters P diag(E) Q of rank init_rank whose
singular values are pruned during training, by an importance score, down to target_rank per layer on average.
Counts are those of init_rank: init_rank * (in + out + 1) per Linear (pruned values are masked, not removed).

The rank allocation runs after every optimizer step (PEFT's update_and_allocate, the `on_step` hook) over the
run's known step count; its importance averages are carried in the checkpoint (`state_tensors`), so a resumed run
allocates as an uninterrupted one. PEFT's orthogonality penalty is added to a model output's `.loss`, which this
classifier has not (the loop computes the loss): it does not apply here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from sentiment_lora.errors import UserError
from sentiment_lora.methods.adapters import AdapterConfig, AdapterMethod
from sentiment_lora.methods.registry import register
from sentiment_lora.schema import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, PROBABILITY, described

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass
class AdaloraConfig(AdapterConfig):
    init_rank: int = described(
        "Each adapter's starting rank (PEFT's init_r); method.budget chooses it.", 12, within=AT_LEAST_ONE
    )
    target_rank: int = described(
        "The average rank kept once pruned (PEFT's target_r), at most init_rank; under method.budget, two thirds "
        "of the chosen init_rank (PEFT's 8 of 12).",
        8,
        within=AT_LEAST_ONE,
    )
    alpha: float = described("AdaLoRA's alpha (PEFT's lora_alpha).", 8.0, within=POSITIVE)
    dropout: float = described("Dropout on the input of each adapter.", 0.0, within=PROBABILITY)
    tinit: int = described("Optimizer steps before pruning starts.", 0, within=NON_NEGATIVE)
    tfinal: int = described("Optimizer steps at the end with the ranks fixed.", 0, within=NON_NEGATIVE)
    delta_t: int = described("Steps between two rank allocations (PEFT's deltaT).", 1, within=AT_LEAST_ONE)
    beta1: float = described("EMA factor of the importance (sensitivity) scores.", 0.85, within=PROBABILITY)
    beta2: float = described("EMA factor of their uncertainty.", 0.85, within=PROBABILITY)


def _allocator(model: nn.Module):
    return model.base_model.rankallocator


@register
class Adalora(AdapterMethod):
    name = "adalora"
    title = "AdaLoRA"
    trains = (
        "SVD-form adapters pruned to a rank budget during training (PEFT AdaLoraConfig) merged into the encoder's "
        "weights, and the head"
    )
    schema = AdaloraConfig
    knob = "init_rank"
    peft_knob = "init_r"
    groups = ("adalora",)
    prefixes: ClassVar[dict[str, str]] = {"lora_": "adalora"}
    marker = "<"

    def validate(self, cfg) -> None:
        method = cfg.method
        if method.get("budget") is None and method.target_rank > method.init_rank:
            raise UserError(
                f"config method.target_rank: {method.target_rank} exceeds method.init_rank "
                f"{method.init_rank}; pruning cannot raise a rank"
            )

    def sizes(self, adapted):
        return range(1, min(min(layer.in_features, layer.out_features) for layer in adapted.values()) + 1)

    def build_config(self, method_cfg, target_modules, size, total_steps, adapted):
        import peft

        target = method_cfg.target_rank if method_cfg.get("budget") is None else max(1, 2 * size // 3)
        # A dry run has no data, so no step count: any count past the warm-up and final phases builds the same.
        steps = total_steps or method_cfg.tinit + method_cfg.tfinal + 1
        if method_cfg.tinit >= steps - method_cfg.tfinal:
            raise UserError(
                f"config method.tinit: {method_cfg.tinit} + method.tfinal {method_cfg.tfinal} leave no "
                f"pruning step among the run's {steps} optimizer steps"
            )
        return peft.AdaLoraConfig(
            init_r=size,
            target_r=min(target, size),
            lora_alpha=method_cfg.alpha,
            lora_dropout=method_cfg.dropout,
            tinit=method_cfg.tinit,
            tfinal=method_cfg.tfinal,
            deltaT=method_cfg.delta_t,
            beta1=method_cfg.beta1,
            beta2=method_cfg.beta2,
            total_step=steps,
            target_modules=target_modules,
        )

    def on_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        model.base_model.update_and_allocate(step)

    def state_tensors(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The allocator's importance averages, and the rank pattern once fixed: what a resumed run must carry."""
        import torch

        allocator = _allocator(model)
        tensors = {f"exp_avg_ipt/{name}": value for name, value in allocator.exp_avg_ipt.items()}
        tensors |= {f"exp_avg_unc/{name}": value for name, value in allocator.exp_avg_unc.items()}
        pattern = model.peft_config["default"].rank_pattern
        if pattern:
            tensors |= {f"rank_pattern/{name}": torch.tensor(kept, dtype=torch.bool) for name, kept in pattern.items()}
        return tensors

    def restore_state(self, model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
        allocator = _allocator(model)
        pattern = {}
        for key, value in tensors.items():
            kind, name = key.split("/", 1)
            if kind == "rank_pattern":
                pattern[name] = value.tolist()
            else:
                getattr(allocator, kind)[name] = value
        if pattern:
            model.peft_config["default"].rank_pattern = pattern

    def save(self, model: nn.Module, folder) -> None:
        # Saved at init_rank with the pruned values masked to zero: PEFT would otherwise cut the saved tensors to
        # the last rank pattern, which an earlier (selected) epoch's weights need not follow.
        config = model.peft_config["default"]
        pattern, config.rank_pattern = config.rank_pattern, None
        try:
            super().save(model, folder)
        finally:
            config.rank_pattern = pattern

    def run_facts(self, model: nn.Module, cfg) -> dict:
        config = model.peft_config["default"]
        return {**super().run_facts(model, cfg), "target_rank_used": config.target_r}
