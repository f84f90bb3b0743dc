"""Full fine-tuning: every encoder weight the classifier's forward uses (not the unused pooler) plus the head, at its
own, lower learning rate (hparams_search=full_lr chooses it on validation from 2e-5, 5e-5, 1e-4)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sentiment_lora.methods.base import SAVES_ENCODER, Method
from sentiment_lora.methods.registry import register

if TYPE_CHECKING:
    from torch import nn

    from sentiment_lora.model import SentimentClassifier


@register
class Full(Method):
    name = "full"
    title = "full fine-tuning"
    trains = "every encoder weight and the head; the encoder here is the whole fine-tuned encoder"
    saves = SAVES_ENCODER
    default_lr = 5e-5
    default_weight_decay = 0.01
    export_note = ", fine-tuned"
    marker = "P"
    is_ceiling = True
    encoder_weight_gradients = True

    def attach(self, classifier: SentimentClassifier, cfg, total_steps: int | None = None) -> nn.Module:
        from sentiment_lora.methods.inplace import train_only, used_encoder_parameters

        return train_only(classifier, used_encoder_parameters(classifier))
