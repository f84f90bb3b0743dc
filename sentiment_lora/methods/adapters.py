"""What PEFT's weight-adapter methods share: target modules from the abstract targets, one size knob that
`method.budget=N` chooses by exact count, and PEFT's own refusals turned into one error line.

A method here (LoHa, LoKr, AdaLoRA, VeRA, OFT, BOFT, HRA, FourierFT, MiSS, C3A, RoAd, VB-LoRA, RandLoRA, SHiRA,
DeLoRA, HiRA, GraLoRA, WaveFT, TinyLoRA) declares its schema (an `AdapterConfig` with its knob), the knob's key, the
knob values that fit the adapted layers, and how its PEFT config is built; the rest is here. Counts for a knob value
are taken from PEFT itself: each distinct adapted Linear shape is wrapped alone and its trainable parameters
counted, so a count can never drift from what PEFT builds (tests/test_peft_methods.py checks them against counts
typed from the papers' formulas).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from sentiment_lora.errors import UserError
from sentiment_lora.methods.base import BudgetConfig, PeftMethod, nearest_size
from sentiment_lora.schema import described

if TYPE_CHECKING:  # the registry is read without torch (methods/base.py)
    import peft
    from torch import nn

    from sentiment_lora.model import SentimentClassifier

# The abstract targets a weight adapter may take; the head trains whole beside every method here.
ADAPTER_TARGETS = ("q", "k", "v", "qkv", "output", "ffn")


@dataclass
class AdapterConfig(BudgetConfig):
    """The keys every weight-adapter method shares; each method adds its own size knob."""

    targets: list[str] = described(
        "Abstract modules that get the adapter, from {q, k, v, qkv, output, ffn}, mapped through the family table "
        "(or model.targets_map) as lora.targets is; qkv is q, k and v together (the one fused Linear of ModernBERT "
        "and DeBERTa v1, where q, k or v alone is refused). PEFT's default for BERT-like encoders: q and v. The "
        "head trains whole.",
        factory=lambda: ["q", "v"],
        choices=ADAPTER_TARGETS,
    )


Shape = tuple[int, int, bool]  # (in_features, out_features, has a bias)


def shapes_of(adapted: dict[str, nn.Linear]) -> Counter[Shape]:
    return Counter((layer.in_features, layer.out_features, layer.bias is not None) for layer in adapted.values())


def _probe(shape: Shape) -> nn.Module:
    """One Linear of a given shape, as `layer` of a module: PEFT wraps it alone to count what it trains there."""
    from torch import nn

    return nn.ModuleDict({"layer": nn.Linear(shape[0], shape[1], bias=shape[2])})


def widths_of(adapted: dict[str, nn.Linear]) -> list[int]:
    """Every adapted Linear's input and output width (a knob that must divide them all is checked against these)."""
    return [width for layer in adapted.values() for width in (layer.in_features, layer.out_features)]


def smallest_width(adapted: dict[str, nn.Linear]) -> int:
    """The smallest input or output width of the adapted Linears (a rank must not exceed it)."""
    return min(widths_of(adapted))


def divisors(width: int) -> list[int]:
    return [value for value in range(1, width + 1) if width % value == 0]


def common_divisors(widths: Sequence[int]) -> list[int]:
    return [value for value in divisors(min(widths)) if all(width % value == 0 for width in widths)]


def check_listed_targets(cfg) -> None:
    """method.targets names at least one target, none twice (a method with no knob, BEFT, checks it too)."""
    targets = list(cfg.method.targets)
    if not targets:
        raise UserError(f"config method.targets: is empty; name at least one of {', '.join(ADAPTER_TARGETS)}")
    if len(set(targets)) != len(targets):
        raise UserError(f"config method.targets: lists a target twice: {targets}")


def adapted_linears(classifier: SentimentClassifier, cfg) -> tuple[str, dict[str, nn.Linear]]:
    """(PEFT's target_modules regex, the adapted Linears by name) from method.targets through the family table."""
    from sentiment_lora.methods.targets import check_targets, target_pattern, targets_and_map

    try:
        targets, mapped, only_layers = targets_and_map(classifier, cfg.method, cfg.model.targets_map)
        adapted = check_targets(classifier, mapped, targets, only_layers)
    except UserError as err:
        # The target helpers are LoRA's and name its key; the targets here are this method's.
        raise UserError(str(err).replace("lora.targets", "method.targets")) from None
    return target_pattern(mapped, targets, only_layers), adapted


def _peft_reason(err: Exception) -> str:
    lines = str(err).strip().splitlines() or [type(err).__name__]
    return lines[0].rstrip(".")


class AdapterMethod(PeftMethod):
    """A PEFT method that adapts the Linear layers of the abstract targets, sized by one knob (`knob`)."""

    schema: ClassVar[type[AdapterConfig]] = AdapterConfig
    knob: ClassVar[str]  # the method.<key> that sizes it, which method.budget chooses
    # Names of parameters every adapted layer shares (VB-LoRA's vector bank): counted once, not once per shape.
    shared: ClassVar[tuple[str, ...]] = ()
    budget_key = "method.budget"

    # ---- what each method supplies ----
    def build_config(
        self, method_cfg, target_modules: str, size, total_steps: int | None, adapted: dict[str, nn.Linear]
    ) -> peft.PeftConfig:
        """PEFT's config at knob value `size` (adapted: every Linear the run adapts, for width-bound settings)."""
        raise NotImplementedError

    def sizes(self, adapted: dict[str, nn.Linear]) -> list[int]:
        """The knob values that fit every adapted layer, ordered so the trainable count grows."""
        raise NotImplementedError

    def size_refusal(self, adapted: dict[str, nn.Linear], size: int) -> str | None:
        """Why a knob value cannot adapt these layers (None: it can); the default: it is not among `sizes`."""
        fitting = self.sizes(adapted)
        if size in fitting:
            return None
        widths = sorted(set(widths_of(adapted)))
        if isinstance(fitting, range):
            shown = f"{fitting.start} to {fitting.stop - 1}"
        else:
            shown = ", ".join(map(str, sorted(fitting)[:12])) + (", ..." if len(fitting) > 12 else "")
        widths_shown = ", ".join(map(str, widths))
        return f"{size} does not fit the adapted layers (widths {widths_shown}); values that fit: {shown}"

    def configured_size(self, method_cfg, adapted: dict[str, nn.Linear]) -> int:
        """The knob as configured (a method whose PEFT default does not fit every width may compute it here)."""
        return method_cfg[self.knob]

    # ---- shared ----
    def validate(self, cfg) -> None:
        check_listed_targets(cfg)

    def unread_keys(self, cfg) -> tuple[str, ...]:
        # The budget chooses the knob: a method.<knob> beside it changes nothing.
        chosen = (f"method.{self.knob}",) if cfg.method.get("budget") is not None else ()
        return (*super().unread_keys(cfg), *chosen)

    def adapted(self, classifier: SentimentClassifier, cfg) -> tuple[str, dict[str, nn.Linear]]:
        """(PEFT's target_modules regex, the adapted Linears by name) from method.targets through the family table."""
        return adapted_linears(classifier, cfg)

    def size_for(self, classifier: SentimentClassifier, cfg, adapted: dict[str, nn.Linear], total_steps) -> int:
        budget = cfg.method.get("budget")
        if budget is None:
            size = self.configured_size(cfg.method, adapted)
            refusal = self.size_refusal(adapted, size)
            if refusal:
                raise UserError(f"config method.{self.knob}: {self.title} on {classifier.model_type}: {refusal}")
            return size
        head = sum(p.numel() for p in classifier.head.parameters())
        return self.nearest(adapted, cfg.method, budget, head, total_steps)

    def count_at(self, adapted: dict[str, nn.Linear], method_cfg, size: int, total_steps) -> int:
        """Trainable adapter parameters at knob value `size`, counted on PEFT's own layers, one per shape."""
        import peft

        total = shared = 0
        for shape, times in shapes_of(adapted).items():
            config = self.build_config(method_cfg, "layer", size, total_steps, adapted)
            probe = peft.get_peft_model(_probe(shape), config)
            for name, parameter in probe.named_parameters():
                if not parameter.requires_grad:
                    continue
                if any(part in name for part in self.shared):
                    shared = parameter.numel()  # one tensor for all layers: each probe holds a copy
                else:
                    total += times * parameter.numel()
        return total + shared

    def nearest(
        self, adapted: dict[str, nn.Linear], method_cfg, budget: int, head: int, total_steps, sizes=None
    ) -> int:
        """The knob value whose count (adapters + head) is nearest `budget` (ties: the smaller count); counts grow
        along `sizes` (default: self.sizes; a method whose fitting values depend on another key passes its own),
        so it bisects, building only a few candidates (each distinct shape once per candidate). Knobs here are
        divisors or variants too, so the base's nearest_size bisects their indices."""
        sizes = self.sizes(adapted) if sizes is None else sizes

        def refusal(too: str, index: int, count: int) -> str:
            at = f"{self.knob}={sizes[index]} trains {count:,}"
            return f"config method.budget: {budget:,} is too {too} for {self.title}: {at}"

        index = nearest_size(
            lambda index: head + self.count_at(adapted, method_cfg, sizes[index], total_steps),
            budget, 0, len(sizes) - 1, "method.budget", refusal,
        )  # fmt: skip
        return sizes[index]

    def peft_config(self, classifier: SentimentClassifier, cfg, total_steps: int | None) -> peft.PeftConfig:
        pattern, adapted = self.adapted(classifier, cfg)
        size = self.size_for(classifier, cfg, adapted, total_steps)
        return self.build_config(cfg.method, pattern, size, total_steps, adapted)

    def attach(self, classifier: SentimentClassifier, cfg, total_steps: int | None = None) -> nn.Module:
        try:
            return super().attach(classifier, cfg, total_steps)
        except ValueError as err:  # PEFT's own check of a shape or setting: its reason, in one line
            raise UserError(
                f"config method: {self.title} cannot adapt this {classifier.model_type} encoder: {_peft_reason(err)}"
            ) from None

    def size_used(self, model: nn.Module) -> int:
        return getattr(model.peft_config["default"], self.peft_knob)

    @property
    def peft_knob(self) -> str:
        """The PeftConfig field the knob sets (where its name differs from the method's key)."""
        return self.knob

    def run_facts(self, model: nn.Module, cfg) -> dict[str, Any]:
        return {f"{self.knob}_used": self.size_used(model)}

    def counts_line(self, cfg, params: dict[str, Any], facts: dict | None) -> str:
        line = super().counts_line(cfg, params, facts)
        size = (facts or {}).get(f"{self.knob}_used")
        budget = cfg.method.get("budget")
        chosen = f" {self.knob}={size}" + ("" if budget is None else f" (budget {budget:,})")
        targets = f" targets={list(cfg.method.targets)}"
        return line.replace(f"{self.name}:", f"{self.name}{chosen}{targets}:", 1)

    def table_columns(self, section: dict) -> dict[str, Any]:
        size = section.get(f"{self.knob}_used", section.get(self.knob))
        return {"variant": self.title, "rank": size, "alpha": section.get("alpha"), "targets": section.get("targets")}

    def point_label(self, row) -> str:
        rank = row.get("rank")
        if isinstance(rank, float) and rank.is_integer():  # a pandas column of sizes holds floats
            rank = int(rank)
        shown = f" {self.knob}={rank}" if rank is not None and rank == rank else ""  # NaN: not recorded
        return f"{self.title}{shown}"
