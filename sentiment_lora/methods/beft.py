"""BEFT (Huang et al., 2025, "BEFT: Bias-Efficient Fine-Tuning of Language Models") through PEFT's BeftConfig: a
trained vector added to the output of each adapted Linear, folded into its bias when merged: out trained per
Linear. The paper trains the value projection's bias alone, PEFT's default target for BERT-like encoders (v). No
size knob, so no method.budget. A Linear without a bias (ModernBERT's and NomicBERT's by default, DeBERTa v1's fused
in_proj) is refused: PEFT would train its vector but cannot merge it, so the run could not be exported."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from sentiment_lora.errors import UserError
from sentiment_lora.methods.adapters import ADAPTER_TARGETS, adapted_linears, check_listed_targets
from sentiment_lora.methods.base import MethodConfig, PeftMethod
from sentiment_lora.methods.registry import register
from sentiment_lora.schema import described

if TYPE_CHECKING:
    import peft

    from sentiment_lora.model import SentimentClassifier


@dataclass
class BeftConfig(MethodConfig):
    targets: list[str] = described(
        "Abstract modules whose bias gets a trained vector, from {q, k, v, qkv, output, ffn}, mapped through the "
        "family table (or model.targets_map) as lora.targets is; every one must have a bias. BEFT's and PEFT's "
        "default: v, the value projection. The head trains whole.",
        factory=lambda: ["v"],
        choices=ADAPTER_TARGETS,
    )


@register
class Beft(PeftMethod):
    name = "beft"
    title = "BEFT"
    trains = "a vector added to the value projection's bias (PEFT BeftConfig) merged into that bias, and the head"
    schema = BeftConfig
    # Bias terms as BitFit's: the optimizer's lr, as BitFit here (PEFT's MetaMathQA comparison runs BEFT at its
    # common 1e-4, within method_comparison's 0.3-3x)
    default_lr = None
    groups = ("beft",)
    prefixes: ClassVar[dict[str, str]] = {"beft_bias": "beft"}
    marker = "v"

    def validate(self, cfg) -> None:
        check_listed_targets(cfg)

    def peft_config(self, classifier: SentimentClassifier, cfg, total_steps: int | None) -> peft.PeftConfig:
        import peft

        pattern, adapted = adapted_linears(classifier, cfg)
        missing = [name for name, layer in adapted.items() if layer.bias is None]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise UserError(
                f"config method.targets: BEFT trains a vector merged into each adapted Linear's bias, and this "
                f"{classifier.model_type} encoder's {missing[0]}{more} has none (its config turns them off); choose "
                "targets with a bias or another method"
            )
        return peft.BeftConfig(target_modules=pattern)
