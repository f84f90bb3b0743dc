"""BitFit (Ben Zaken et al., 2022): the encoder's bias terms the classifier's forward uses, plus the head; every
weight matrix frozen. A family without biases (ModernBERT, NomicBERT by default) is refused."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sentiment_lora.errors import UserError
from sentiment_lora.methods.base import SAVES_ENCODER_TENSORS, Method
from sentiment_lora.methods.registry import register

if TYPE_CHECKING:
    from torch import nn

    from sentiment_lora.model import SentimentClassifier


@register
class BitFit(Method):
    name = "bitfit"
    title = "BitFit"
    trains = "the encoder's bias terms and the head; the encoder here holds the trained biases"
    saves = SAVES_ENCODER_TENSORS
    group_labels = {"encoder": "encoder biases"}
    export_note = ", with the trained biases"
    marker = "^"

    def attach(self, classifier: SentimentClassifier, cfg, total_steps: int | None = None) -> nn.Module:
        from sentiment_lora.methods.inplace import is_bias, train_only, used_encoder_parameters

        biases = {name for name in used_encoder_parameters(classifier) if is_bias(name)}
        if not biases:
            raise UserError(
                f"config method.name: {self.name} trains the encoder's bias terms, and this {classifier.model_type} "
                "encoder has none (its config turns them off); choose another method"
            )
        return train_only(classifier, biases)
