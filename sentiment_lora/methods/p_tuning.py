"""P-tuning (Liu et al., 2021, "GPT Understands, Too") through PEFT's PromptEncoderConfig: virtual tokens as prompt
tuning's, but produced by a trained prompt encoder, a 3-layer MLP of width h over n trained embeddings:
n * d + (d * h + h) + (h * h + h) + (h * d + d) trained, d the embedding width, h = method.encoder_width (PEFT's
default: d). Everything else (the encoder wrapped, the review's own tokens pooled, no cache, no merged export) is
prompt tuning's (methods/prompt_tuning.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sentiment_lora.methods.prompt_tuning import PromptTuning, PromptTuningConfig, embedding_width
from sentiment_lora.methods.registry import register
from sentiment_lora.schema import AT_LEAST_ONE, described

if TYPE_CHECKING:
    from sentiment_lora.model import SentimentClassifier


@dataclass
class PTuningConfig(PromptTuningConfig):
    encoder_width: int | None = described("Hidden width of the MLP prompt encoder (PEFT's encoder_hidden_size); "
                                          "null: the embedding width.", None, within=AT_LEAST_ONE)  # fmt: skip


@register
class PTuning(PromptTuning):
    name = "p_tuning"
    title = "p-tuning"
    trains = "virtual-token embeddings and their MLP prompt encoder (PEFT PromptEncoderConfig), and the head"
    schema = PTuningConfig
    default_lr = 1e-2  # as prompt tuning's: the paper trains its prompt encoder at 1e-5 to 1e-2 by task
    marker = "^"

    def prompt_config(self, cfg, shape: dict):
        import peft

        return peft.PromptEncoderConfig(**shape, encoder_hidden_size=cfg.method.encoder_width or shape["token_dim"])

    def fixed_count(self, classifier: SentimentClassifier, cfg) -> int:
        width = embedding_width(classifier)
        hidden = cfg.method.encoder_width or width
        return (width * hidden + hidden) + (hidden * hidden + hidden) + (hidden * width + width)
