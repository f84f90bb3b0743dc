"""LN tuning (Zhao et al., 2024, "Tuning LayerNorm in Attention") through PEFT's LNTuningConfig: a trained copy of
every LayerNorm of the encoder (weight and bias; the embeddings' too, so nothing below the layers stays frozen),
the head trained. PEFT keeps the original LayerNorm beside the copy (so the total count grows by the trained
one) and swaps the copy in when merged. It has no size knob, so no method.budget."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, ClassVar

from sentiment_lora.errors import UserError
from sentiment_lora.methods.base import PeftMethod
from sentiment_lora.methods.registry import register

if TYPE_CHECKING:
    import peft
    from torch import nn

    from sentiment_lora.model import SentimentClassifier


def is_layer_norm(module: nn.Module) -> bool:
    from torch import nn

    # DeBERTa v1 has its own LayerNorm class (DebertaLayerNorm), not a subclass of torch's.
    return isinstance(module, nn.LayerNorm) or type(module).__name__.endswith("LayerNorm")


def layer_norms(classifier: SentimentClassifier) -> list[str]:
    """Names (inside the classifier) of the encoder's LayerNorms."""
    return [f"encoder.{name}" for name, module in classifier.encoder.named_modules() if name and is_layer_norm(module)]


@register
class LnTuning(PeftMethod):
    name = "ln_tuning"
    title = "LN tuning"
    trains = "a copy of every LayerNorm of the encoder (PEFT LNTuningConfig) swapped into the encoder, and the head"
    default_lr = 1e-3  # LayerNorm gains and biases, as BitFit's biases, move at larger rates than low-rank updates
    groups = ("ln_tuning",)
    prefixes: ClassVar[dict[str, str]] = {"ln_tuning_layers": "ln_tuning"}
    marker = "s"

    def peft_config(self, classifier: SentimentClassifier, cfg, total_steps: int | None) -> peft.PeftConfig:
        import peft

        names = layer_norms(classifier)
        if not names:
            raise UserError(
                f"config method.name: ln_tuning trains LayerNorms, and this {classifier.model_type} "
                "encoder has none; choose another method"
            )
        return peft.LNTuningConfig(target_modules="|".join(re.escape(name) for name in names))
