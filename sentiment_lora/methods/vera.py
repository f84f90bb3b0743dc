"""VeRA (Kopiczko et al., 2024) through PEFT's VeraConfig: one pair of frozen random matrices A (r x in) and B
(out x r) shared by every adapted layer (drawn from a fixed seed, saved with the adapter), and per layer two
trained scaling vectors, d (r) and b (out): r + out trained per Linear. Its rank is large (PEFT's default 256)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from sentiment_lora.methods.adapters import AdapterConfig, AdapterMethod
from sentiment_lora.methods.registry import register
from sentiment_lora.schema import AT_LEAST_ONE, POSITIVE, PROBABILITY, described

# The largest rank a budget may choose: the frozen A and B grow with it (r x (in + out) floats, not trained).
MAX_RANK = 32768


@dataclass
class VeraConfig(AdapterConfig):
    rank: int = described(
        "VeRA's r (PEFT's r): rows of the shared frozen projections; method.budget chooses it.",
        256,
        within=AT_LEAST_ONE,
    )
    d_initial: float = described("Initial value of the d scaling vectors (PEFT's d_initial).", 0.1, within=POSITIVE)
    dropout: float = described("Dropout on the input of each VeRA adapter.", 0.0, within=PROBABILITY)
    projection_seed: int = described("Seed of the frozen shared projections (PEFT's projection_prng_key).", 0)


@register
class Vera(AdapterMethod):
    name = "vera"
    title = "VeRA"
    trains = (
        "VeRA scaling vectors over frozen shared random projections (PEFT VeraConfig) merged into the encoder's "
        "weights, and the head"
    )
    schema = VeraConfig
    default_lr = 5e-3  # the paper's RoBERTa-base GLUE rates for the vectors are 4e-3 to 1e-2
    knob = "rank"
    peft_knob = "r"
    groups = ("vera",)
    prefixes: ClassVar[dict[str, str]] = {"vera_lambda_": "vera"}
    marker = "v"

    def sizes(self, adapted):
        return range(1, MAX_RANK + 1)

    def build_config(self, method_cfg, target_modules, size, total_steps, adapted):
        import peft

        return peft.VeraConfig(
            r=size,
            d_initial=method_cfg.d_initial,
            vera_dropout=method_cfg.dropout,
            projection_prng_key=method_cfg.projection_seed,
            save_projection=True,
            target_modules=target_modules,
        )
