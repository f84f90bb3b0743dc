"""IA3 (Liu et al., 2022) through PEFT's IA3Config: a learned vector scaling the output of k and v and the input of
the FFN's down projection in every layer (feedforward_modules), plus the head; the modules come from the family
table (encoders.ia3_modules). model.targets_map (LoRA's hand map) is not read."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from sentiment_lora import encoders
from sentiment_lora.errors import UserError
from sentiment_lora.methods.base import PeftMethod
from sentiment_lora.methods.registry import register

if TYPE_CHECKING:
    import peft

    from sentiment_lora.model import SentimentClassifier


@register
class IA3(PeftMethod):
    name = "ia3"
    title = "IA3"
    trains = (
        "IA3 scaling vectors on k, v and the FFN's down projection (PEFT IA3Config), merged into the encoder's "
        "weights (PEFT merge_and_unload), and the head"
    )
    groups = ("ia3",)
    prefixes: ClassVar[dict[str, str]] = {"ia3_l": "ia3"}
    marker = "D"

    def peft_config(self, classifier: SentimentClassifier, cfg, total_steps: int | None) -> peft.PeftConfig:
        if classifier.family is None:  # model.targets_map (LoRA's hand map) does not say which Linear is k, v or down
            raise UserError(
                f"config method.name: {self.name} takes its modules from the family table, which lacks model_type "
                f"'{classifier.model_type}' (supported: {encoders.supported()}); use the default method with "
                "model.targets_map"
            )
        import peft

        targets, feedforward = encoders.ia3_modules(classifier.family)

        def pattern(patterns: list[str]) -> str:
            return "|".join(f"(?:encoder\\.(?:{item}))" for item in patterns)

        return peft.IA3Config(target_modules=pattern(targets), feedforward_modules=pattern(feedforward))
