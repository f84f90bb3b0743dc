"""Prompt tuning (Lester et al., 2021) through PEFT's PromptTuningConfig: n trained virtual-token embeddings put
before every review's tokens, the encoder frozen, the head trained: n * (embedding width) trained.

PEFT wraps the encoder (not the classifier: PEFT's prompt models feed `inputs_embeds` to a transformers model), as
PeftModelForFeatureExtraction, which also extends the attention mask over the virtual tokens. The classifier pools
over the review's own tokens only (SentimentClassifier.features drops the virtual tokens' outputs, which the
real ones attended to), so mean pooling keeps its mask and cls pooling still reads [CLS]. The virtual tokens take
positions: trainer.max_length + n must fit the encoder's. They change the sequence every layer sees, so no frozen
prefix can be cached (trainer.frozen_prefix=live), and they are inputs, not weights: nothing merges into the
encoder, so export refuses every format (sentiment_lora.predict scores with them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sentiment_lora import encoders
from sentiment_lora.errors import UserError
from sentiment_lora.methods.base import ADAPTER_DIR, SAVES_ADAPTER, BudgetConfig, Method
from sentiment_lora.methods.registry import register
from sentiment_lora.schema import AT_LEAST_ONE, described

if TYPE_CHECKING:
    from torch import nn

    from sentiment_lora.model import SentimentClassifier


@dataclass
class PromptTuningConfig(BudgetConfig):
    virtual_tokens: int = described(
        "Virtual tokens put before each review (PEFT's num_virtual_tokens); method.budget chooses it.",
        20,
        within=AT_LEAST_ONE,
    )


def embedding_width(classifier: SentimentClassifier) -> int:
    # ALBERT and ELECTRA-small embed below the hidden width (and project up): prompts live in the embedding space.
    return classifier.encoder.get_input_embeddings().embedding_dim


@register
class PromptTuning(Method):
    name = "prompt_tuning"
    title = "prompt tuning"
    trains = "virtual-token embeddings put before each review (PEFT PromptTuningConfig), and the head"
    schema = PromptTuningConfig
    default_lr = 1e-2  # prompt embeddings train at far larger rates than weights (the paper: 0.3 with Adafactor)
    groups = ("prompt",)
    saves = SAVES_ADAPTER
    # Read after "which" by export and after "cannot be merged into the encoder:" by merged().
    merge_refusal = (
        "prepends trained virtual tokens (inputs, not weights) that no plain encoder takes; score with "
        "sentiment_lora.predict on the run directory"
    )
    cache_refusal = "prompt tuning's virtual tokens change the sequence every layer sees, so nothing below is frozen"
    budget_key = "method.budget"
    marker = ">"

    def virtual_tokens(self, classifier: SentimentClassifier, cfg) -> int:
        budget = cfg.method.get("budget")
        if budget is None:
            return cfg.method.virtual_tokens
        width, head = embedding_width(classifier), sum(p.numel() for p in classifier.head.parameters())
        tokens, rest = divmod(max(budget - head, 0), width)
        tokens += 2 * rest > width  # nearest; ties: the smaller count
        if tokens < 1:
            raise UserError(
                f"config method.budget: {budget:,} is too small for {self.title}: one virtual token "
                f"trains {width + head:,}"
            )
        return tokens

    def attach(self, classifier: SentimentClassifier, cfg, total_steps: int | None = None) -> nn.Module:
        import peft

        tokens = self.virtual_tokens(classifier, cfg)
        config = classifier.encoder.config
        positions = encoders.usable_positions(classifier.family, config)
        if positions is not None and cfg.trainer.max_length + tokens > positions:
            raise UserError(
                f"config method.virtual_tokens: {tokens} virtual tokens and trainer.max_length "
                f"{cfg.trainer.max_length} exceed the {positions} positions of model '{cfg.model.name}'"
            )
        prompt = peft.PromptTuningConfig(
            task_type=peft.TaskType.FEATURE_EXTRACTION,
            num_virtual_tokens=tokens,
            token_dim=embedding_width(classifier),
            num_transformer_submodules=1,
            num_attention_heads=config.num_attention_heads,
            num_layers=config.num_hidden_layers,
        )
        classifier.encoder = peft.get_peft_model(classifier.encoder, prompt)
        for parameter in classifier.head.parameters():
            parameter.requires_grad_(True)
        return classifier

    def group_of(self, name: str) -> str | None:
        return "prompt" if "prompt_encoder" in name else None

    def save(self, model: nn.Module, folder: Path) -> None:
        from sentiment_lora.model import classifier_of

        classifier_of(model).encoder.save_pretrained(str(folder / ADAPTER_DIR), safe_serialization=True)

    def reload(self, classifier: SentimentClassifier, run_dir: Path) -> nn.Module:
        import peft

        classifier.encoder = peft.PeftModel.from_pretrained(classifier.encoder, str(Path(run_dir) / ADAPTER_DIR))
        return classifier

    def run_facts(self, model: nn.Module, cfg) -> dict[str, Any]:
        from sentiment_lora.model import classifier_of

        return {"virtual_tokens_used": classifier_of(model).encoder.peft_config["default"].num_virtual_tokens}

    def counts_line(self, cfg, params: dict[str, Any], facts: dict | None) -> str:
        tokens = (facts or {}).get("virtual_tokens_used")
        budget = cfg.method.get("budget")
        chosen = f" virtual_tokens={tokens}" + ("" if budget is None else f" (budget {budget:,})")
        return super().counts_line(cfg, params, facts).replace(f"{self.name}:", f"{self.name}{chosen}:", 1)

    def table_columns(self, section: dict) -> dict[str, Any]:
        tokens = section.get("virtual_tokens_used", section.get("virtual_tokens"))
        return {"variant": f"{tokens} virtual tokens", "rank": None, "alpha": None, "targets": None}

    def point_label(self, row) -> str:
        return f"{self.title} {row.get('variant') or ''}".strip()
