"""WaveFT (Bilican et al., 2025) through PEFT's WaveFTConfig: the update of each adapted Linear is the inverse 2-D
discrete wavelet transform of a sparse coefficient matrix, n_frequency trained coefficients at fixed random
positions (a seeded draw): n_frequency trained per Linear, at most in * out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from sentiment_lora.methods.adapters import AdapterConfig, AdapterMethod
from sentiment_lora.methods.registry import register
from sentiment_lora.schema import AT_LEAST_ONE, POSITIVE, described

# The wavelet families PEFT's WaveFT docs name (peft/tuners/waveft/constants.py has more); db1 is Haar, its default.
WAVELETS = ("db1", "db2", "sym2", "coif1")


@dataclass
class WaveftConfig(AdapterConfig):
    n_frequency: int = described(
        "Trained wavelet coefficients per adapted Linear; method.budget chooses it.", 2592, within=AT_LEAST_ONE
    )
    scaling: float = described("WaveFT's scaling of the update (PEFT's default 25).", 25.0, within=POSITIVE)
    wavelet: str = described("The wavelet family (PEFT's wavelet_family).", "db1", choices=WAVELETS)
    frequency_seed: int = described("Seed of the coefficients' positions (PEFT's random_loc_seed).", 777)


@register
class Waveft(AdapterMethod):
    name = "waveft"
    title = "WaveFT"
    trains = (
        "sparse wavelet coefficients of weight updates (PEFT WaveFTConfig) merged into the encoder's weights, and the "
        "head"
    )
    schema = WaveftConfig
    # Sparse transform coefficients as FourierFT's spectra: that method's rate, far above LoRA's
    default_lr = 5e-3
    knob = "n_frequency"
    groups = ("waveft",)
    prefixes: ClassVar[dict[str, str]] = {"waveft_": "waveft"}
    marker = "_"

    def sizes(self, adapted):
        return range(1, min(layer.in_features * layer.out_features for layer in adapted.values()) + 1)

    def build_config(self, method_cfg, target_modules, size, total_steps, adapted):
        import peft

        return peft.WaveFTConfig(
            n_frequency=size,
            scaling=method_cfg.scaling,
            wavelet_family=method_cfg.wavelet,
            random_loc_seed=method_cfg.frequency_seed,
            target_modules=target_modules,
        )
