"""FourierFT (Gao et al., 2024) through PEFT's FourierFTConfig: the update of each adapted Linear is the inverse 2-D
Fourier transform of a sparse spectrum, n_frequency trained coefficients at fixed random positions (a seeded
draw): n_frequency trained per Linear, at most in * out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from sentiment_lora.methods.adapters import AdapterConfig, AdapterMethod
from sentiment_lora.methods.registry import register
from sentiment_lora.schema import AT_LEAST_ONE, POSITIVE, described


@dataclass
class FourierftConfig(AdapterConfig):
    n_frequency: int = described(
        "Trained spectral coefficients per adapted Linear; method.budget chooses it.", 1000, within=AT_LEAST_ONE
    )
    scaling: float = described(
        "FourierFT's scaling of the update (PEFT's default 150 for its NLU tasks).", 150.0, within=POSITIVE
    )
    frequency_seed: int = described("Seed of the coefficients' positions (PEFT's random_loc_seed).", 777)


@register
class Fourierft(AdapterMethod):
    name = "fourierft"
    title = "FourierFT"
    trains = (
        "sparse Fourier spectra of weight updates (PEFT FourierFTConfig) merged into the encoder's weights, and the "
        "head"
    )
    schema = FourierftConfig
    default_lr = 5e-3  # the paper's RoBERTa GLUE rates for the spectra are far above LoRA's
    knob = "n_frequency"
    groups = ("fourierft",)
    prefixes: ClassVar[dict[str, str]] = {"fourierft_": "fourierft"}
    marker = "*"

    def sizes(self, adapted):
        return range(1, min(layer.in_features * layer.out_features for layer in adapted.values()) + 1)

    def build_config(self, method_cfg, target_modules, size, total_steps, adapted):
        import peft

        return peft.FourierFTConfig(
            n_frequency=size,
            scaling=method_cfg.scaling,
            random_loc_seed=method_cfg.frequency_seed,
            target_modules=target_modules,
        )
