"""The linear probe: the encoder frozen whole, the head (Linear(hidden, 1)) trained on its pooled vectors, which are
computed once per review without dropout (the frozen-prefix cache, whatever trainer.frozen_prefix says)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sentiment_lora.methods.base import SAVES_HEAD, Method
from sentiment_lora.methods.registry import register

if TYPE_CHECKING:
    from torch import nn

    from sentiment_lora.model import SentimentClassifier


@register
class LinearProbe(Method):
    name = "linear_probe"
    title = "linear probe"
    trains = "the head alone, on the frozen encoder's pooled vectors; the encoder is the base model's"
    saves = SAVES_HEAD
    caches_whole_encoder = True
    marker = "s"

    def attach(self, classifier: SentimentClassifier, cfg, total_steps: int | None = None) -> nn.Module:
        from sentiment_lora.methods.inplace import train_only

        return train_only(classifier, set())
