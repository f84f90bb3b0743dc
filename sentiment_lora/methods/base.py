"""The interface of a fine-tuning method: everything the harness asks about one (docs/adding-a-method.md).

A method is a subclass of `Method` with its class attributes set, registered with `@register`
(sentiment_lora/methods/__init__.py), plus conf/method/<name>.yaml. The harness never names a method: run, loop,
records, predict, export, summarize, curve, ranking, prefix and population call these hooks on
`methods.of(cfg)` (or `methods.get(name)`). Every hook has a default that fits "encoder frozen, some tensors
trained in place"; a method overrides what differs. `PeftMethod` is the base for methods PEFT wraps.

What a method declares, and who asks:

- name, title, trains: its `method=<name>`; the name in cards, tables and plots; the phrase "trained ..." of the
  model card.
- schema: its config dataclass, a subclass of `MethodConfig` (name, lr, weight_decay) with the method's own keys
  (described() gives each its help text and range), stored in Hydra's ConfigStore as method/base_<name>: its
  YAML starts `defaults: [base_<name>, _self_]`, so Hydra refuses a misspelt `method.<key>` in one line and
  converts types. A size knob and `budget` (method.budget=N) go there too (`BudgetConfig`).
  `config_section`: a top-level group the method reads besides method.* (LoRA keeps `lora.*`).
- default_lr, default_weight_decay: stored as the schema's method.lr/method.weight_decay (None: the optimizer's).
- attach(classifier, cfg, total_steps): the model to train; what trains is requires_grad, the head trains.
- groups, group_of(name): exact trainable counts by group (params.by_group): each trainable parameter name is
  classified by the method ("lora_A" -> "lora"...); "head" and "encoder" are always groups.
- saves + save(model, folder) / reload(classifier, run_dir) / files(): which tensors a run keeps and how they
  are read back (a PEFT adapter folder, the trained encoder tensors, the whole encoder, or the head alone).
- merged(model) / merge_refusal / export_note: how export folds it into plain weights, or the one line why not.
- population_refusal(cfg): None if a population of trials may stack it, else the reason.
- caches_whole_encoder, cache_refusal, frozen_depth(classifier): the frozen-prefix rule (a probe caches the whole
  encoder; a method whose virtual tokens change the sequence cannot use the cache at all).
- on_step(model, step, total_steps): an optional per-optimizer-step hook (AdaLoRA's update_and_allocate), called
  before the gradients are cleared; state_tensors / restore_state: what such a hook keeps besides the trainable
  parameters, carried by the checkpoint so a resumed run goes on as an uninterrupted one.
- budget(cfg), budget_key: the parameter budget asked for (None: the method's own size knob); `nearest_size`
  finds the knob whose exact count is nearest to it.
- config_record(cfg), run_facts(model, cfg), record_section: what metrics.json records of the method (its keys;
  facts known once the model is built, e.g. the rank a budget chose); table_columns(section): how summarize fills
  a row's variant/rank/alpha/targets; point_label and marker: its points on the plots; counts_line: the dry
  run's line; card_lines: the model card's lines; is_ceiling: the learning curve's gaps are to it.
- untrained_layers(cfg, n_layers), encoder_weight_gradients: what the model choice's FLOP estimate needs before
  any model is built (the leading layers with nothing to train; whether the backward computes every encoder
  weight's gradient, as full fine-tuning's does).
- validate(cfg): checks of its keys that need no model; optimizer(model, cfg, optimizer_cfg): its optimizer.
- unread_keys(cfg): config keys this method does not read, so runs differing only there are one configuration.

Keep a method module light: summarize, curve and ranking read the registry and must start without torch, so import
peft, torch and sentiment_lora.model inside the hooks that use them (tests/test_method_registry.py checks).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from omegaconf import OmegaConf

from sentiment_lora.errors import UserError
from sentiment_lora.schema import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, described

if TYPE_CHECKING:  # the registry is read by summarize and curve, which must start without torch
    import peft
    import torch
    from torch import nn

    from sentiment_lora.model import SentimentClassifier

# What a method keeps of its training in a run directory, beside head.safetensors (and encoder.safetensors, the
# random init of a random-init model, which every method keeps).
SAVES_ADAPTER = "adapter"  # a PEFT adapter folder, adapter/ (save_pretrained / PeftModel.from_pretrained)
SAVES_ENCODER_TENSORS = "encoder_tensors"  # the encoder tensors it trained, by name: encoder_trained.safetensors
SAVES_ENCODER = "encoder"  # the whole trained encoder: encoder.safetensors
SAVES_HEAD = "head"  # nothing but the head

ADAPTER_DIR = "adapter"
ADAPTER_FILES = (f"{ADAPTER_DIR}/adapter_config.json", f"{ADAPTER_DIR}/adapter_model.safetensors")
HEAD_FILE = "head.safetensors"
ENCODER_FILE = "encoder.safetensors"  # the whole encoder: random init (its initial state) or trained (full)
ENCODER_TRAINED_FILE = "encoder_trained.safetensors"  # the encoder tensors a method trained in place, by name


@dataclass
class MethodConfig:
    """conf/method/<name>.yaml's schema; a method with keys of its own subclasses it (`schema`)."""

    name: str = described(
        "What trains beside the head (conf/method/, one module each in sentiment_lora/methods/; "
        "docs/configuration.md#methods lists them). Another method's keys are not read.",
        "lora",
    )
    lr: float | None = described(
        "This method's peak learning rate, in place of optimizer.lr; null: optimizer.lr. Its default is the "
        "method's own (Method.default_lr; method=full: 5e-5).",
        None,
        within=POSITIVE,
    )
    weight_decay: float | None = described(
        "This method's weight decay, in place of optimizer.weight_decay; null: optimizer.weight_decay.",
        None,
        within=NON_NEGATIVE,
    )
    lr_scale: float = described(
        "Multiplies this method's learning rate (method.lr, else optimizer.lr): a grid of it is a grid around each "
        "method's own default (hparams_search=method_comparison sweeps 0.3, 1, 3).",
        1.0,
        within=POSITIVE,
    )


def method_lr(cfg) -> float:
    """The peak learning rate a run trains at: method.lr (else optimizer.lr) times method.lr_scale."""
    method = cfg.get("method") or {}  # a config written before methods existed has no method group
    lr = cfg.optimizer.lr if method.get("lr") is None else method.get("lr")
    return lr * method.get("lr_scale", 1.0)


@dataclass
class BudgetConfig(MethodConfig):
    """The schema of a method with a size knob that `method.budget=N` can choose."""

    budget: int | None = described(
        "Target number of trainable parameters (the method's groups + head): the run sets the method's size knob "
        "to the value whose exact count is nearest (ties: the smaller) and records it; null: the knob as given.",
        None,
        within=AT_LEAST_ONE,
    )


BASE_KEYS = tuple(item.name for item in fields(MethodConfig))


def nearest_size(
    count_at: Callable[[int], int],
    budget: int,
    low: int,
    high: int,
    key: str,
    refusal: Callable[[str, int, int], str] | None = None,
) -> int:
    """The knob value in [low, high] whose count is nearest `budget` (ties: the smaller value), for a count that
    grows with the knob; a budget outside the range's counts is one error line naming `key` (or refusal(too,
    value, count)'s line, too being "small" or "large", where a method words it itself).

    Bisection on the exact count, as each candidate is costly to count (a method may build adapters to count).
    """
    count_at = functools.cache(count_at)
    smallest, largest = count_at(low), count_at(high)
    if budget < smallest - (count_at(low + 1) - smallest if high > low else 0) / 2:
        raise UserError(
            refusal("small", low, smallest)
            if refusal
            else f"config {key}: {budget:,} is too small: the smallest size, {low}, trains {smallest:,}"
        )
    if budget > largest + (largest - count_at(high - 1) if high > low else 0) / 2:
        raise UserError(
            refusal("large", high, largest)
            if refusal
            else f"config {key}: {budget:,} is too large: the largest size, {high}, trains {largest:,}"
        )
    while high - low > 1:
        middle = (low + high) // 2
        if count_at(middle) <= budget:
            low = middle
        else:
            high = middle
    below, above = count_at(low), count_at(high)
    return high if abs(above - budget) < abs(budget - below) else low


class Method:
    """One fine-tuning method. The defaults fit a method that trains encoder tensors in place."""

    name: ClassVar[str]
    title: ClassVar[str]  # in cards, tables and plots: "LoRA", "BitFit"
    trains: ClassVar[str]  # the card's "trained ...": "the encoder's bias terms and the head"
    schema: ClassVar[type[MethodConfig]] = MethodConfig
    default_lr: ClassVar[float | None] = None  # None: optimizer.lr (5e-4)
    default_weight_decay: ClassVar[float | None] = None  # None: optimizer.weight_decay
    config_section: ClassVar[str | None] = None  # a top-level config group it reads besides method.* (LoRA: lora)
    groups: ClassVar[tuple[str, ...]] = ()  # its params.by_group keys, beside "head" and "encoder"
    group_labels: ClassVar[dict[str, str]] = {}  # how the dry run names a group, where not by its key
    saves: ClassVar[str] = SAVES_ENCODER_TENSORS
    merge_refusal: ClassVar[str | None] = None  # why export cannot fold it into plain weights (one line)
    export_note: ClassVar[str] = ""  # the exported model's description suffix: ", with the trained biases"
    caches_whole_encoder: ClassVar[bool] = False  # only the head trains: the pooled vectors are computed once
    cache_refusal: ClassVar[str | None] = None  # why trainer.frozen_prefix=eval/cache cannot run under it
    budget_key: ClassVar[str | None] = None  # the key method.budget-like requests are read from ("method.budget")
    marker: ClassVar[str] = "X"  # its matplotlib marker on the accuracy-against-parameters plots
    encoder_weight_gradients: ClassVar[bool] = False  # its backward computes every encoder weight's gradient
    is_ceiling: ClassVar[bool] = False  # the learning curve measures every series' gap to it (vs_<name>_*)

    def config_node(self) -> MethodConfig:
        """The method section with this method's defaults: Hydra's method/base_<name> node."""
        return self.schema(name=self.name, lr=self.default_lr, weight_decay=self.default_weight_decay)

    # ---- building ----
    def attach(self, classifier: SentimentClassifier, cfg, total_steps: int | None = None) -> nn.Module:
        """The model to train: what trains is requires_grad, the rest frozen; the head trains. total_steps: the
        optimizer steps the run will take (None in a dry run, which has no data)."""
        raise NotImplementedError

    def validate(self, cfg) -> None:
        """Checks of the method's own keys that need no model (UserError, one line naming the key)."""

    def untrained_layers(self, cfg, n_layers: int) -> int:
        """How many leading encoder layers hold nothing to train, from the config alone (model=choose estimates a
        run's cost before building a model): all of them when only the head trains, else none."""
        return n_layers if self.caches_whole_encoder else 0

    def frozen_depth(self, classifier: SentimentClassifier) -> int | None:
        """How many leading encoder layers hold nothing trainable (None: the embeddings train)."""
        from sentiment_lora.model import frozen_depth

        return frozen_depth(classifier)

    def optimizer(self, model: nn.Module, cfg, optimizer_cfg) -> torch.optim.Optimizer:
        """The optimizer over the trainable parameters; optimizer_cfg: cfg.optimizer with method.lr/weight_decay."""
        from sentiment_lora.runtime import make_optimizer

        return make_optimizer(model, optimizer_cfg)

    def on_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        """Called after each optimizer step (global step, from 1); AdaLoRA's rank allocation goes here."""

    def state_tensors(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """State the method keeps outside the trainable parameters that a resumed run needs (the checkpoint
        carries it): AdaLoRA's importance averages. Default: none."""
        return {}

    def restore_state(self, model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
        """Put back what `state_tensors` gave (from a checkpoint)."""

    @property
    def has_step_hook(self) -> bool:
        return type(self).on_step is not Method.on_step

    def budget(self, cfg) -> int | None:
        return None if self.budget_key is None else OmegaConf.select(cfg, self.budget_key, default=None)

    # ---- counting and recording ----
    def group_of(self, name: str) -> str | None:
        """The params.by_group group of a trainable parameter; None: "head" or "encoder" by where it lives."""
        return None

    def config_record(self, cfg) -> dict[str, Any] | None:
        """The method's keys as metrics.json records them under `record_section` (None: nothing to record)."""
        keys = OmegaConf.to_container(cfg.method, resolve=True).items()
        return {key: value for key, value in keys if key not in BASE_KEYS} or None

    def run_facts(self, model: nn.Module, cfg) -> dict[str, Any] | None:
        """What only the built model knows, added to record_section (LoRA: the rank its budget chose)."""
        return None

    @property
    def record_section(self) -> str:
        return self.config_section or self.name

    def table_columns(self, section: dict) -> dict[str, Any]:
        """summarize's variant, rank, alpha and targets of a run from its record_section (None where n/a)."""
        return {"variant": None, "rank": None, "alpha": None, "targets": section.get("targets")}

    def counts_line(self, cfg, params: dict[str, Any], facts: dict | None) -> str:
        """What a dry run prints: the exact counts by group, head last (facts: run_facts, as recorded)."""
        groups = params["by_group"]
        shown = [*(group for group in groups if group != "head"), "head"]
        parts = [f"{self.group_labels.get(group, group)} {groups[group]:,}" for group in shown if groups[group]]
        return (
            f"{cfg.model.name} {self.name}: trainable {params['trainable']:,} of {params['total']:,} "
            f"({params['trainable_pct']:.3f}%) = {' + '.join(parts or ['head 0'])}"
        )

    def point_label(self, row) -> str:
        """A point's label on summarize's plots, from its table row (targets, rank, variant columns)."""
        targets = row.get("targets")
        return self.name.replace("_", " ") + (f" {targets}" if isinstance(targets, str) and targets else "")

    def card_lines(self, cfg, run_dir: Path, metrics: dict) -> list[str]:
        """The model card's lines on the method (run_dir: the run, for its adapter_config.json if any)."""
        lines = [f"- method `{self.name}` (sentiment-lora `method={self.name}`): trained {self.trains}"]
        lr = (metrics.get("optimizer") or {}).get("lr")
        return lines if lr is None else [*lines, f"- learning rate {lr:g}"]

    def unread_keys(self, cfg) -> tuple[str, ...]:
        """Config keys that cannot change this method's run: the digest leaves them out."""
        from sentiment_lora.methods.registry import all_methods  # the registry imports this module

        others = {method.config_section for method in all_methods() if method is not self}
        unread = tuple(sorted(section for section in others if section and section != self.config_section))
        return (*unread, "trainer.frozen_prefix") if self.caches_whole_encoder else unread

    # ---- saving, reloading, exporting ----
    def files(self) -> tuple[str, ...]:
        """What reload reads from a run directory besides metrics.json (and encoder.safetensors of a random init)."""
        own = {
            SAVES_ADAPTER: ADAPTER_FILES,
            SAVES_ENCODER_TENSORS: (ENCODER_TRAINED_FILE,),
            SAVES_ENCODER: (ENCODER_FILE,),
            SAVES_HEAD: (),
        }[self.saves]
        return (*own, HEAD_FILE)

    @property
    def has_adapter(self) -> bool:
        return self.saves == SAVES_ADAPTER

    def save(self, model: nn.Module, folder: Path) -> None:
        """Write what `saves` names into `folder` (the staging folder; the head is saved by the caller)."""
        from safetensors.torch import save_file

        from sentiment_lora.model import classifier_of, plain_state

        if self.saves == SAVES_ADAPTER:
            model.save_pretrained(str(folder / ADAPTER_DIR), safe_serialization=True)
        elif self.saves == SAVES_ENCODER:
            save_file(plain_state(classifier_of(model).encoder), str(folder / ENCODER_FILE))
        elif self.saves == SAVES_ENCODER_TENSORS:
            save_file(trained_encoder_tensors(model), str(folder / ENCODER_TRAINED_FILE))

    def reload(self, classifier: SentimentClassifier, run_dir: Path) -> nn.Module:
        """The trained model from a run directory, onto `classifier` (its encoder's base weights and head loaded)."""
        import peft
        from safetensors.torch import load_file

        if self.saves == SAVES_ADAPTER:
            return peft.PeftModel.from_pretrained(classifier, str(run_dir / ADAPTER_DIR))
        if self.saves == SAVES_ENCODER_TENSORS:
            trained = load_file(str(run_dir / ENCODER_TRAINED_FILE))
            unexpected = classifier.encoder.load_state_dict(trained, strict=False).unexpected_keys
            if unexpected:
                raise UserError(f"{run_dir / ENCODER_TRAINED_FILE}: holds {unexpected[0]}, which this encoder lacks")
        return classifier  # SAVES_ENCODER: encoder.safetensors was loaded as the encoder's weights

    def merged(self, model: nn.Module) -> nn.Module:
        """The model with the method folded into plain encoder weights (export); the model itself if in place."""
        if self.merge_refusal:
            raise UserError(f"export: method={self.name} cannot be merged into the encoder: {self.merge_refusal}")
        import peft

        return model.merge_and_unload() if isinstance(model, peft.PeftModel) else model

    # ---- populations ----
    def population_refusal(self, cfg) -> str | None:
        """None if trials of this method may share one encoder pass in a population, else why not."""
        return f"method={self.name}: a population trains LoRA members only"


class PeftMethod(Method):
    """A method PEFT wraps: `peft_config` builds its PeftConfig; the adapter is saved and reloaded by PEFT, merged
    by merge_and_unload; parameters are grouped by the prefixes in `prefixes` (PEFT's names, e.g. "hada_")."""

    saves: ClassVar[str] = SAVES_ADAPTER
    prefixes: ClassVar[dict[str, str]] = {}  # parameter-name fragment -> group, first match wins

    def peft_config(self, classifier: SentimentClassifier, cfg, total_steps: int | None) -> peft.PeftConfig:
        raise NotImplementedError

    def attach(self, classifier: SentimentClassifier, cfg, total_steps: int | None = None) -> nn.Module:
        import peft

        from sentiment_lora.model import classifier_of

        wrapped = peft.get_peft_model(classifier, self.peft_config(classifier, cfg, total_steps))
        for parameter in classifier_of(wrapped).head.parameters():
            parameter.requires_grad_(True)
        return wrapped

    def group_of(self, name: str) -> str | None:
        return next((group for fragment, group in self.prefixes.items() if fragment in name), None)

    @property
    def export_note(self) -> str:  # type: ignore[override]
        return f", {self.title} merged"


def trained_encoder_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The encoder parameters a method trained in place (bitfit's biases), by name."""
    from sentiment_lora.model import classifier_of

    encoder = classifier_of(model).encoder
    return {name: p.detach().contiguous().cpu().clone() for name, p in encoder.named_parameters() if p.requires_grad}
